#!/usr/bin/env bash
# Tiny recipe: a synthetic English + Bengali corpus (espeak-ng) that runs anywhere in minutes.
# Stages 0-1 are this corpus's; stages 2-5 are the shared template (tools/ae_stages.sh).
#
#   ./run.sh                                          # all stages: arms none, kl, sigreg; seed 1
#   ./run.sh --stage 0 --stop-stage 3                 # data only
#   ./run.sh --stage 4 --stop-stage 6 --seeds "1 2 3" # the grid over three seeds
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}
# shellcheck disable=SC1091
source "$root/tools/ae_stages.sh"

recipe_title="tiny synthetic English+Bengali recipe"
prefix=mini
stage_names=(synth manifests)
# shared options: this recipe's defaults (2 CPU cores: the three arms side by side, one thread each;
# three at once finish sooner than two-then-one)
nj=2; vocab_size=256; num_clusters=50; model_size=tiny
arms="none kl sigreg"; seeds=1; parallel_jobs=3; train_threads=1
eval_args="--listen-utts 8"  # waveform judges cost ~5 CPU-s per utterance and signal

opt_group "Corpus (stages 0-1)"
opt num_speakers 12 posint "pseudo-speakers (>= 8): 2 dev and 2 test speakers are held out"
opt utts_per_speaker 34 posint "utterances per speaker (12 x 34: about 20 minutes of audio)"

stage_0() {
  run_stage 0 synth --outputs data/corpus -- \
    speechae synth-corpus data/corpus --num-speakers "$num_speakers" --utts-per-speaker "$utts_per_speaker" --nj "$nj"
}
stage_1() {
  run_stage 1 manifests --outputs data/manifests --deps "$(marker 0)" -- \
    speechae prepare-manifests data/corpus data/manifests --prefix "$prefix" --on-error "$on_error"
}

ae_main "$@"
