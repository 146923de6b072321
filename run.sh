#!/usr/bin/env bash
# The paper's study in one command (Jung et al. 2024): for every method and seed, a baseline, a Rank
# Reduction (RR) run with a constant weight and one with an RR schedule (utils/rr_schedule.py), each with
# its method's published recipe, each best checkpoint scored on the STS test sets, then analyze_rank.py
# over all runs: one folder with the report, the findings table and the plots.
#
#   bash run.sh                                     # bert-base-uncased on wiki1m, seeds 1-5 (downloads what is missing)
#   SEEDS="1 2 3" RR_WEIGHT=0.05 MODEL=roberta-base bash run.sh
#   METHODS="simcse mixcse esimcse promptbert infocse" VARIANTS="baseline rr" bash run.sh   # the paper's five
#   LAUNCH="accelerate launch --multi_gpu --num_processes 4" BATCH_SIZE=16 bash run.sh
#   TRAIN_ARGS="--unpad_inputs" MIXED_PRECISION=bf16 bash run.sh      # train.py's speed flags
#   METHODS="simcse esimcse" TRAIN_ARGS_esimcse="--queue_size 64" bash run.sh   # one method's own flags
#   SEEDS="1 2" MODEL=../shared/models/all-MiniLM-L6-v2 \
#     TRAIN_FILE=../shared/data/train/wiki1m_for_simcse.first11914.txt DATA_DIR=../shared/data \
#     MAX_STEPS=60 EVAL_STEPS=20 SAVE_STEPS=10 BATCH_SIZE=32 bash run.sh   # a short CPU study
#
# Layout: $OUT/runs/{baseline,rr,rr-schedule}-seed$S/ for SimCSE, $OUT/runs/$METHOD-{...}-seed$S/ for the
# others (train.py output folders, each with sts_test.json),
# $OUT/analysis/ (report.md, checkpoints.csv, summary.json, *.png; measurements.jsonl, so a later call measures only
# new checkpoints) and $OUT/study.settings (the settings
# below that shape the runs: a later call with other values is refused, naming the setting, so one study
# never mixes two recipes; more SEEDS, VARIANTS or METHODS may be added). Every setting can be overridden from the
# environment. A finished run (summary.json with status "finished" or "early_stopped") is not trained again and a run with
# saved training state resumes from it, so an interrupted study picks up where it stopped; a run killed
# before its first saved state is moved to $OUT/interrupted/ (out of the runs' folder) and started again.
set -euo pipefail
cd "$(dirname "$0")"

# One interpreter for every step: PYTHON, else python3 (else python) from PATH; it must import torch.
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
if ! "$PYTHON" -c "import torch, transformers, accelerate, scipy" >/dev/null 2>&1; then
  echo "run.sh: error: $PYTHON cannot import torch, transformers, accelerate and scipy; install the requirements" \
       "(README) or set PYTHON=/path/to/python" >&2
  exit 2
fi

