#!/usr/bin/env bash
# Summarise every cut manifest in a directory (counts, coverage, loader throughput).
# Run from a recipe directory (manifests hold paths relative to it):
#   cd egs/mini/ae && ../../../local/inspect_data.sh data/targets data/lang
set -euo pipefail
dir=${1:?usage: $0 CUTS_DIR [LANG_DIR]}
lang_dir=${2:-}
shopt -s nullglob
files=("$dir"/*_cuts_*.jsonl.gz)
[ ${#files[@]} -gt 0 ] || { echo "$0: no *_cuts_*.jsonl.gz in $dir" >&2; exit 1; }
for f in "${files[@]}"; do
  printf '%s\t' "$(basename "$f")"
  speechae inspect-data "$f" ${lang_dir:+--lang-dir "$lang_dir"}
done
