# The stage template shared by every recipe (like ESPnet egs2's asr.sh): everything after corpus
# preparation lives here once.  An egs/<corpus>/ae/run.sh sources this file, sets its defaults,
# declares its corpus options, defines stage_0 and stage_1 and calls ae_main:
#
#   source "$root/tools/ae_stages.sh"
#   recipe_title="..."; prefix=mycorpus; stage_names=(download manifests)
#   nj=4; model_size=S; ...                                   # this recipe's defaults
#   opt dl_dir download str "where the corpus is downloaded"  # corpus options (stages 0-1)
#   stage_0() { run_stage 0 download -- speechae download-corpus ...; }
#   stage_1() { run_stage 1 manifests --outputs data/manifests --deps "$(marker 0)" -- ...; }
#   ae_main "$@"
#
# Stage 1 must write data/manifests/<prefix>_{recordings,supervisions}_<split>.jsonl.gz (and may
# write <prefix>_splits.txt: comma-separated split names, training split first; default
# train,dev,test).  The shared stages:
#
#   2 fbank    speechae compute-fbank    data/manifests -> data/fbank
#   3 targets  speechae prepare-targets  data/fbank -> data/lang (sentencepiece, phones, k-means),
#                                        data/targets (cuts with k-means units)
#   4 train    the experiment grid, --arms x --seeds [x --reg-weights] [x --fractions]: one
#              `speechae train conf/arms/<arm>.yaml` per run into exp/<tag>_<arm>_s<seed>[_w<w>]
#              [_frac<f>], --parallel-jobs at a time; each run is independent (--only-runs)
#   5 vocoder  `speechae train conf/vocoder.yaml` into exp/vocoder: a neural vocoder trained on
#              the ground-truth fbank of the training split (the features the autoencoder
#              reconstructs), so every arm can be listened to and judged on waveforms;
#              --vocoder false skips it (Griffin-Lim previews)
#   6 evaluate speechae evaluate per run and test split (exp/<run>/eval for the first test split,
#              exp/<run>/eval_<split> for others; with exp/vocoder, also waveform metrics and
#              example wavs), then speechae compare of every run -> exp/compare
#
# Every stage keeps a marker that records its inputs (see tools/recipe_lib.sh): changed options,
# configs or earlier stages rerun it, and a failed stage leaves the previous outputs in place.

# shellcheck disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/recipe_lib.sh"

last_stage=6

opt_group "Stages"
opt stage 0 "int:0-$last_stage" "first stage to run"
opt stop_stage $last_stage "int:0-$last_stage" "last stage to run"
opt force_stage "" "ints:0-$last_stage" "rerun these stages even when up to date (later stages that read them rerun too)"
opt nj 2 posint "parallel processes in the data stages"

opt_group "Data (stages 1-3)"
opt on_error fail "choice:fail|skip" "bad audio/transcripts: stop, or skip them (listed in data/manifests/<prefix>_skipped.txt)"
opt speed_perturb false bool "stage 2: add 0.9x and 1.1x copies of the training split"
opt model_type unigram "choice:unigram|bpe|char" "stage 3: sentencepiece model type"
opt vocab_size 256 posint "stage 3: sentencepiece vocabulary size (upper bound)"
opt num_clusters 50 posint "stage 3: k-means units of the masked-unit objective (also losses.masked_units.num_classes)"
opt kmeans_max_cuts 0 uint "stage 3: fit k-means on this many random training utterances (0: all)"

opt_group "Experiment grid (stages 4-5)"
opt model_size S "choice:tiny|S|M|L" "model preset (model.preset); also the run names' tag"
opt tag "" str "run names start with this instead of the model size"
opt arms "none kl sigreg" words "regularizer arms: conf/arms/<arm>.yaml each"
opt seeds "1" ints "seeds: one run per seed (train.seed and data.seed)"
opt reg_weights "" floats "sweep the regularizer weight (losses.weights.<arm>): one run per weight (_w<weight>); arm none is not swept"
opt fractions "" floats "also train on these fractions of the training split (data.train_fraction; _frac<f>)"
opt only_runs "" words "train/evaluate only these runs (names or patterns such as 'S_kl_*'): spread a grid over machines"
opt list_runs false bool "print the grid (one run per line: name, config, overrides) and exit"
opt parallel_jobs 1 posint "runs trained or evaluated at the same time"
opt train_threads "" "uint?" "torch threads per training/evaluation process (empty: the config's)"
opt train_overrides "" str "extra key=value config overrides for every run, e.g. 'train.max_steps=20'"
opt vocoder true bool "stage 5: train a neural vocoder (conf/vocoder.yaml) for listening and waveform metrics"
opt vocoder_overrides "" str "extra key=value overrides of the vocoder config, e.g. 'train.max_steps=2000'"
opt eval_args "" str "extra speechae evaluate options, e.g. '--baselines fbank,mfcc --stacks'"

