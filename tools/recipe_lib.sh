# Shared helpers for every recipe: logging, options (tools/parse_options.sh), stage markers that
# record their inputs, and stage processes that die with the recipe.  Sourced by
# tools/ae_stages.sh (the stage template every egs/<corpus>/ae/run.sh uses); see it for usage.
#
# A stage is one command run by run_stage (or run_jobs for several at a time):
#
#   run_stage N NAME [--marker FILE] [--outputs "PATH ..."] [--deps "MARKER ..."]
#                    [--inputs "FILE ..."] [--resume] -- COMMAND ARGS...
#
# * Marker: FILE (default data/.stage<N>.<NAME>.done) records a key: a hash of the command's
#   arguments (minus --nj / thread counts, which do not change outputs), of the contents of the
#   --inputs files (configs, scripts) and of the ids of the --deps markers (the stages it reads).
#   The stage is skipped when the key is unchanged; otherwise it runs and the log says why
#   (not run yet, --force-stage, which arguments or inputs changed, which earlier stage was redone).
#   Every successful run gets a new id, so a redone stage makes all stages that read it stale;
#   a stage refuses to run on a dependency that is missing or stale.
# * Outputs: before a stage reruns over finished outputs they are moved aside
#   (<dir>/.backup.<stage>/); on success the backup is deleted, on failure or a signal the partial
#   outputs are deleted and the backup (outputs + marker) is moved back.  A run killed with -9
#   leaves the backup, which the next run restores before deciding anything.
#   --resume (training): a failed run keeps its partial outputs so that the rerun resumes; the
#   previous finished outputs stay in the backup until a rerun succeeds, and are restored if the
#   options go back to theirs.
# * Processes: each stage runs in a session of its own (setsid); SIGINT/SIGTERM/SIGHUP to the
#   recipe sends SIGTERM to every running stage's process group (training checkpoints and exits
#   75), waits up to $SPEECHAE_KILL_GRACE seconds (default 60), then SIGKILLs what is left.
# * Locks: a stage takes <dir>/.lock.<stage> (flock) while it runs, so two run.sh processes never
#   run the same stage at once; other stages (e.g. other runs of a grid) may run side by side.
set -euo pipefail
_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() {
  # Timestamped message on stderr, prefixed with the calling script and line.
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]:-main}) $*" >&2
}

die() {
  # One clear line on stderr, then exit 1.
  echo "${0##*/}: error: $*" >&2
  exit 1
}

# shellcheck disable=SC1091
source "$_lib_dir/parse_options.sh"

# ---------------------------------------------------------------------------------------------
# Markers

# Arguments that change how fast a stage runs, not what it writes: left out of the key.
_volatile_flags=" --nj --num-threads "
_volatile_overrides="train.num_threads="

_marker_field() {
  # _marker_field FILE FIELD: the value of "FIELD=value" (first match), empty when absent.
  [ -f "$1" ] || return 0
  sed -n "s/^$2=//p" "$1" | head -n 1
}