MODEL=${MODEL:-bert-base-uncased}
TRAIN_FILE=${TRAIN_FILE:-data/wiki1m_for_simcse.txt}
DATA_DIR=${DATA_DIR:-data}
SEEDS=${SEEDS:-${SEED:-1 2 3 4 5}}     # SEED (one seed) is still understood
METHODS=${METHODS:-simcse}             # train.py --method, any of: python3 -m utils.methods list
VARIANTS=${VARIANTS:-baseline rr rr-schedule}  # baseline: no RR; rr: constant RR_WEIGHT; rr-schedule: RR_SCHEDULE
RR_WEIGHT=${RR_WEIGHT:-0.1}            # a default, not a tuned value: the paper's weight is not known to us
RR_SCHEDULE=${RR_SCHEDULE:-target}     # train.py --rr_schedule of the rr-schedule runs ...
RR_SCHEDULE_ARGS=${RR_SCHEDULE_ARGS:-} # ... and more of its flags, e.g. "--rr_patience 3 --rr_decay_steps 50"
MAX_GRAD_NORM=${MAX_GRAD_NORM:-1.0}    # the HF Trainer's default clipping, which SimCSE trains with
BATCH_SIZE=${BATCH_SIZE:-}             # empty: each method's published recipe (python -m utils.methods recipe NAME) ...
LR=${LR:-}                             # ... e.g. SimCSE batch 64, lr 3e-5, 1 epoch; PromptBERT 256, 1e-5; InfoCSE 64, 7e-6, 2
MAX_LEN=${MAX_LEN:-32}
TEMP=${TEMP:-0.05}
POOLER=${POOLER:-cls}
EPOCHS=${EPOCHS:-}
MAX_STEPS=${MAX_STEPS:-}
EVAL_STEPS=${EVAL_STEPS:-125}
PATIENCE=${PATIENCE:-0}                # train.py --early_stopping_patience: evaluations without a better STS-B dev (0: off)
SAVE_STEPS=${SAVE_STEPS:-125}          # encoder exports for analyze_rank.py (~0.44 GB each for bert-base) ...
SAVE_STEPS_UNTIL=${SAVE_STEPS_UNTIL-1000}  # ... until this step (empty: to the end); best/ and peak/ are kept too
CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-1000}
MIXED_PRECISION=${MIXED_PRECISION:-no}
LAUNCH=${LAUNCH:-$PYTHON}
TRAIN_ARGS=${TRAIN_ARGS:-}             # more train.py flags for every run, e.g. "--unpad_inputs --rank_eval_steps 25"
# TRAIN_ARGS_<method> (e.g. TRAIN_ARGS_esimcse="--queue_size 64"): more flags for that method's runs only
PROBING_DIR=${PROBING_DIR:-}           # SentEval probing files: probing accuracies in the analysis ...
PROBING_AT=${PROBING_AT:-all}          # ... at every checkpoint, or `boundaries` (step 0, rank peak, best)
PROBING_LIMIT=${PROBING_LIMIT:-}       # ... on at most N examples per split (analyze_rank.py --probing_limit)
OUT=${OUT:-runs/study-$(basename "$MODEL")}

# each seed, method and variant once (a repeated one would train into the folder it already trains)
dedupe() { printf '%s\n' $1 | awk 'NF && !seen[$0]++' | tr '\n' ' ' | sed 's/ $//'; }
for name in SEEDS METHODS VARIANTS; do
  once=$(dedupe "${!name}")
  if [ "$once" != "$(echo ${!name})" ]; then echo "run.sh: $name has a repeated value; using each once: $once"; fi
  printf -v "$name" '%s' "$once"
done

for variant in $VARIANTS; do
  case $variant in baseline|rr|rr-schedule) ;; *)
    echo "run.sh: error: VARIANTS: unknown variant '$variant' (choose from baseline rr rr-schedule)" >&2; exit 2;;
  esac
done

declare -A recipe method_args
known=$("$PYTHON" -m utils.methods list)
for method in $METHODS; do
  if ! recipe[$method]=$("$PYTHON" -m utils.methods recipe "$method" 2>/dev/null); then
    echo "run.sh: error: METHODS: unknown method '$method' (choose from $known)" >&2
    exit 2
  fi
  extra="TRAIN_ARGS_$method"
  method_args[$method]=${!extra:-}
done

# SimCSE's data, fetched only where the default paths are empty (user-given paths must exist).
# A failed download is one line: the downloader's reason and what to set instead (its log is kept).
download() {  # what, the variable to set instead, downloader arguments...
  local what=$1 instead=$2 log
  shift 2
  log=$(mktemp)
  echo "run.sh: downloading $what (utils.download $*)"
  if ! "$PYTHON" -m utils.download "$@" 2>"$log"; then
    echo "run.sh: error: could not download $what ($(grep -v '^\s*$' "$log" | tail -n 1 | sed 's/^error: //')); $instead" >&2
    exit 2
  fi
  rm -f "$log"
}
if [ ! -f "$TRAIN_FILE" ] && [ "$TRAIN_FILE" = data/wiki1m_for_simcse.txt ]; then
  download "the training text" "set TRAIN_FILE to a local file, one sentence per line" wiki1m --out_dir data
