# Shared helpers for every recipe's run.sh.  Usage at the top of a recipe:
#
#   recipe_options="stage stop_stage nj corpus_dir ..."   # the variables users may set
#   stage=0; stop_stage=100; nj=2; ...                    # defaults
#   source "$root/tools/recipe_lib.sh" "$@"               # parses options, activates the env
#
# then for each stage:   if stage_selected 2; then run_stage 2 "fbank" cmd args...; fi
set -euo pipefail
_lib_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

log() {
  # Timestamped message on stderr, prefixed with the calling script and line.
  local fname=${BASH_SOURCE[1]##*/}
  echo -e "$(date '+%Y-%m-%d %H:%M:%S') ($fname:${BASH_LINENO[0]}:${FUNCNAME[1]:-main}) $*" >&2
}

stage_selected() {
  # True when stage $1 lies in [--stage, --stop-stage].
  [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]
}

run_stage() {
  # run_stage N NAME CMD...: runs CMD once; a marker $done_dir/.stage<N>.<NAME>.done makes a
  # re-run a no-op.  Delete the marker (or pass --force-stage N) to redo a stage.
  local n=$1 name=$2; shift 2
  local marker=${done_dir:-data}/.stage$n.$name.done
  if [ "${force_stage:-}" = "$n" ]; then rm -f "$marker"; fi
  if [ -f "$marker" ]; then
    log "Stage $n ($name): already done ($marker); skipping"
    return 0
  fi
  log "Stage $n ($name): start"
  local t0=$SECONDS
  "$@"
  mkdir -p "$(dirname "$marker")"
  echo "finished $(date -Iseconds) in $((SECONDS - t0))s: $*" > "$marker"
  log "Stage $n ($name): done in $((SECONDS - t0))s"
}

# shellcheck disable=SC1091
source "$_lib_dir/parse_options.sh"
if [ "${SPEECHAE_SKIP_ENV:-0}" != 1 ]; then
  # shellcheck disable=SC1091
  source "$_lib_dir/../path.sh"
fi