_marker_stage() {
  # "stage 3 (targets)" for a marker path .../.stage3.targets.done
  local b=${1##*/}
  b=${b#.stage}; b=${b%.done}
  echo "stage ${b%%.*} (${b#*.})"
}

_marker_num() {
  # 3 for a marker path .../.stage3.targets.done
  local b=${1##*/.stage}
  echo "${b%%.*}"
}

if command -v sha256sum > /dev/null; then
  _sha() { sha256sum | cut -c1-16; }
else
  _sha() { shasum -a 256 | cut -c1-16; }
fi
# util-linux's setsid and flock (Linux); without them stages still run, but a signal reaches only
# the stage's main process and two run.sh can run the same stage at once.
_setsid=setsid; command -v setsid > /dev/null || _setsid=
_flock=flock; command -v flock > /dev/null || _flock=

marker_fresh() {
  # marker_fresh MARKER: true when MARKER exists and every marker it was made from still has
  # the id it had then (recursively).  Prints the reason on stdout when it is not fresh.
  local m=$1 line dep id
  [ -f "$m" ] || { echo "$(_marker_stage "$m") has not run ($m is missing)"; return 1; }
  while IFS= read -r line; do
    dep=${line%% *}; id=${line#* }
    if [ "$(_marker_field "$dep" id)" != "$id" ]; then
      echo "$(_marker_stage "$m") is out of date: $(_marker_stage "$dep") was redone (or removed) after it"
      return 1
    fi
    local sub
    sub=$(marker_fresh "$dep") || { echo "$sub"; return 1; }
  done < <(sed -n 's/^dep=//p' "$m")
}

_config_chain() {
  # _config_chain FILE: FILE and the files it inherits with "base: PATH" (relative to FILE).
  local f=$1 base
  while [ -n "$f" ]; do
    echo "$f"
    [ -f "$f" ] || return 0
    base=$(sed -n 's/^base:[[:space:]]*//p' "$f" | head -n 1 | tr -d "\"'" | sed 's/[[:space:]]*#.*//')
    [ -n "$base" ] || return 0
    case $base in /*) f=$base ;; *) f=$(dirname "$f")/$base ;; esac
  done
}

# ---------------------------------------------------------------------------------------------
# Stage state: the spec of the stage being prepared (_s_*) and of every running job (_j_*[pid]).

declare -gA _j_n=() _j_name=() _j_marker=() _j_key=() _j_outputs=() _j_backup=() _j_resume=()
declare -gA _j_record=() _j_t0=() _j_lockfd=() _j_tag=()
declare -ga _active=()

_stage_spec() {
  # _stage_spec N NAME [options] -- CMD...: sets _s_* and the array _s_cmd.
  _s_n=$1; _s_name=$2; shift 2
  _s_marker=data/.stage$_s_n.$_s_name.done; _s_outputs=""; _s_deps=""; _s_inputs=""; _s_resume=false
  _s_tag=""
  while [ $# -gt 0 ]; do
    case $1 in
      --marker) _s_marker=$2; shift 2 ;;
      --outputs) _s_outputs=$2; shift 2 ;;
      --deps) _s_deps=$2; shift 2 ;;
      --inputs) _s_inputs=$2; shift 2 ;;
      --tag) _s_tag=$2; shift 2 ;;
      --resume) _s_resume=true; shift ;;
      --) shift; break ;;
      *) die "run_stage: unknown argument '$1' (a bug in the recipe)" ;;
    esac
  done
  [ $# -gt 0 ] || die "run_stage $_s_n $_s_name: no command"
  _s_cmd=("$@")
  local first=${_s_outputs%% *}
  _s_dir=$(dirname "${first:-$_s_marker}")
  local slug=${_s_marker#./}; slug=${slug//\//_}; slug=${slug//_./_}; slug=${slug%.done}
  _s_backup=$_s_dir/.backup.$slug
  _s_lock=$_s_dir/.lock.$slug
}

_stage_key() {
  # The key and the human-readable record of the current spec (on stdout: record lines).
  local w skip=false dep f
  for w in "${_s_cmd[@]}"; do
    if $skip; then skip=false; continue; fi
    case "$_volatile_flags" in *" $w "*) skip=true; continue ;; esac
    case $w in "$_volatile_overrides"*) continue ;; esac
    printf 'arg=%q\n' "$w"
  done
  for f in $_s_inputs; do
    if [ -f "$f" ]; then
      echo "input=$f $(_sha < "$f")"
    else
      echo "input=$f missing"
    fi
  done
  for dep in $_s_deps; do
    echo "dep=$dep $(_marker_field "$dep" id)"
  done
}

_explain_change() {
  # Why the record in marker $1 differs from the current record $2 (one line).
  local old=$1 new=$2 a b
  if ! grep -q '^key=' "$old"; then
    echo "its marker does not record its inputs (made by an older speechae)"
    return
  fi
  a=$(sed -n 's/^arg=//p' "$old" | tr '\n' ' ')
  b=$(grep '^arg=' <<< "$new" | sed 's/^arg=//' | tr '\n' ' ')
  if [ "$a" != "$b" ]; then
    # the differing middle of the two argument lists
    local -a x y
    read -r -a x <<< "$a"; read -r -a y <<< "$b"
    local i=0 j=0
    while [ $i -lt ${#x[@]} ] && [ $i -lt ${#y[@]} ] && [ "${x[$i]}" = "${y[$i]}" ]; do i=$((i + 1)); done
    while [ $j -lt $((${#x[@]} - i)) ] && [ $j -lt $((${#y[@]} - i)) ] && \
          [ "${x[${#x[@]}-1-j]}" = "${y[${#y[@]}-1-j]}" ]; do j=$((j + 1)); done
    local from=$((i > 0 ? i - 1 : 0))
    echo "its arguments changed: '${x[*]:$from:$((${#x[@]} - j - from))}' -> '${y[*]:$from:$((${#y[@]} - j - from))}'"
    return
  fi
  local line
  while IFS= read -r line; do
    case $line in
      input=*) grep -qxF "$line" "$old" || { line=${line#input=}; echo "its input ${line% *} changed"; return; } ;;
      dep=*) grep -qxF "$line" "$old" || { line=${line#dep=}; echo "$(_marker_stage "${line% *}") was redone since"; return; } ;;
    esac
  done <<< "$new"
  echo "its record differs (made by an older speechae?)"
}

_forced() {
  # True when --force-stage names stage $1.
  case " ${force_stage:-} " in *" $1 "*) return 0 ;; esac
  return 1
}

_move_outputs() {
  # _move_outputs FROM_DIR TO_DIR OUTPUTS...: move each existing output PATH (by basename).
  local from=$1 to=$2 o; shift 2
  for o in "$@"; do
    if [ "$from" = . ]; then
      [ -e "$o" ] && mkdir -p "$to" && mv "$o" "$to/${o##*/}"
    else
      [ -e "$from/${o##*/}" ] && mkdir -p "$(dirname "$o")" && mv "$from/${o##*/}" "$o"
    fi
  done
  return 0
}

_restore_backup() {
  # Put the backup of the current spec back in place of whatever partial outputs exist.
  local o
  for o in $_s_outputs; do rm -rf "$o"; done
  # shellcheck disable=SC2086
  _move_outputs "$_s_backup" . $_s_outputs
  [ -f "$_s_backup/.marker" ] && mkdir -p "$(dirname "$_s_marker")" && cp "$_s_backup/.marker" "$_s_marker"
  rm -f "$_s_marker.running"
  rm -rf "$_s_backup"
}

_stage_begin() {
  # Decide whether the current spec must run; if so lock it and set its outputs aside.
  # Returns 1 when the stage is up to date (skipped).
  local label="Stage $_s_n ($_s_name${_s_tag:+ $_s_tag})" dep why record key
  for dep in $_s_deps; do
    why=$(marker_fresh "$dep") || die "$label cannot run: $why; run it first (--stage $(_marker_num "$dep"))"
  done
  record=$(_stage_key)
  key=$(_sha <<< "$record")
  mkdir -p "$_s_dir"
  exec {_s_lockfd}>"$_s_lock"
  if [ -n "$_flock" ] && ! flock -n "$_s_lockfd"; then
    exec {_s_lockfd}>&-
    die "$label is running in another process (lock $_s_lock held); wait for it or stop it"
  fi
  if [ -d "$_s_backup" ]; then
    # an earlier run of this stage did not finish (killed with -9?)
    if [ "$(_marker_field "$_s_backup/.marker" key)" = "$key" ] && ! _forced "$_s_n"; then
      log "$label: restoring the finished outputs an interrupted rerun had set aside ($_s_backup)"
      _restore_backup
    elif [ "$_s_resume" = false ]; then
      log "$label: an earlier rerun was interrupted: removing its partial outputs, restoring the previous ones"
      _restore_backup
    fi
  fi
  if [ -f "$_s_marker" ] && [ "$(_marker_field "$_s_marker" key)" = "$key" ] && ! _forced "$_s_n"; then
    log "$label: already done ($_s_marker); skipping"
    exec {_s_lockfd}>&-
    return 1
  fi
  if _forced "$_s_n"; then
    why="--force-stage $_s_n"
  elif [ -f "$_s_marker" ]; then
    why=$(_explain_change "$_s_marker" "$record")
  elif [ -f "$_s_marker.running" ]; then
    why="its last run did not finish"
  else
    why="not run yet"
  fi
  if [ -f "$_s_marker" ]; then
    if [ -d "$_s_backup" ]; then
      rm -rf "$_s_backup"   # cannot happen with markers kept by this library; be safe
    fi
    mkdir -p "$_s_backup"
    cp "$_s_marker" "$_s_backup/.marker"
    rm -f "$_s_marker"
    # shellcheck disable=SC2086
    _move_outputs . "$_s_backup" $_s_outputs
    log "$label: rerun because $why (previous outputs kept in $_s_backup until it succeeds)"
  else
    if [ "$_s_resume" = false ]; then
      local o
      for o in $_s_outputs; do rm -rf "$o"; done
    elif [ -f "$_s_marker.running" ] && [ "$(_marker_field "$_s_marker.running" key)" != "$key" ]; then
      # an unfinished run of other options cannot be resumed with these: start afresh
      local o
      for o in $_s_outputs; do rm -rf "$o"; done
      why="$why with other options; its unfinished outputs were removed"
    fi
    log "$label: start ($why)"
  fi
  mkdir -p "$(dirname "$_s_marker")"
  printf 'key=%s\npid=%s\nstarted=%s\n' "$key" "$$" "$(date -Iseconds)" > "$_s_marker.running"
  _s_key=$key
  _s_record=$record
  return 0
}

_stage_spawn() {
  # Start the current spec's command in a session of its own; remember it under its pid.
  local pid prefix=""
  [ -n "$_s_tag" ] && prefix="[$_s_tag] "
  # The job closes the locks of the other jobs, so that each lock lives exactly as long as its stage.
  local close="" p
  for p in "${_active[@]}"; do close+=" ${_j_lockfd[$p]}"; done
  _SPEECHAE_CLOSE_FDS=$close _SPEECHAE_PREFIX=$prefix $_setsid bash -c '
    for fd in $_SPEECHAE_CLOSE_FDS; do eval "exec $fd>&-"; done
    unset _SPEECHAE_CLOSE_FDS
    if [ -z "$_SPEECHAE_PREFIX" ]; then exec "$@"; fi
    # The group gets SIGTERM: the command handles it (training checkpoints, exits 75) while this
    # shell and the prefixing sed outlive it, so that its last lines and its status come through.
    trap : TERM INT HUP
    set -o pipefail
    "$@" 2>&1 | (trap "" TERM INT HUP; exec sed -u "s|^|$_SPEECHAE_PREFIX|") >&2' _ "${_s_cmd[@]}" < /dev/null &
  pid=$!
  _active+=("$pid")
  _j_n[$pid]=$_s_n; _j_name[$pid]=$_s_name; _j_marker[$pid]=$_s_marker; _j_key[$pid]=$_s_key
  _j_outputs[$pid]=$_s_outputs; _j_backup[$pid]=$_s_backup; _j_resume[$pid]=$_s_resume
  _j_record[$pid]=$_s_record; _j_t0[$pid]=$SECONDS; _j_lockfd[$pid]=$_s_lockfd; _j_tag[$pid]=$_s_tag
  # keep the spec's command for the marker
  _j_record[$pid]+=$'\n'"cmd=${_s_cmd[*]}"
}

_stage_end() {
  # _stage_end PID STATUS: write the marker or put the old outputs back.  Returns STATUS.
  local pid=$1 rc=$2 m=${_j_marker[$1]}
  local label="Stage ${_j_n[$pid]} (${_j_name[$pid]}${_j_tag[$pid]:+ ${_j_tag[$pid]}})" secs=$((SECONDS - _j_t0[$1]))
  local -a rest=()
  local p
  for p in "${_active[@]}"; do [ "$p" = "$pid" ] || rest+=("$p"); done
  _active=("${rest[@]}")
  if [ "$rc" -eq 0 ]; then
    {
      echo "key=${_j_key[$pid]}"
      echo "id=$(date +%s%N)-$$-$RANDOM"
      echo "finished=$(date -Iseconds) in ${secs}s"
      echo "${_j_record[$pid]}"
    } > "$m.tmp"
    mv "$m.tmp" "$m"
    rm -f "$m.running"
    rm -rf "${_j_backup[$pid]}"
    log "$label: done in ${secs}s"
  else
    local what
    case $rc in
      75) what="stopped (exit 75: checkpoint written)" ;;
      13[0-9]|14[0-9]) what="killed by signal $((rc - 128))" ;;
      *) what="failed (exit $rc)" ;;
    esac
    if [ "${_j_resume[$pid]}" = true ]; then
      log "$label: $what after ${secs}s; its outputs are kept: rerunning resumes it"
    else
      _s_outputs=${_j_outputs[$pid]}; _s_backup=${_j_backup[$pid]}; _s_marker=$m
      if [ -d "$_s_backup" ]; then
        _restore_backup
        log "$label: $what after ${secs}s; its partial outputs were removed and the previous ones restored"
      else
        local o
        for o in $_s_outputs; do rm -rf "$o"; done
        log "$label: $what after ${secs}s; its partial outputs were removed"
      fi
      rm -f "$m.running"
    fi
  fi
  local fd=${_j_lockfd[$pid]}
  exec {fd}>&-
  return "$rc"
}

