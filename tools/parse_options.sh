# Declared, typed and described options for recipe scripts (sourced by tools/recipe_lib.sh).
#
#   opt NAME DEFAULT TYPE "DESCRIPTION"   declare --name-with-dashes and set $NAME=DEFAULT
#   opt_group "HEADING"                   start a group of options in --help
#   parse_options "$@"                    apply the command line (after every opt)
#
# Command line: --name value | --name=value | --config FILE | --help.  Every word must be a
# declared option or its value: a stray word, an unknown option, a missing value or a value of
# the wrong type stops the script with one line on stderr and exit status 2, before any stage.
# --config FILE reads "name=value" lines (# comments, optional quotes) where it stands, so
# later options override it.
#
# TYPE: str | int | uint | posint | float | bool | choice:a|b|c | ints | floats | words
#       int:LO-HI (a range) | ints:LO-HI (a list, each in range); lists are space- or
#       comma-separated words; a trailing ? (int?, posint?) also accepts the empty value.

declare -ga _po_names=()
declare -gA _po_type=() _po_desc=()
_po_prog=${0##*/}

opt() {
  # opt NAME DEFAULT TYPE DESCRIPTION
  # (locals carry a _po_ prefix: an option may be called "name" or "type")
  [[ $1 =~ ^[a-z][a-z0-9_]*$ && $1 != _po_* ]] || { echo "$_po_prog: opt: bad option name '$1'" >&2; exit 2; }
  [ -n "${_po_type[$1]+x}" ] || _po_names+=("$1")
  _po_type[$1]=$3
  _po_desc[$1]=$4
  printf -v "$1" '%s' "$2"
}

opt_group() {
  _po_names+=("@$1")
}

_po_error() {
  echo "$_po_prog: $*" >&2
  exit 2
}

_po_metavar() {
  case $1 in
    ints*) echo '"N ..."' ;;
    floats) echo '"X ..."' ;;
    int*|uint*|posint*) echo N ;;
    float*) echo X ;;
    bool) echo "true|false" ;;
    choice:*) echo "${1#choice:}" ;;
    words) echo '"WORD ..."' ;;
    *) echo VALUE ;;
  esac
}

_po_check() {
  # _po_check NAME VALUE: the normalised value on stdout, or an error naming the option.
  local name=$1 value=$2 type=${_po_type[$1]} flag="--${1//_/-}" w lo hi
  local int_re='^-?[0-9]+$' float_re='^[+-]?([0-9]+[.]?[0-9]*|[.][0-9]+)([eE][+-]?[0-9]+)?$'
  if [[ $type == *'?' ]]; then
    type=${type%'?'}
    [ -n "$value" ] || { echo ""; return 0; }
  fi
  case $type in
    str) ;;
    bool) [[ $value == true || $value == false ]] || _po_error "$flag: '$value' is not true or false" ;;
    int) [[ $value =~ $int_re ]] || _po_error "$flag: '$value' is not an integer" ;;
    uint) [[ $value =~ ^[0-9]+$ ]] || _po_error "$flag: '$value' is not a non-negative integer" ;;
    posint) [[ $value =~ ^[0-9]+$ && $value -ge 1 ]] || _po_error "$flag: '$value' is not a positive integer" ;;
    float) [[ $value =~ $float_re ]] || _po_error "$flag: '$value' is not a number" ;;
    choice:*)
      case "|${type#choice:}|" in *"|$value|"*) ;; *) _po_error "$flag: '$value' is not one of ${type#choice:}" ;; esac ;;
    int:*)
      lo=${type#int:}; hi=${lo#*-}; lo=${lo%-*}
      [[ $value =~ ^[0-9]+$ ]] || _po_error "$flag: '$value' is not an integer ($lo-$hi)"
      [ "$value" -ge "$lo" ] && [ "$value" -le "$hi" ] || _po_error "$flag: $value is out of range ($lo-$hi)" ;;
    ints|ints:*|floats|words)
      local -a words
      read -r -a words <<< "${value//,/ }"
      value=${words[*]}
      for w in "${words[@]}"; do
        case $type in
          ints) [[ $w =~ $int_re ]] || _po_error "$flag: '$w' is not an integer" ;;
          ints:*)
            lo=${type#ints:}; hi=${lo#*-}; lo=${lo%-*}
            [[ $w =~ ^[0-9]+$ ]] || _po_error "$flag: '$w' is not an integer ($lo-$hi)"
            [ "$w" -ge "$lo" ] && [ "$w" -le "$hi" ] || _po_error "$flag: $w is out of range ($lo-$hi)" ;;
          floats) [[ $w =~ $float_re ]] || _po_error "$flag: '$w' is not a number" ;;
        esac
      done ;;
    *) _po_error "option $flag has an unknown type '$type' (a bug in the recipe)" ;;
  esac
  printf '%s\n' "$value"
}

