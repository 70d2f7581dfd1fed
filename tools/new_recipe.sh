#!/usr/bin/env bash
# Create a recipe for a new corpus:  tools/new_recipe.sh NAME [--from RECIPE] [--keep-corpus-stages] [--force]
#
#   tools/new_recipe.sh swahili                        # you fill in local/prepare.sh
#   tools/new_recipe.sh mybengali --from bengali       # training configs of egs/bengali/ae
#   tools/new_recipe.sh mybengali --from bengali --keep-corpus-stages   # ... and its stages 0-1
#
# egs/NAME/ae/ gets a ~40-line run.sh that calls the shared stage template (tools/ae_stages.sh)
# for stages 2-5; its stage 0 runs local/prepare.sh (a stub you fill in: it writes
# data/local/utterances.tsv, see speechae/recipes/generic.py) and stage 1 validates that file
# into manifests (speechae prepare-corpus tsv).  conf/arms/{none,kl,sigreg}.yaml come from
# RECIPE (default mini); conf/train_base.yaml is sized for a small corpus (minutes to a few
# hours), or is RECIPE's with --from.  --keep-corpus-stages copies RECIPE's run.sh and local/
# instead (its download step and text normaliser): only sensible for the same corpus family.
# See docs/new_language.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=
from=
keep=false
force=false
usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
  case $1 in
    --from) [ $# -ge 2 ] || { echo "$0: --from needs a recipe name" >&2; exit 2; }; from=$2; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --keep-corpus-stages) keep=true; shift ;;
    --force) force=true; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) echo "$0: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) [ -z "$name" ] || { echo "$0: one NAME only (got '$name' and '$1')" >&2; exit 2; }; name=$1; shift ;;
  esac
done
[ -n "$name" ] || { echo "usage: $0 NAME [--from RECIPE] [--keep-corpus-stages] [--force]" >&2; exit 2; }
[[ $name =~ ^[a-z][a-z0-9_]*$ ]] || { echo "$0: NAME must match [a-z][a-z0-9_]* (it becomes the manifest prefix)" >&2; exit 2; }
$keep && [ -z "$from" ] && { echo "$0: --keep-corpus-stages needs --from RECIPE" >&2; exit 2; }
src=$root/egs/${from:-mini}/ae
[ -f "$src/run.sh" ] || { echo "$0: no recipe egs/${from:-mini}/ae" >&2; exit 2; }
[ -d "$src/conf/arms" ] || { echo "$0: egs/${from:-mini}/ae has no conf/arms/" >&2; exit 2; }
dest=$root/egs/$name/ae
if [ -e "$dest" ] && [ "$force" != true ]; then
  echo "$0: $dest exists (use --force to overwrite its run.sh/conf/local/README.md)" >&2; exit 2
fi
mkdir -p "$dest/conf/arms" "$dest/local"
cp "$src/conf/arms/"{none,kl,sigreg}.yaml "$dest/conf/arms/"
cp "$src/conf/vocoder.yaml" "$dest/conf/vocoder.yaml"  # stage 5 (its data paths come from the stage)

if [ -n "$from" ]; then
  cp "$src/conf/train_base.yaml" "$dest/conf/train_base.yaml"
  # the uniwav baseline arm carries copies of train_base's optim/data/train blocks: same corpus sizing
  [ -f "$src/conf/arms/uniwav.yaml" ] && cp "$src/conf/arms/uniwav.yaml" "$dest/conf/arms/"
  sed -i "s/\b${from}_cuts_/${name}_cuts_/g" "$dest/conf/train_base.yaml" "$dest/conf/arms/"*.yaml
  echo "conf/: egs/$from/ae's training configs (train_base.yaml sized for that corpus: check max_duration,"
  echo "       num_buckets and max_steps against yours; arms/uniwav.yaml repeats them)"
else
  cat > "$dest/conf/train_base.yaml" <<EOF
