#!/usr/bin/env bash
# Bengali recipe: OpenSLR 53, Common Voice bn and/or Bengali.AI Speech -> fbank, normalised
# character (or BPE) targets + k-means units -> train (lower-resource config) -> evaluate.
# Stages 0-1 are these corpora's; stages 2-5 are the shared template (tools/ae_stages.sh).
#
#   ./run.sh --stage 0 --stop-stage 3                                 # OpenSLR 53 (downloaded)
#   ./run.sh --corpora slr53,commonvoice,bengaliai --dl-dir /data/bn  # all three (two manual downloads)
#   ./run.sh --stage 4 --stop-stage 6 --arms "none kl sigreg" --seeds "1 2 3" --world-size 4
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}
# shellcheck disable=SC1091
source "$root/tools/ae_stages.sh"

recipe_title="Bengali autoencoder recipe; see README.md"
prefix=bengali
stage_names=(download manifests)
# shared options: this recipe's defaults (lower-resource: speed perturbation, characters, 200 units)
nj=8; speed_perturb=true; model_type=char; vocab_size=500; num_clusters=200; kmeans_max_cuts=3000
model_size=S

opt_group "Corpus (stages 0-1)"
opt dl_dir download str "asr_bengali_*.zip / asr_bengali/, cv-corpus-*-bn.tar.gz / cv-corpus-*/bn/, bengaliai-speech.zip"
opt corpora slr53 str "any of slr53,commonvoice,bengaliai (comma-separated; combined into one set)"
opt slr53_parts all str "OpenSLR 53 zips to use: all, or a subset such as 0,1,2"
opt digits keep "choice:keep|spell|reject" "transcript digits (see speechae/text/bengali.py)"
opt dev_fraction 0.02 float "OpenSLR 53 has no official split: share of speakers held out for dev"
opt test_fraction 0.02 float "... and for test"

stage_0() {
  run_stage 0 download -- \
    speechae download-corpus bengali "$dl_dir" --corpora "$corpora" --slr53-parts "$slr53_parts"
}
stage_1() {
  run_stage 1 manifests --outputs data/manifests --deps "$(marker 0)" -- \
    speechae prepare-corpus bengali "$dl_dir" data/manifests --prefix "$prefix" --corpora "$corpora" \
    --digits "$digits" --dev-fraction "$dev_fraction" --test-fraction "$test_fraction" \
    --on-error "$on_error" --nj "$nj"
}

ae_main "$@"