opt_group "Distributed training (stage 4)"
opt world_size 1 posint "processes per node for each run (DDP over GPUs; gloo processes on CPU)"
opt num_nodes 1 posint ">1: run this script on every node with its --node-rank (torchrun rendezvous)"
opt node_rank 0 uint "this node's rank (multi-node)"
opt master_addr localhost str "rendezvous host (multi-node)"
opt master_port 29500 posint "rendezvous port (multi-node)"

stage_names=(corpus manifests)

marker() {
  # marker N: the .done marker of data stage N (0-3).
  local names=("${stage_names[0]}" "${stage_names[1]}" fbank targets)
  echo "data/.stage$1.${names[$1]}.done"
}

stage_selected() {
  # True when stage $1 lies in [--stage, --stop-stage].
  [ "$1" -ge "$stage" ] && [ "$1" -le "$stop_stage" ]
}

splits() {
  # The split names written by stage 1 (comma-separated, training split first).
  local f=data/manifests/${prefix}_splits.txt
  if [ -f "$f" ]; then head -n 1 "$f"; else echo "train,dev,test"; fi
}

# ---------------------------------------------------------------------------------------------
# Stages 2-3

stage_2() {
  local sp=--no-speed-perturb
  [ "$speed_perturb" = true ] && sp=--speed-perturb
  run_stage 2 fbank --outputs data/fbank --deps "$(marker 1)" -- \
    speechae compute-fbank data/manifests data/fbank --prefix "$prefix" --splits "$(splits)" --nj "$nj" $sp
}

stage_3() {
  run_stage 3 targets --outputs "data/lang data/targets" --deps "$(marker 2)" -- \
    speechae prepare-targets data/fbank data/lang data/targets --prefix "$prefix" --splits "$(splits)" \
    --model-type "$model_type" --vocab-size "$vocab_size" --num-clusters "$num_clusters" \
    --kmeans-max-cuts "$kmeans_max_cuts"
}

# ---------------------------------------------------------------------------------------------
# The experiment grid

declare -ga grid_runs=()
declare -gA grid_arm=() grid_overrides=()

_weight_override() {
  # losses.weights.<arm>=W, or .end=W when the arm writes its weight as a schedule mapping.
  local arm=$1 w=$2 f=conf/arms/$1.yaml
  if grep -Eq "^[[:space:]]+$arm:[[:space:]]*(\{|$)" "$f"; then
    echo "losses.weights.$arm.end=$w"
  else
    echo "losses.weights.$arm=$w"
  fi
}

_grid() {
  # Fill grid_runs (names), grid_arm and grid_overrides from --arms/--seeds/--reg-weights/--fractions.
  local t=${tag:-$model_size} arm seed w f name ov
  local -a weights fracs
  for arm in $arms; do
    weights=("")
    [ -n "$reg_weights" ] && [ "$arm" != none ] && read -r -a weights <<< "$reg_weights"
    fracs=("")
    for f in $fractions; do [ "$f" = 1 ] || fracs+=("$f"); done
    for seed in $seeds; do
      for w in "${weights[@]}"; do
        for f in "${fracs[@]}"; do
          name=${t}_${arm}_s$seed${w:+_w$w}${f:+_frac$f}
          ov="train.seed=$seed data.seed=$seed"
          [ -n "$w" ] && ov+=" $(_weight_override "$arm" "$w")"
          [ -n "$f" ] && ov+=" data.train_fraction=$f"
          grid_runs+=("$name"); grid_arm[$name]=$arm; grid_overrides[$name]=$ov
        done
      done
    done
  done
}

_selected_run() {
  # True when run $1 passes --only-runs.
  local p
  [ -n "$only_runs" ] || return 0
  for p in $only_runs; do
    # shellcheck disable=SC2254
    case $1 in $p) return 0 ;; esac
  done
  return 1
}

_train_overrides() {
  # Every override of run $1, in order (later ones win): recipe, grid, --train-overrides.
  echo "model.preset=$model_size losses.masked_units.num_classes=$num_clusters ${grid_overrides[$1]}" \
       "${train_threads:+train.num_threads=$train_threads} $train_overrides"
}