_wait_one() {
  # Wait for one active job to end and finish it; returns its status.
  local pid rc=0
  if [ "${BASH_VERSINFO[0]}" -gt 5 ] || { [ "${BASH_VERSINFO[0]}" -eq 5 ] && [ "${BASH_VERSINFO[1]}" -ge 1 ]; }; then
    wait -n -p pid "${_active[@]}" || rc=$?
    [ -n "${pid:-}" ] || return 0   # interrupted by a trapped signal (the trap exits)
  else
    while :; do
      for pid in "${_active[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
      sleep 1
    done
    wait "$pid" || rc=$?
  fi
  _stage_end "$pid" "$rc"
}

run_stage() {
  # run_stage N NAME [options] -- CMD...  (see the top of this file); returns the stage's status.
  # With _dry set, only warns when the stage's record differs from its marker.
  _stage_spec "$@"
  if [ -n "${_dry:-}" ]; then
    _stage_dry
    return 0
  fi
  _stage_begin || return 0
  _stage_spawn
  _wait_one
}

_stage_dry() {
  local record
  [ -f "$_s_marker" ] || return 0
  record=$(_stage_key)
  [ "$(_marker_field "$_s_marker" key)" != "$(_sha <<< "$record")" ] || return 0
  log "warning: stage $_s_n ($_s_name) is not selected, but $(_explain_change "$_s_marker" "$record");" \
      "later stages use its outputs as they are (add --stage $_s_n to redo it)"
}

