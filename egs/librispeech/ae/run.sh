#!/usr/bin/env bash
# LibriSpeech recipe: 960 h (or the mini parts) -> fbank, BPE + k-means targets -> train -> evaluate.
#
#   ./run.sh --stage 0 --stop-stage 3                         # data: download (~60 GB) and prepare
#   ./run.sh --dl-dir /data/corpora --stage 0 --stop-stage 3  # use a copy already on disk
#   ./run.sh --dataset-parts mini_librispeech                 # train-clean-5 + dev-clean-2 (~0.5 GB)
#   ./run.sh --stage 4 --stop-stage 5 --arm sigreg --model-size M --num-gpus 8
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}

help_message="Usage: $0 [options]   (LibriSpeech autoencoder recipe; see README.md)
Stages: 0 download | 1 manifests | 2 fbank | 3 targets | 4 train | 5 evaluate"
recipe_options="stage stop_stage nj force_stage dl_dir dataset_parts on_error speed_perturb model_type vocab_size \
 num_clusters kmeans_max_cuts arm model_size num_gpus num_nodes node_rank master_addr master_port exp_name train_args eval_args"
stage=0
stop_stage=5
nj=8                      # parallel jobs for audio checks and feature extraction
force_stage=              # redo this stage even if its .done marker exists
dl_dir=download           # holds LibriSpeech/ (or the part .tar.gz archives); downloads go here
dataset_parts=librispeech # librispeech (960 h + dev/test) | mini_librispeech | comma-separated part names
on_error=fail             # fail | skip (bad files listed in data/manifests/librispeech_skipped.txt)
speed_perturb=false       # true: add 0.9x / 1.1x copies of the training set in stage 2
model_type=bpe            # sentencepiece: bpe | unigram | char
vocab_size=500            # sentencepiece vocabulary (icefall's LibriSpeech BPE size)
num_clusters=500          # k-means units (HuBERT's 500 on LibriSpeech)
kmeans_max_cuts=3000      # fit k-means on this many random training utterances (0 = all)
arm=sigreg                # training config conf/<arm>.yaml: sigreg | kl
model_size=S              # model preset: S | M | L (Zipformer sizes)
num_gpus=1                # processes per node
num_nodes=1               # >1: run this script on every node with --node-rank (torchrun rendezvous)
node_rank=0
master_addr=localhost
master_port=29500
exp_name=                 # default: <arm>_<model_size>
train_args=               # extra key=value overrides for speechae train, e.g. "train.max_steps=1000"
eval_args=                # extra options for speechae evaluate

source "$root/tools/recipe_lib.sh" "$@"

prefix=librispeech
done_dir=data
exp=exp/${exp_name:-${arm}_${model_size}}

splits() { cat data/manifests/${prefix}_splits.txt; }

if stage_selected 0; then
  run_stage 0 download speechae download-corpus librispeech "$dl_dir" --dataset-parts "$dataset_parts"
fi
if stage_selected 1; then
  run_stage 1 manifests speechae prepare-corpus librispeech "$dl_dir" data/manifests --prefix $prefix \
    --dataset-parts "$dataset_parts" --on-error "$on_error" --nj "$nj"
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
  # shellcheck disable=SC2086  # train_args is a list of key=value words
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
  # CTC token probe (and the other probes) on every test split prepared in stage 1.
  for split in $(splits | tr , ' '); do
    case $split in test*) ;; *) continue ;; esac
    # shellcheck disable=SC2086
    run_stage 5 "eval.${exp#exp/}.$split" speechae evaluate "$exp" \
      --test-cuts data/targets/${prefix}_cuts_$split.jsonl.gz --lang-dir data/lang --out-dir "$exp/eval_$split" $eval_args
  done
fi
log "Finished stages $stage..$stop_stage"
