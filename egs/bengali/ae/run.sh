#!/usr/bin/env bash
# Bengali recipe: OpenSLR 53, Common Voice bn and/or Bengali.AI Speech -> fbank, normalised
# character (or BPE) targets + k-means units -> train (lower-resource config) -> evaluate.
#
#   ./run.sh --stage 0 --stop-stage 3                                 # OpenSLR 53 (downloaded)
#   ./run.sh --corpora slr53,commonvoice,bengaliai --dl-dir /data/bn  # all three (two manual downloads)
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}

help_message="Usage: $0 [options]   (Bengali autoencoder recipe; see README.md)
Stages: 0 download/locate | 1 manifests | 2 fbank | 3 targets | 4 train | 5 evaluate"
recipe_options="stage stop_stage nj force_stage dl_dir corpora slr53_parts digits dev_fraction test_fraction on_error \
 speed_perturb model_type vocab_size num_clusters kmeans_max_cuts arm model_size num_gpus num_nodes node_rank \
 master_addr master_port exp_name train_args eval_args"
stage=0
stop_stage=5
nj=8
force_stage=
dl_dir=download           # asr_bengali_*.zip / asr_bengali/, cv-corpus-*-bn.tar.gz / cv-corpus-*/bn/, bengaliai-speech.zip
corpora=slr53             # any of slr53,commonvoice,bengaliai (comma-separated; combined into one set)
slr53_parts=all           # OpenSLR 53 zips to use: all, or a subset such as 0,1,2
digits=keep               # transcript digits: keep | spell | reject (see speechae/text/bengali.py)
dev_fraction=0.02         # OpenSLR 53 has no official split: share of speakers held out for dev
test_fraction=0.02        # ... and for test
on_error=fail             # fail | skip (bad files listed in data/manifests/bengali_skipped.txt)
speed_perturb=true        # lower-resource: 0.9x / 1.1x copies triple the training audio
model_type=char           # sentencepiece: char (graphemes) | bpe | unigram
vocab_size=500            # upper bound (a char model keeps only the graphemes it sees)
num_clusters=200          # k-means units (fewer than LibriSpeech's 500 for a smaller corpus)
kmeans_max_cuts=3000
arm=sigreg                # conf/<arm>.yaml: sigreg | kl
model_size=S              # S suits the ~200-1000 h available; M/L for the combined set at most
num_gpus=1
num_nodes=1
node_rank=0
master_addr=localhost
master_port=29500
exp_name=
train_args=
eval_args=

source "$root/tools/recipe_lib.sh" "$@"

prefix=bengali
done_dir=data
exp=exp/${exp_name:-${arm}_${model_size}}

splits() { cat data/manifests/${prefix}_splits.txt; }

if stage_selected 0; then
  run_stage 0 download speechae download-corpus bengali "$dl_dir" --corpora "$corpora" --slr53-parts "$slr53_parts"
fi
if stage_selected 1; then
  run_stage 1 manifests speechae prepare-corpus bengali "$dl_dir" data/manifests --prefix $prefix \
    --corpora "$corpora" --digits "$digits" --dev-fraction "$dev_fraction" --test-fraction "$test_fraction" \
    --on-error "$on_error" --nj "$nj"
fi
if stage_selected 2; then
  sp=--no-speed-perturb; [ "$speed_perturb" = true ] && sp=--speed-perturb
  run_stage 2 fbank speechae compute-fbank data/manifests data/fbank --prefix $prefix --splits "$(splits)" \
    --nj "$nj" $sp
fi
if stage_selected 3; then
  run_stage 3 targets speechae prepare-targets data/fbank data/lang data/targets --prefix $prefix \
    --splits "$(splits)" --model-type "$model_type" --vocab-size "$vocab_size" --num-clusters "$num_clusters" \
    --kmeans-max-cuts "$kmeans_max_cuts"
fi
if stage_selected 4; then
  # shellcheck disable=SC2086
  overrides=(model.preset="$model_size" losses.masked_units.num_classes="$num_clusters" $train_args)
  if [ "$num_nodes" -gt 1 ]; then
    run_stage 4 "train.${exp#exp/}" torchrun --nnodes "$num_nodes" --node-rank "$node_rank" \
      --nproc-per-node "$num_gpus" --master-addr "$master_addr" --master-port "$master_port" \
      "$(command -v speechae)" train conf/$arm.yaml "${overrides[@]}" --exp-dir "$exp"
  else
    run_stage 4 "train.${exp#exp/}" speechae train conf/$arm.yaml "${overrides[@]}" --exp-dir "$exp" \
      --world-size "$num_gpus"
  fi
fi
if stage_selected 5; then
  for split in $(splits | tr , ' '); do
    case $split in test*) ;; *) continue ;; esac
    # shellcheck disable=SC2086
    run_stage 5 "eval.${exp#exp/}.$split" speechae evaluate "$exp" \
      --test-cuts data/targets/${prefix}_cuts_$split.jsonl.gz --lang-dir data/lang --out-dir "$exp/eval_$split" $eval_args
  done
fi
log "Finished stages $stage..$stop_stage"
