# Kaldi-style option parsing, sourced by every recipe's run.sh AFTER it has set its defaults.
#
#   --name value | --name=value   sets the shell variable $name (dashes become underscores);
#                                 only variables the recipe already defines are accepted
#   --help | -h                   prints $help_message (if set) and the current defaults
#   --config FILE                 sources FILE (shell assignments) before later options
# Positional arguments that remain are left in "$@".
_po_usage() {
  echo "${help_message:-Usage: $0 [options]}"
  echo "Options (current values):"
  local v
  for v in $(compgen -v); do
    case " ${_po_vars} " in *" $v "*) printf '  --%-18s %s\n' "${v//_/-}" "${!v}";; esac
  done
}
# Variables that existed before the recipe defined its own cannot be options.
_po_vars=${recipe_options:-stage stop_stage nj}
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) _po_usage; exit 0 ;;
    --config) shift; [ -f "${1:-}" ] || { echo "$0: --config: no such file '${1:-}'" >&2; exit 1; }
              # shellcheck disable=SC1090
              source "$1"; shift ;;
    --*=*) _po_name=${1%%=*}; _po_name=${_po_name#--}; _po_name=${_po_name//-/_}; _po_val=${1#*=}; shift
           case " ${_po_vars} " in *" ${_po_name} "*) ;; *) echo "$0: unknown option --${_po_name//_/-} (try --help)" >&2; exit 1;; esac
           printf -v "$_po_name" '%s' "$_po_val" ;;
    --*) _po_name=${1#--}; _po_name=${_po_name//-/_}
         case " ${_po_vars} " in *" ${_po_name} "*) ;; *) echo "$0: unknown option $1 (try --help)" >&2; exit 1;; esac
         [ $# -ge 2 ] || { echo "$0: option $1 needs a value" >&2; exit 1; }
         printf -v "$_po_name" '%s' "$2"; shift 2 ;;
    *) break ;;
  esac
done
unset _po_name _po_val