run_jobs() {
  # run_jobs MAX FUNCTION ITEM...: for each ITEM, FUNCTION ITEM must call stage_job with a
  # run_stage argument list; up to MAX of these stages run at a time.  Returns non-zero when
  # any failed (after all have ended: one failing run does not stop the others).
  local max=$1 fn=$2 item failed=0; shift 2
  for item in "$@"; do
    while [ "${#_active[@]}" -ge "$max" ]; do _wait_one || failed=1; done
    "$fn" "$item"
  done
  while [ "${#_active[@]}" -gt 0 ]; do _wait_one || failed=1; done
  return "$failed"
}

stage_job() {
  # Inside a run_jobs FUNCTION: like run_stage, but starts the stage without waiting.
  _stage_spec "$@"
  _stage_begin || return 0
  _stage_spawn
}

run_cmd() {
  # run_cmd CMD...: a command without a marker, in its own session (killed with the recipe).
  local pid rc=0
  $_setsid "$@" < /dev/null &
  pid=$!
  _plain_pid=$pid
  wait "$pid" || rc=$?
  _plain_pid=
  return "$rc"
}

# ---------------------------------------------------------------------------------------------
# Signals: stop every running stage, put outputs back, exit 128 + signal.

_plain_pid=
_stop_all() {
  # _stop_all STATUS: SIGTERM every running stage's process group, SIGKILL after the grace
  # period, then finish each stage as failed with STATUS (outputs restored).
  local code=$1 pid t
  for pid in "${_active[@]}" $_plain_pid; do
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  t=$((SECONDS + ${SPEECHAE_KILL_GRACE:-60}))
  for pid in "${_active[@]}" $_plain_pid; do
    while kill -0 -- "-$pid" 2>/dev/null && [ $SECONDS -lt $t ]; do sleep 0.2; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
  for pid in "${_active[@]}"; do
    local rc=0
    wait "$pid" 2>/dev/null || rc=$?
    [ "$rc" -ne 0 ] || rc=$code
    _stage_end "$pid" "$rc" || true
  done
}

_on_signal() {
  trap - INT TERM HUP
  log "caught SIG$1: stopping ${#_active[@]} running stage(s)${_plain_pid:+ and pid $_plain_pid}"
  _stop_all "$2"
  exit "$2"
}

_on_exit() {
  # An error in the recipe itself (set -e, die) while stages run: do not leave them behind.
  local rc=$?
  if [ "${#_active[@]}" -gt 0 ] || [ -n "$_plain_pid" ]; then
    log "exiting with status $rc: stopping ${#_active[@]} running stage(s)"
    _stop_all "$rc"
  fi
}

trap '_on_signal INT 130' INT
trap '_on_signal TERM 143' TERM
trap '_on_signal HUP 129' HUP
trap '_on_exit' EXIT

activate_env() {
  # The speechae environment (path.sh installs it when missing); SPEECHAE_SKIP_ENV=1 uses the
  # one already active (tests).
  if [ "${SPEECHAE_SKIP_ENV:-0}" != 1 ]; then
    # shellcheck disable=SC1091
    source "$_lib_dir/../path.sh"
  fi
}
