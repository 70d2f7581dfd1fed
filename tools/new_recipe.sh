#!/usr/bin/env bash
# Create a recipe skeleton for a new corpus:  tools/new_recipe.sh NAME [--from RECIPE] [--force]
#
#   tools/new_recipe.sh swahili              # generic recipe: you fill local/prepare.sh
#   tools/new_recipe.sh mybengali --from bengali
#
# Without --from, egs/NAME/ae/ gets a run.sh whose stage 0 runs local/prepare.sh (a stub you fill
# in: it must write data/local/utterances.tsv, see speechae/recipes/generic.py) and whose stages
# 1-5 are the shared ones, plus conf/ (copied from the LibriSpeech recipe) and a README.
# With --from RECIPE, egs/RECIPE/ae/{run.sh,conf,local,README.md} are copied and renamed.
# See docs/new_language.md.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
name=
from=
force=false
while [ $# -gt 0 ]; do
  case $1 in
    --from) from=${2:?--from needs a recipe name}; shift 2 ;;
    --from=*) from=${1#--from=}; shift ;;
    --force) force=true; shift ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "$0: unknown option $1" >&2; exit 1 ;;
    *) [ -z "$name" ] || { echo "$0: one NAME only" >&2; exit 1; }; name=$1; shift ;;
  esac
done
[ -n "$name" ] || { echo "usage: $0 NAME [--from RECIPE] [--force]" >&2; exit 1; }
[[ $name =~ ^[a-z][a-z0-9_]*$ ]] || { echo "$0: NAME must match [a-z][a-z0-9_]* (it becomes the manifest prefix)" >&2; exit 1; }
dest=$root/egs/$name/ae
if [ -e "$dest" ] && [ "$force" != true ]; then
  echo "$0: $dest exists (use --force to overwrite its run.sh/conf/local/README.md)" >&2; exit 1
fi
mkdir -p "$dest/conf" "$dest/local"

if [ -n "$from" ]; then
  src=$root/egs/$from/ae
  [ -f "$src/run.sh" ] || { echo "$0: no recipe egs/$from/ae" >&2; exit 1; }
  cp "$src/run.sh" "$dest/run.sh"
  cp -r "$src/conf/." "$dest/conf/" 2>/dev/null || true
  [ -d "$src/local" ] && cp -r "$src/local/." "$dest/local/"
  [ -f "$src/README.md" ] && cp "$src/README.md" "$dest/README.md"
  # The manifest prefix names every file the stages exchange.
  sed -i "s/^prefix=$from\$/prefix=$name/" "$dest/run.sh"
  find "$dest/conf" -name '*.yaml' -exec sed -i "s/\b${from}_cuts_/${name}_cuts_/g" {} +
  echo "created $dest from egs/$from/ae (prefix $name)"
  exit 0
fi

cp "$root/egs/librispeech/ae/conf/"*.yaml "$dest/conf/"
sed -i -e "s/librispeech_cuts_/${name}_cuts_/g" -e "s/^# LibriSpeech, stage 4/# $name, stage 4/" "$dest/conf/train_base.yaml"

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
# Example for a corpus with one "<id>.wav" + "<id>.txt" pair per utterance in <speaker>/ folders:
#
#   for wav in "$corpus_dir"/*/*.wav; do
#     id=$(basename "$wav" .wav); spk=$(basename "$(dirname "$wav")")
#     printf '%s\t%s\t%s\t%s\n' "$id" "$spk" "$(realpath "$wav")" "$(tr '\t\n' '  ' < "${wav%.wav}.txt")"
#   done > "$out_dir/utterances.tsv"
set -euo pipefail
corpus_dir=${1:?usage: $0 CORPUS_DIR OUT_DIR}
out_dir=${2:?usage: $0 CORPUS_DIR OUT_DIR}
mkdir -p "$out_dir"
echo "local/prepare.sh is a stub: edit it to write $out_dir/utterances.tsv from $corpus_dir" >&2
exit 1
EOF
chmod +x "$dest/local/prepare.sh"

cat > "$dest/run.sh" <<EOF
#!/usr/bin/env bash
# Recipe $name (made by tools/new_recipe.sh): stage 0 runs local/prepare.sh (yours), stages 1-5
# are shared speechae commands.  See README.md and docs/new_language.md.
set -euo pipefail
cd "\$(dirname "\${BASH_SOURCE[0]}")"
root=\${SPEECHAE_ROOT:-\$(cd ../../.. && pwd)}