fi
if [ ! -d "$DATA_DIR/downstream" ] && [ "$DATA_DIR" = data ]; then
  download "SentEval's data" "set DATA_DIR to a SentEval data/ folder" senteval --data_dir data
fi
if [ ! -f "$TRAIN_FILE" ]; then echo "run.sh: error: TRAIN_FILE $TRAIN_FILE: no such file" >&2; exit 2; fi
if [ ! -d "$DATA_DIR/downstream" ]; then
  echo "run.sh: error: DATA_DIR $DATA_DIR has no downstream/ folder (SentEval's data/ folder is expected)" >&2; exit 2
fi
if ! model_error=$("$PYTHON" -c "import sys
from transformers import AutoConfig, AutoTokenizer
AutoConfig.from_pretrained(sys.argv[1]); AutoTokenizer.from_pretrained(sys.argv[1])" "$MODEL" 2>&1); then
  echo "run.sh: error: MODEL $MODEL cannot be loaded (a local folder with config.json and a tokenizer, or a hub" \
       "name on a machine that reaches the hub): $(echo "$model_error" | tail -n 1)" >&2
  exit 2
fi

# The settings that shape every run, recorded once: a rerun with other values would mix two recipes.
settings="MODEL=$MODEL
TRAIN_FILE=$TRAIN_FILE
DATA_DIR=$DATA_DIR
RR_WEIGHT=$RR_WEIGHT
RR_SCHEDULE=$RR_SCHEDULE
RR_SCHEDULE_ARGS=$RR_SCHEDULE_ARGS
MAX_GRAD_NORM=$MAX_GRAD_NORM
BATCH_SIZE=$BATCH_SIZE
LR=$LR
MAX_LEN=$MAX_LEN
TEMP=$TEMP
POOLER=$POOLER
EPOCHS=$EPOCHS
MAX_STEPS=$MAX_STEPS
EVAL_STEPS=$EVAL_STEPS
PATIENCE=$PATIENCE
SAVE_STEPS=$SAVE_STEPS
SAVE_STEPS_UNTIL=$SAVE_STEPS_UNTIL
MIXED_PRECISION=$MIXED_PRECISION
TRAIN_ARGS=$TRAIN_ARGS$(for method in $METHODS; do
  if [ -n "${method_args[$method]}" ]; then printf '\nTRAIN_ARGS_%s=%s' "$method" "${method_args[$method]}"; fi
done)"
mkdir -p "$OUT"
if [ -f "$OUT/study.settings" ]; then
  changed=$( (diff <(echo "$settings") "$OUT/study.settings" || true) | sed -n 's/^> \([A-Z_]*\)=.*/\1/p' | sort -u | tr '\n' ' ')
  if [ -n "$changed" ]; then
    echo "run.sh: error: $OUT holds a study with other settings ($changed); keep them, or set OUT to a new folder" \
         "($OUT/study.settings has the old values)" >&2
    exit 2
  fi
else
  echo "$settings" > "$OUT/study.settings"
fi

read -r -a train_args <<< "$TRAIN_ARGS"
run_dirs=()
failed=()
read -r -a schedule_args <<< "$RR_SCHEDULE_ARGS"
for method in $METHODS; do
 read -r -a recipe_args <<< "${recipe[$method]}"
 read -r -a own_args <<< "${method_args[$method]}"
 for seed in $SEEDS; do
  for variant in $VARIANTS; do
    dir="$OUT/runs/$variant-seed$seed"
    if [ "$method" != simcse ]; then dir="$OUT/runs/$method-$variant-seed$seed"; fi
    run_dirs+=("$dir")
    weight=0 rr_args=()
    if [ "$variant" != baseline ]; then weight=$RR_WEIGHT; fi
    if [ "$variant" = rr-schedule ]; then rr_args=(--rr_schedule "$RR_SCHEDULE" "${schedule_args[@]}"); fi
    if [ -f "$dir/summary.json" ] && grep -q -E '"status": "(finished|early_stopped)"' "$dir/summary.json"; then
      echo "run.sh: $dir is finished already; not training again"
    else
      # a run that another train.py is training (it holds the folder's lock) is never touched
      if [ -e "$dir/.lock" ] && ! flock -n "$dir/.lock" true; then
        echo "run.sh: error: $dir is being trained by another process (pid $(cat "$dir/.lock")); stopping without" \
             "touching it: run this study again once that process has ended" >&2
        exit 2
      fi
      resume=()
      if ls -d "$dir"/state/step_*[0-9] >/dev/null 2>&1; then
        resume=(--resume_from_checkpoint latest)
      elif [ -e "$dir" ]; then  # killed before its first saved state: nothing to resume from
        aside="$OUT/interrupted/$(basename "$dir")-$(date +%Y%m%d-%H%M%S)"
        echo "run.sh: $dir has no saved state to resume from; moving it to $aside and starting again"
        mkdir -p "$OUT/interrupted"
        mv "$dir" "$aside"
      fi
      echo "run.sh: training $dir ($method, seed $seed, rank reduction $weight${rr_args[*]:+, ${rr_args[*]}})"
      if ! $LAUNCH train.py "${recipe_args[@]}" \
        --model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --eval_data_dir "$DATA_DIR" --output_dir "$dir" \
        --pooler_type "$POOLER" ${BATCH_SIZE:+--per_device_train_batch_size "$BATCH_SIZE"} ${LR:+--learning_rate "$LR"} \
        --max_seq_length "$MAX_LEN" --temp "$TEMP" ${EPOCHS:+--num_train_epochs "$EPOCHS"} ${MAX_STEPS:+--max_train_steps "$MAX_STEPS"} \
        --eval_steps "$EVAL_STEPS" --early_stopping_patience "$PATIENCE" --save_steps "$SAVE_STEPS" ${SAVE_STEPS_UNTIL:+--save_steps_until "$SAVE_STEPS_UNTIL"} \
        --save_peak_checkpoint --checkpointing_steps "$CHECKPOINT_STEPS" --checkpoints_total_limit 1 \
        --mixed_precision "$MIXED_PRECISION" --max_grad_norm "$MAX_GRAD_NORM" --seed "$seed" \
        --rank-reduction "$weight" "${rr_args[@]}" "${train_args[@]}" "${own_args[@]}" "${resume[@]}"; then
        echo "run.sh: $dir failed; going on with the other runs" >&2
        failed+=("$dir")
        continue
      fi
    fi
    if [ ! -f "$dir/sts_test.json" ]; then  # the STS test sets, once per best checkpoint
      "$PYTHON" evaluate.py --model_name_or_path "$dir/best" --mode test --task_set sts --data_dir "$DATA_DIR" \
        --output_json "$dir/sts_test.json"
    fi
  done
 done
done

analysed=()
for dir in "${run_dirs[@]}"; do
  if [ -f "$dir/metrics.jsonl" ]; then analysed+=("$dir"); fi
done
if [ ${#analysed[@]} -eq 0 ]; then
  echo "run.sh: error: no run of this study has started training, so there is nothing to analyse" >&2
  exit 1
fi
"$PYTHON" analyze_rank.py --runs "${analysed[@]}" --data_dir "$DATA_DIR" --out "$OUT/analysis" \
  ${PROBING_DIR:+--probing_dir "$PROBING_DIR" --probing_at "$PROBING_AT"} ${PROBING_LIMIT:+--probing_limit "$PROBING_LIMIT"}
echo "run.sh: report in $OUT/analysis/report.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: these runs failed (rerun run.sh to resume them): ${failed[*]}" >&2
  exit 1
fi