_po_set() {
  # _po_set NAME VALUE [WHERE]
  local _po_value
  if [ -z "${_po_type[$1]+x}" ]; then
    _po_error "${3:+$3: }unknown option --${1//_/-} (see --help)"
  fi
  _po_value=$(_po_check "$1" "$2") || exit 2
  printf -v "$1" '%s' "$_po_value"
}

_po_config() {
  # --config FILE: name=value lines
  local _po_file=$1 _po_line _po_name _po_val _po_n=0
  [ -f "$_po_file" ] || _po_error "--config: no such file '$_po_file'"
  while IFS= read -r _po_line || [ -n "$_po_line" ]; do
    _po_n=$((_po_n + 1))
    _po_line=${_po_line#"${_po_line%%[![:space:]]*}"}
    [[ -z $_po_line || $_po_line == \#* ]] && continue
    [[ $_po_line =~ ^(--)?([A-Za-z][A-Za-z0-9_-]*)=(.*)$ ]] || _po_error "$_po_file:$_po_n: expected name=value, got '$_po_line'"
    _po_name=${BASH_REMATCH[2]//-/_}
    _po_val=${BASH_REMATCH[3]}
    if [[ $_po_val =~ ^\"([^\"]*)\"[[:space:]]*(#.*)?$ || $_po_val =~ ^\'([^\']*)\'[[:space:]]*(#.*)?$ ]]; then
      _po_val=${BASH_REMATCH[1]}
    else
      _po_val=${_po_val%%[[:space:]]#*}
      _po_val=${_po_val%"${_po_val##*[![:space:]]}"}
    fi
    _po_set "$_po_name" "$_po_val" "$_po_file:$_po_n"
  done < "$_po_file"
}

print_options() {
  # The option table of --help: one line per option, description and current value.
  local _po_name _po_meta
  for _po_name in "${_po_names[@]}"; do
    if [[ $_po_name == @* ]]; then
      printf '\n%s\n' "${_po_name#@}"
      continue
    fi
    _po_meta=$(_po_metavar "${_po_type[$_po_name]}")
    printf '  --%-34s %s [%s]\n' "${_po_name//_/-} $_po_meta" "${_po_desc[$_po_name]}" "${!_po_name}"
  done
  printf '\n  --%-34s %s\n' "config FILE" "read options from FILE (name=value lines, # comments) where --config stands"
  printf '  --%-34s %s\n' "help" "print this message and exit"
}

parse_options() {
  local _po_arg _po_name
  while [ $# -gt 0 ]; do
    _po_arg=$1
    case $_po_arg in
      --help|-h)
        echo "${help_message:-Usage: $_po_prog [options]}"
        print_options
        exit 0 ;;
      --config) [ $# -ge 2 ] || _po_error "option --config needs a value"
                _po_config "$2"; shift 2 ;;
      --config=*) _po_config "${_po_arg#--config=}"; shift ;;
      --*=*) _po_name=${_po_arg%%=*}; _po_name=${_po_name#--}
             _po_set "${_po_name//-/_}" "${_po_arg#*=}"; shift ;;
      --?*) _po_name=${_po_arg#--}; _po_name=${_po_name//-/_}
            [ -n "${_po_type[$_po_name]+x}" ] || _po_error "unknown option $_po_arg (see --help)"
            [ $# -ge 2 ] || _po_error "option $_po_arg needs a value"
            _po_set "$_po_name" "$2"; shift 2 ;;
      *) _po_error "unexpected argument '$_po_arg': options are --name value (see --help)" ;;
    esac
  done
}
