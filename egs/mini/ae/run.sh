#!/usr/bin/env bash
# Tiny recipe: a synthetic English + Bengali corpus (espeak-ng) that runs anywhere in minutes.
#
#   ./run.sh                          # all stages
#   ./run.sh --stage 0 --stop-stage 3 # data only
#   ./run.sh --help
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
root=${SPEECHAE_ROOT:-$(cd ../../.. && pwd)}

help_message="Usage: $0 [options]   (tiny synthetic English+Bengali recipe)
Stages: 0 synthesize corpus | 1 manifests | 2 fbank | 3 targets | 4 train | 5 evaluate"
recipe_options="stage stop_stage nj force_stage num_speakers utts_per_speaker on_error vocab_size num_clusters arms parallel_arms train_threads world_size train_overrides"
stage=0
stop_stage=5
nj=2                     # parallel jobs for synthesis and feature extraction
force_stage=             # redo this stage even if its .done marker exists
num_speakers=12          # pseudo-speakers; 2 dev + 2 test speakers are held out
utts_per_speaker=34      # 12 x 34 utterances ~ 20 minutes of audio
on_error=fail            # fail | skip (bad audio/transcripts listed in data/manifests/mini_skipped.txt)
vocab_size=256           # sentencepiece vocabulary (upper bound)
num_clusters=50          # k-means units for the masked-unit objective
arms="sigreg kl"         # stage 4: one experiment per conf/<arm>.yaml
parallel_arms=true       # train the arms at the same time (one thread each) or one after another
train_threads=1          # torch threads per training process
world_size=1             # >1: DDP processes per arm on this node (torchrun, gloo on CPU)
train_overrides=         # extra key=value config overrides for every arm, e.g. "train.max_steps=20"

source "$root/tools/recipe_lib.sh" "$@"

prefix=mini
done_dir=data

if stage_selected 0; then
  run_stage 0 synth speechae synth-corpus data/corpus \
    --num-speakers "$num_speakers" --utts-per-speaker "$utts_per_speaker" --nj "$nj"
fi
if stage_selected 1; then
  run_stage 1 manifests speechae prepare-manifests data/corpus data/manifests --prefix $prefix --on-error "$on_error"
fi
if stage_selected 2; then
  run_stage 2 fbank speechae compute-fbank data/manifests data/fbank --prefix $prefix --nj "$nj"
fi
if stage_selected 3; then
  run_stage 3 targets speechae prepare-targets data/fbank data/lang data/targets --prefix $prefix \
    --vocab-size "$vocab_size" --num-clusters "$num_clusters"
fi
if stage_selected 4; then
  # Arms that differ only in the regularizer (conf/<arm>.yaml -> exp/tiny_<arm>).  With
  # parallel_arms=true they train side by side, one thread each (2 cores: ~8 min in all).
  # Re-running resumes an interrupted arm; exp/tiny_<arm>/.stage4.train.done marks a finished one.
  pids=()
  for arm in $arms; do
    (
      done_dir=exp/tiny_$arm
      ws_args=(); [ "$world_size" -gt 1 ] && ws_args=(--world-size "$world_size")
      # shellcheck disable=SC2086
      run_stage 4 train speechae train "conf/$arm.yaml" --exp-dir "exp/tiny_$arm" "${ws_args[@]}" \
        train.num_threads="$train_threads" $train_overrides 2>&1 | sed -u "s/^/[$arm] /"
    ) &
    pids+=($!)
    [ "$parallel_arms" = true ] || wait "${pids[-1]}"
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  for arm in $arms; do
    log "exp/tiny_$arm: $(ls exp/tiny_$arm/checkpoints | tr '\n' ' ')"
  done
fi
if stage_selected 5; then
  # Evaluate each arm (running-average weights) beside the fbank / MFCC / random-init /
  # mean-spectrum baselines -> exp/tiny_<arm>/eval/{metrics.json,report.md,*.png}, then compare
  # the arms -> exp/compare/ (SIGReg vs KL).  Sized for 2 CPU cores (~3 min per arm): small
  # probes, K=50, subsampled ABX.  Variables (set them in a --config file or the environment):
  #   eval_args   extra `speechae evaluate` options, e.g. "--baselines fbank,hf:/models/hubert --stacks"
  #   fractions   data-efficiency sweep, e.g. "0.25 0.5": trains exp/tiny_<arm>_frac<f> on that
  #               fraction of the training cuts (data.train_fraction), evaluates it, and
  #               `speechae compare` plots metrics against the fraction (exp/compare/data_efficiency.png).
  eval_args=${eval_args:-}
  fractions=${fractions:-}
  eval_threads=${train_threads:-1}
  exps=()
  for arm in $arms; do
    exps+=("exp/tiny_$arm")
    for f in $fractions; do
      (
        done_dir=exp/tiny_${arm}_frac$f
        # shellcheck disable=SC2086
        run_stage 5 train speechae train "conf/$arm.yaml" --exp-dir "exp/tiny_${arm}_frac$f" \
          train.num_threads="$eval_threads" data.train_fraction="$f" ${train_overrides:-}
      )
      exps+=("exp/tiny_${arm}_frac$f")
    done
  done
  pids=()
  for exp in "${exps[@]}"; do
    (
      done_dir=$exp
      # shellcheck disable=SC2086
      run_stage 5 eval speechae evaluate "$exp" --num-threads "$eval_threads" $eval_args 2>&1 | sed -u "s|^|[$exp] |"
    ) &
    pids+=($!)
    # two evaluations at a time with parallel_arms=true (one per core), else one
    if [ "${parallel_arms:-true}" != true ] || [ $(( ${#pids[@]} % 2 )) -eq 0 ]; then
      for pid in "${pids[@]}"; do wait "$pid"; done
      pids=()
    fi
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  # cheap and must follow any re-evaluation, so no .done marker
  speechae compare "${exps[@]}" --out-dir exp/compare
  log "Stage 5: reports in exp/*/eval/report.md, comparison in exp/compare/compare.md"
fi
log "Finished stages $stage..$stop_stage"