# $name, stages 4-6: everything the arms share (arms/{none,kl,sigreg}.yaml inherit this file
# and set only their regularizer).  Written by tools/new_recipe.sh for a small corpus (minutes
# to a few hours of speech, one GPU or a CPU): short batches, few buckets, SpecAugment on (the
# reconstruction target stays the clean features), a short schedule.  run.sh adds
# model.preset=<--model-size> and losses.masked_units.num_classes=<--num-clusters>; for a
# larger corpus start from egs/bengali/ae/conf or egs/librispeech/ae/conf instead.
model:
  preset: S
  bottleneck:
    latent_dim: 32
    norm: none               # the same for every arm (a gaussian posterior is never normalised)
losses:
  semantic: [masked_units]
  masked_units:
    num_classes: 100         # = --num-clusters of stage 3
    proj_dim: 128
  weights:
    recon: 1.0
    masked_units: 0.5
    sigreg: 0                # computed and logged on every arm (no gradient unless the arm's own)
  sigreg:
    num_directions: 256
    num_frames: 1024         # global frame budget
  regularizer_ramp: {type: linear_warmup, steps: 500}
optim:
  name: scaled_adam
  lr: 0.045
  scheduler: eden
  warmup_batches: 200
  lr_batches: 2000           # Eden B: decay starts within a short run
  lr_epochs: 10.0            # Eden E: many passes over little data
data:
  train_cuts: data/targets/${name}_cuts_train.jsonl.gz
  dev_cuts: data/targets/${name}_cuts_dev.jsonl.gz
  lang_dir: data/lang
  max_duration: 120.0        # seconds of audio per batch (per GPU)
  num_buckets: 5             # few cuts: few buckets (never more than the cuts of a split)
  num_workers: 2
  spec_augment: true
  seed: 0
train:
  max_steps: 20000
  log_every: 20
  valid_every: 1000
  save_every: 1000
  keep_last_k: 5
  average_every: 20
  valid_max_batches: 20
  seed: 42
EOF
fi

if $keep; then
  cp "$src/run.sh" "$dest/run.sh"
  [ -d "$src/local" ] && cp -r "$src/local/." "$dest/local/"
  sed -i "s/^prefix=$from\$/prefix=$name/" "$dest/run.sh"
  echo "run.sh, local/: COPIED from egs/$from/ae with its corpus stages: stage 0 and 1 are egs/$from/ae's"
  echo "       ($(grep -o 'speechae [a-z-]* [a-z]*' "$src/run.sh" | sort -u | paste -sd ',' | sed 's/,/, /g'))"
  echo "       including its download step and text normalisation; edit stage_0/stage_1 in run.sh if"
  echo "       your corpus differs"
else
  cat > "$dest/local/prepare.sh" <<'EOF'
#!/usr/bin/env bash
# Stage 0 of this recipe: turn your corpus into data/local/utterances.tsv.  FILL THIS IN.
#
#   local/prepare.sh CORPUS_DIR OUT_DIR       (run.sh calls it with --corpus-dir and data/local)
#
# Write OUT_DIR/utterances.tsv, UTF-8, one utterance per line, tab-separated:
#   <utt_id> <TAB> <speaker> <TAB> <audio path> <TAB> <transcript> [<TAB> <split>]
# Audio paths: absolute, or relative to OUT_DIR; WAV/FLAC/MP3/OGG at any rate (resampled to 16 kHz).
# Split (optional): train / dev / test; without it speakers are split by --dev-fraction/--test-fraction.
# Anything this script writes belongs in OUT_DIR: a failed run removes OUT_DIR and puts the
# previous one back.  Example for a corpus with one "<id>.wav" + "<id>.txt" pair per utterance
# in <speaker>/ folders:
#
#   for wav in "$corpus_dir"/*/*.wav; do
#     id=$(basename "$wav" .wav); spk=$(basename "$(dirname "$wav")")
#     printf '%s\t%s\t%s\t%s\n' "$id" "$spk" "$(realpath "$wav")" "$(tr '\t\n' '  ' < "${wav%.wav}.txt")"
#   done > "$out_dir/utterances.tsv"
set -euo pipefail
corpus_dir=${1:-}   # run.sh --corpus-dir
out_dir=${2:?usage: $0 CORPUS_DIR OUT_DIR}
mkdir -p "$out_dir"
echo "local/prepare.sh is a stub: edit it to write $out_dir/utterances.tsv from $corpus_dir" >&2
exit 1
EOF
  chmod +x "$dest/local/prepare.sh"
  cat > "$dest/run.sh" <<EOF