_train_job() {
  local run=$1 arm=${grid_arm[$1]} config=conf/arms/${grid_arm[$1]}.yaml
  local -a ov launch
  read -r -a ov <<< "$(_train_overrides "$run")"
  if [ "$num_nodes" -gt 1 ]; then
    launch=(torchrun --nnodes "$num_nodes" --node-rank "$node_rank" --nproc-per-node "$world_size"
            --master-addr "$master_addr" --master-port "$master_port" "$(command -v speechae)" train)
  else
    launch=(speechae train)
    [ "$world_size" -gt 1 ] && ov+=(--world-size "$world_size")
  fi
  if [ "$num_nodes" -gt 1 ] && [ "$node_rank" -gt 0 ]; then
    # other nodes join the rendezvous; node 0 keeps the markers
    log "Stage 4 (train $run): node $node_rank joins"
    run_cmd "${launch[@]}" "$config" --exp-dir "exp/$run" "${ov[@]}"
    return
  fi
  stage_job 4 train --marker "exp/$run/.stage4.train.done" --outputs "exp/$run" --deps "$(marker 3)" \
    --inputs "$(_config_chain "$config" | tr '\n' ' ')" --resume --tag "$run" -- \
    "${launch[@]}" "$config" --exp-dir "exp/$run" "${ov[@]}"
}

stage_4() {
  local run jobs=$parallel_jobs
  local -a runs=()
  for run in "${grid_runs[@]}"; do _selected_run "$run" && runs+=("$run"); done
  [ "$num_nodes" -gt 1 ] && jobs=1
  log "Stage 4: ${#runs[@]} run(s), $jobs at a time: ${runs[*]}"
  run_jobs "$jobs" _train_job "${runs[@]}" || die "Stage 4: some runs did not finish (see above); rerun to resume them"
  for run in "${runs[@]}"; do
    log "exp/$run: $(ls "exp/$run/checkpoints" 2>/dev/null | tr '\n' ' ')"
  done
}

_test_splits() {
  local s out=()
  for s in $(splits | tr , ' '); do case $s in test*) out+=("$s") ;; esac; done
  [ ${#out[@]} -gt 0 ] || die "no test split in $(splits) (data/manifests/${prefix}_splits.txt)"
  echo "${out[*]}"
}

_eval_job() {
  # item: RUN:SPLIT; the first test split goes to exp/<run>/eval (what compare reads)
  local run=${1%%:*} split=${1#*:} first name train
  local -a all dev=()
  read -r -a all <<< "$(splits | tr , ' ')"
  train=${all[0]}
  first=$(_test_splits); first=${first%% *}
  name=eval; [ "$split" = "$first" ] || name=eval_$split
  case " ${all[*]} " in *" dev "*) dev=(--dev-cuts "data/targets/${prefix}_cuts_dev.jsonl.gz") ;; esac
  local -a extra voc
  read -r -a extra <<< "$eval_args"
  read -r -a voc <<< "$(_vocoder_args)"
  stage_job 6 "$name" --marker "exp/$run/.stage6.$name.done" --outputs "exp/$run/$name" \
    --deps "exp/$run/.stage4.train.done ${voc[1]:+exp/vocoder/.stage5.vocoder.done}" --tag "$run" -- \
    speechae evaluate "exp/$run" --test-cuts "data/targets/${prefix}_cuts_$split.jsonl.gz" \
    --train-cuts "data/targets/${prefix}_cuts_$train.jsonl.gz" "${dev[@]}" --lang-dir data/lang \
    --out-dir "exp/$run/$name" ${train_threads:+--num-threads "$train_threads"} "${voc[@]}" "${extra[@]}"
}

stage_5() {
  if [ "$vocoder" != true ]; then
    log "Stage 5: --vocoder false: no vocoder (evaluation uses Griffin-Lim for its example wavs)"
    return 0
  fi
  local -a ov
  read -r -a ov <<< "data.train_cuts=data/fbank/${prefix}_cuts_$(splits | cut -d, -f1).jsonl.gz $(_dev_override) \
${train_threads:+train.num_threads=$train_threads} $vocoder_overrides"
  run_stage 5 vocoder --marker exp/vocoder/.stage5.vocoder.done --outputs exp/vocoder --deps "$(marker 2)" \
    --inputs "$(_config_chain conf/vocoder.yaml | tr '\n' ' ')" --resume -- \
    speechae train conf/vocoder.yaml --exp-dir exp/vocoder "${ov[@]}" \
    || die "Stage 5: vocoder training did not finish; rerun to resume it"
}

_dev_override() {
  # data.dev_cuts of the vocoder: the dev split's fbank cuts, or none
  case ",$(splits)," in *,dev,*) echo "data.dev_cuts=data/fbank/${prefix}_cuts_dev.jsonl.gz" ;; *) echo "data.dev_cuts=" ;; esac
}

