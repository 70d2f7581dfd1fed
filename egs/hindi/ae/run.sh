#!/usr/bin/env bash
# Hindi recipe (made by tools/new_recipe.sh hindi): stage 0 synthesizes a small Hindi corpus with
# espeak-ng (local/prepare.sh writes data/local/utterances.tsv), stage 1 validates it into
# manifests; stages 2-5 are the shared template (tools/ae_stages.sh).  See README.md.
#
#   ./run.sh                                                    # all stages
#   ./run.sh --model-size tiny --train-overrides "train.max_steps=4"  # a quick check on a CPU
#   ./run.sh --stage 4 --stop-stage 6 --arms "none kl sigreg" --seeds "1 2 3"
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}
# shellcheck disable=SC1091
source "$root/tools/ae_stages.sh"

recipe_title="synthetic Hindi recipe (espeak-ng)"
prefix=hindi
stage_names=(prepare manifests)
# shared options: defaults for a small corpus
nj=2; model_type=char; vocab_size=500; num_clusters=100; kmeans_max_cuts=3000; model_size=S

opt_group "Corpus (stages 0-1)"
opt num_speakers 8 posint "pseudo-speakers (>= 3): the last two are dev and test"
opt utts_per_speaker 6 posint "utterances per speaker (sentences: local/sentences_hi.txt)"
opt language hi str "language code stored in the manifests"
opt normalize none str "transcript normaliser: none | lower | bengali (add yours in speechae/text/)"

stage_0() {
  run_stage 0 prepare --outputs data/local --inputs "$(echo local/*)" -- \
    local/prepare.sh data/local "$num_speakers" "$utts_per_speaker"
}
stage_1() {
  run_stage 1 manifests --outputs data/manifests --deps "$(marker 0)" -- \
    speechae prepare-corpus tsv data/local/utterances.tsv data/manifests --prefix "$prefix" \
    --normalize "$normalize" --language "$language" --on-error "$on_error" --nj "$nj"
}

ae_main "$@"