help_message="Usage: \$0 [options]   (recipe $name)
Stages: 0 local/prepare.sh | 1 manifests | 2 fbank | 3 targets | 4 train | 5 evaluate"
recipe_options="stage stop_stage nj force_stage corpus_dir language normalize dev_fraction test_fraction on_error \\
 speed_perturb model_type vocab_size num_clusters kmeans_max_cuts arm model_size num_gpus exp_name train_args eval_args"
stage=0
stop_stage=5
nj=4
force_stage=
corpus_dir=               # passed to local/prepare.sh
language=                 # language code stored in the manifests (e.g. sw)
normalize=none            # transcript normaliser: none | lower | bengali (add yours in speechae/text/)
dev_fraction=0.05         # speakers held out for dev when utterances.tsv has no split column
test_fraction=0.05
on_error=fail             # fail | skip (bad files listed in data/manifests/${name}_skipped.txt)
speed_perturb=false
model_type=bpe            # sentencepiece: bpe | unigram | char
vocab_size=500
num_clusters=200
kmeans_max_cuts=3000
arm=sigreg                # conf/<arm>.yaml
model_size=S
num_gpus=1
exp_name=
train_args=
eval_args=

source "\$root/tools/recipe_lib.sh" "\$@"

prefix=$name
done_dir=data
exp=exp/\${exp_name:-\${arm}_\${model_size}}
splits() { cat data/manifests/\${prefix}_splits.txt; }

if stage_selected 0; then
  run_stage 0 prepare local/prepare.sh "\$corpus_dir" data/local
fi
if stage_selected 1; then
  run_stage 1 manifests speechae prepare-corpus tsv data/local/utterances.tsv data/manifests --prefix \$prefix \\
    --normalize "\$normalize" \${language:+--language "\$language"} --dev-fraction "\$dev_fraction" \\
    --test-fraction "\$test_fraction" --on-error "\$on_error" --nj "\$nj"
fi
if stage_selected 2; then
  sp=--no-speed-perturb; [ "\$speed_perturb" = true ] && sp=--speed-perturb
  run_stage 2 fbank speechae compute-fbank data/manifests data/fbank --prefix \$prefix --splits "\$(splits)" \\
    --nj "\$nj" \$sp
fi
if stage_selected 3; then
  run_stage 3 targets speechae prepare-targets data/fbank data/lang data/targets --prefix \$prefix \\
    --splits "\$(splits)" --model-type "\$model_type" --vocab-size "\$vocab_size" --num-clusters "\$num_clusters" \\
    --kmeans-max-cuts "\$kmeans_max_cuts"
fi
if stage_selected 4; then
  # shellcheck disable=SC2086
  run_stage 4 "train.\${exp#exp/}" speechae train conf/\$arm.yaml model.preset="\$model_size" \\
    losses.masked_units.num_classes="\$num_clusters" \$train_args --exp-dir "\$exp" --world-size "\$num_gpus"
fi
if stage_selected 5; then
  for split in \$(splits | tr , ' '); do
    case \$split in test*) ;; *) continue ;; esac
    # shellcheck disable=SC2086
    run_stage 5 "eval.\${exp#exp/}.\$split" speechae evaluate "\$exp" \\
      --test-cuts data/targets/\${prefix}_cuts_\$split.jsonl.gz --lang-dir data/lang --out-dir "\$exp/eval_\$split" \$eval_args
  done
fi
log "Finished stages \$stage..\$stop_stage"
EOF
chmod +x "$dest/run.sh"

cat > "$dest/README.md" <<EOF
# Recipe \`$name\`

Made by \`tools/new_recipe.sh $name\`; see [docs/new_language.md](../../../docs/new_language.md).

1. Fill in \`local/prepare.sh\`: it must write \`data/local/utterances.tsv\`
   (\`utt_id<TAB>speaker<TAB>audio<TAB>transcript[<TAB>split]\`).
2. \`./run.sh --corpus-dir /path/to/corpus --language xx --stage 0 --stop-stage 3\` prepares the data:
   manifests in \`data/manifests/\` (\`${name}_skipped.txt\` lists skipped items with \`--on-error skip\`),
   features in \`data/fbank/\`, sentencepiece + k-means in \`data/lang/\`, training cuts in \`data/targets/\`.
3. \`./run.sh --stage 4 --stop-stage 5 --arm sigreg --model-size S\` trains into \`exp/sigreg_S/\` and evaluates.

Edit \`conf/*.yaml\` for the model/loss settings (\`--train-args "key=value ..."\` overrides them per run).
EOF
echo "created $dest (fill in $dest/local/prepare.sh)"