_vocoder_args() {
  # --vocoder exp/vocoder once stage 5 has finished it
  if [ "$vocoder" = true ] && [ -f exp/vocoder/.stage5.vocoder.done ]; then echo "--vocoder exp/vocoder"; fi
}

stage_6() {
  local run split why
  local -a items=() done_runs=() missing=()
  for run in "${grid_runs[@]}"; do
    _selected_run "$run" || continue
    for split in $(_test_splits); do items+=("$run:$split"); done
  done
  log "Stage 6: ${#items[@]} evaluation(s), $parallel_jobs at a time"
  run_jobs "$parallel_jobs" _eval_job "${items[@]}" || die "Stage 6: some evaluations failed (see above)"
  for run in "${grid_runs[@]}"; do
    if why=$(marker_fresh "exp/$run/.stage6.eval.done"); then done_runs+=("exp/$run"); else missing+=("$run"); fi
  done
  [ ${#missing[@]} -eq 0 ] || log "Stage 6: not in the comparison (not evaluated yet): ${missing[*]}"
  # cheap, and must follow any re-evaluation: no marker
  run_cmd speechae compare "${done_runs[@]}" --out-dir exp/compare
  log "Stage 6: reports in exp/<run>/eval/report.md, comparison in exp/compare/compare.md"
}

# ---------------------------------------------------------------------------------------------

_check_options() {
  local a f known p run ok
  [ "$stop_stage" -ge "$stage" ] || _po_error "--stop-stage $stop_stage is before --stage $stage"
  [ -n "$arms" ] || _po_error "--arms: give at least one arm"
  [ -n "$seeds" ] || _po_error "--seeds: give at least one seed"
  known=$(cd conf/arms 2>/dev/null && ls -- *.yaml 2>/dev/null | sed 's/\.yaml$//' | paste -sd ' ')
  for a in $arms; do
    [ -f "conf/arms/$a.yaml" ] || _po_error "--arms: unknown arm '$a' (conf/arms/ has: ${known:-nothing})"
  done
  for f in $fractions; do
    awk -v f="$f" 'BEGIN { exit !(f > 0 && f <= 1) }' || _po_error "--fractions: $f is not in (0, 1]"
  done
  [ "$node_rank" -lt "$num_nodes" ] || _po_error "--node-rank $node_rank: must be below --num-nodes $num_nodes"
  if [ "$num_nodes" -gt 1 ] && { [ "$stage" -ne 4 ] || [ "$stop_stage" -ne 4 ]; }; then
    _po_error "--num-nodes > 1: run the data stages and stages 5-6 on one node; here use --stage 4 --stop-stage 4"
  fi
  _grid
  for p in $only_runs; do
    ok=false
    # shellcheck disable=SC2254
    for run in "${grid_runs[@]}"; do case $run in $p) ok=true ;; esac; done
    $ok || _po_error "--only-runs: '$p' matches no run of the grid (${grid_runs[*]})"
  done
}

_list_runs() {
  local run
  for run in "${grid_runs[@]}"; do
    _selected_run "$run" || continue
    # shellcheck disable=SC2046
    echo "$run conf/arms/${grid_arm[$run]}.yaml" $(_train_overrides "$run")
  done
}

_check_earlier_stages() {
  # Stages before --stage are not rerun; say so when the current options would change them.
  local s
  for ((s = 0; s < stage && s <= 3; s++)); do
    _dry=1 "stage_$s"
  done
}

ae_main() {
  # Parse the command line, then run the selected stages.
  help_message="Usage: ./run.sh [options]   ($recipe_title)
Stages: 0 ${stage_names[0]} | 1 ${stage_names[1]} | 2 fbank | 3 targets | 4 train (grid) | 5 vocoder | 6 evaluate + compare
  ./run.sh                  all stages with the defaults below
  ./run.sh --stage 4 --stop-stage 6 --arms \"none kl sigreg\" --seeds \"1 2 3\" [--reg-weights \"0.01 0.05\"]
A stage reruns when its options, configs or input stages changed; --force-stage N reruns it anyway.
Options (default in brackets):"
  parse_options "$@"
  _check_options
  if [ "$list_runs" = true ]; then
    _list_runs
    exit 0
  fi
  activate_env
  log "$0: stages $stage-$stop_stage (${#grid_runs[@]} run(s) in the grid)"
  _check_earlier_stages
  local s
  for ((s = stage; s <= stop_stage; s++)); do
    "stage_$s"
  done
  log "Finished stages $stage..$stop_stage"
}