#!/usr/bin/env bash
# Recipe $name (made by tools/new_recipe.sh): stage 0 runs local/prepare.sh (yours), which writes
# data/local/utterances.tsv; stage 1 validates it into manifests; stages 2-5 are the shared
# template (tools/ae_stages.sh).  See README.md and docs/new_language.md.
#
#   ./run.sh --corpus-dir /path/to/corpus --language xx --stage 0 --stop-stage 3
#   ./run.sh --stage 4 --stop-stage 6 --arms "none kl sigreg" --seeds "1 2 3"
set -euo pipefail
cd "\$(dirname "\${BASH_SOURCE[0]}")"
root=\${SPEECHAE_ROOT:-\$(cd ../../.. && pwd)}
# shellcheck disable=SC1091
source "\$root/tools/ae_stages.sh"

recipe_title="recipe $name"
prefix=$name
stage_names=(prepare manifests)
# shared options: defaults for a small corpus
nj=4; model_type=char; vocab_size=500; num_clusters=100; kmeans_max_cuts=3000; model_size=S

opt_group "Corpus (stages 0-1)"
opt corpus_dir "" str "passed to local/prepare.sh"
opt language "" str "language code stored in the manifests (e.g. sw)"
opt normalize none str "transcript normaliser: none | lower | bengali (add yours in speechae/text/)"
opt dev_fraction 0.1 float "speakers held out for dev when utterances.tsv has no split column"
opt test_fraction 0.1 float "... and for test"

stage_0() {
  run_stage 0 prepare --outputs data/local --inputs "\$(echo local/*)" -- \\
    local/prepare.sh "\$corpus_dir" data/local
}
stage_1() {
  run_stage 1 manifests --outputs data/manifests --deps "\$(marker 0)" -- \\
    speechae prepare-corpus tsv data/local/utterances.tsv data/manifests --prefix "\$prefix" \\
    --normalize "\$normalize" \${language:+--language "\$language"} --dev-fraction "\$dev_fraction" \\
    --test-fraction "\$test_fraction" --on-error "\$on_error" --nj "\$nj"
}

ae_main "\$@"
EOF
  if [ -n "$from" ]; then
    echo "run.sh, local/: generic (stage 0 = the local/prepare.sh stub, stage 1 = utterances.tsv);"
    echo "       egs/$from/ae's corpus stages (download step, text normaliser) were NOT copied:"
    echo "       pass --normalize in run.sh or --keep-corpus-stages to take them"
  fi
fi
chmod +x "$dest/run.sh"

cat > "$dest/README.md" <<EOF
# Recipe \`$name\`

Made by \`tools/new_recipe.sh $name${from:+ --from $from}\`; see
[docs/new_language.md](../../../docs/new_language.md). \`./run.sh --help\` lists every option.

1. Fill in \`local/prepare.sh\`: it must write \`data/local/utterances.tsv\`
   (\`utt_id<TAB>speaker<TAB>audio<TAB>transcript[<TAB>split]\`).
2. \`./run.sh --corpus-dir /path/to/corpus --language xx --stage 0 --stop-stage 3\` prepares the data:
   manifests in \`data/manifests/\` (\`${name}_skipped.txt\` lists skipped items with \`--on-error skip\`),
   features in \`data/fbank/\`, sentencepiece + k-means in \`data/lang/\`, training cuts in \`data/targets/\`.
3. \`./run.sh --stage 4 --stop-stage 6 --arms "none kl sigreg" --seeds "1 2 3"\` trains the grid
   into \`exp/S_<arm>_s<seed>/\`, evaluates every run and compares them in \`exp/compare/\`.

\`conf/train_base.yaml\` holds what the arms share, \`conf/arms/<arm>.yaml\` the regularizer of each;
\`--train-overrides "key=value ..."\` overrides them for every run.
EOF
echo "created $dest${from:+ (configs from egs/$from/ae)}"
$keep || echo "next: fill in $dest/local/prepare.sh"
