#!/usr/bin/env bash
# LibriSpeech recipe: 960 h (or the mini parts) -> fbank, BPE + k-means targets -> train -> evaluate.
# Stages 0-1 are this corpus's; stages 2-5 are the shared template (tools/ae_stages.sh).
#
#   ./run.sh --stage 0 --stop-stage 3                         # data: download (~60 GB) and prepare
#   ./run.sh --dl-dir /data/corpora --stage 0 --stop-stage 3  # use a copy already on disk
#   ./run.sh --dataset-parts mini_librispeech                 # train-clean-5 + dev-clean-2 (~0.5 GB)
#   ./run.sh --stage 4 --stop-stage 6 --arms "none kl sigreg" --seeds "1 2 3" --model-size M --world-size 8
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}
# shellcheck disable=SC1091
source "$root/tools/ae_stages.sh"

recipe_title="LibriSpeech autoencoder recipe; see README.md"
prefix=librispeech
stage_names=(download manifests)
# shared options: this recipe's defaults
nj=8; model_type=bpe; vocab_size=500; num_clusters=500; kmeans_max_cuts=3000; model_size=S

opt_group "Corpus (stages 0-1)"
opt dl_dir download str "holds LibriSpeech/ (or the part .tar.gz archives); downloads go here"
opt dataset_parts librispeech str "librispeech (960 h + dev/test) | mini_librispeech | comma-separated part names"

stage_0() {
  run_stage 0 download -- speechae download-corpus librispeech "$dl_dir" --dataset-parts "$dataset_parts"
}
stage_1() {
  run_stage 1 manifests --outputs data/manifests --deps "$(marker 0)" -- \
    speechae prepare-corpus librispeech "$dl_dir" data/manifests --prefix "$prefix" \
    --dataset-parts "$dataset_parts" --on-error "$on_error" --nj "$nj"
}

ae_main "$@"
