#!/usr/bin/env bash
# The paper's study in one command (Jung et al. 2024): for every seed, an unsupervised-SimCSE baseline and
# a Rank Reduction (RR) run with SimCSE's recipe, each best checkpoint scored on the STS test sets, then
# analyze_rank.py over all runs: one folder with the report, the tables and the plots.
#
#   bash run.sh                                     # bert-base-uncased on wiki1m, seeds 1-5 (downloads what is missing)
#   SEEDS="1 2 3" RR_WEIGHT=0.05 MODEL=roberta-base bash run.sh
#   LAUNCH="accelerate launch --multi_gpu --num_processes 4" BATCH_SIZE=16 bash run.sh
#   TRAIN_ARGS="--unpad_inputs" MIXED_PRECISION=bf16 bash run.sh      # train.py's speed flags
#   SEEDS="1 2" MODEL=../shared/models/all-MiniLM-L6-v2 \
#     TRAIN_FILE=../shared/data/train/wiki1m_for_simcse.first11914.txt DATA_DIR=../shared/data \
#     MAX_STEPS=60 EVAL_STEPS=20 SAVE_STEPS=10 BATCH_SIZE=32 bash run.sh   # a short CPU study
#
# Layout: $OUT/runs/{baseline,rr}-seed$S/ (train.py output folders, each with sts_test.json) and
# $OUT/analysis/ (report.md, checkpoints.csv, summary.json, *.png). Every setting below can be overridden
# from the environment. A finished run (summary.json with status "finished") is not trained again and a
# run with saved training state resumes from it, so an interrupted study picks up where it stopped; a
# run killed before its first saved state is moved to <run>.interrupted and started again.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-bert-base-uncased}
TRAIN_FILE=${TRAIN_FILE:-data/wiki1m_for_simcse.txt}
DATA_DIR=${DATA_DIR:-data}
SEEDS=${SEEDS:-${SEED:-1 2 3 4 5}}     # SEED (one seed) is still understood
RR_WEIGHT=${RR_WEIGHT:-0.1}            # a default, not a tuned value: the paper's weight is not known to us
BATCH_SIZE=${BATCH_SIZE:-64}
LR=${LR:-3e-5}
MAX_LEN=${MAX_LEN:-32}
TEMP=${TEMP:-0.05}
POOLER=${POOLER:-cls}
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-}
EVAL_STEPS=${EVAL_STEPS:-125}
SAVE_STEPS=${SAVE_STEPS:-125}          # encoder exports for analyze_rank.py (~0.44 GB each for bert-base) ...
SAVE_STEPS_UNTIL=${SAVE_STEPS_UNTIL-1000}  # ... until this step (empty: to the end); best/ and peak/ are kept too
CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-1000}
MIXED_PRECISION=${MIXED_PRECISION:-no}
LAUNCH=${LAUNCH:-python}
TRAIN_ARGS=${TRAIN_ARGS:-}             # more train.py flags for every run, e.g. "--unpad_inputs --rank_eval_steps 25"
PROBING_DIR=${PROBING_DIR:-}           # SentEval probing files: probing accuracies in the analysis ...
PROBING_AT=${PROBING_AT:-all}          # ... at every checkpoint, or `boundaries` (step 0, rank peak, best)
OUT=${OUT:-runs/study-$(basename "$MODEL")}

# SimCSE's data, fetched only where the default paths are empty (user-given paths must exist).
if [ ! -f "$TRAIN_FILE" ] && [ "$TRAIN_FILE" = data/wiki1m_for_simcse.txt ]; then
  python -m utils.download wiki1m --out_dir data
fi
if [ ! -d "$DATA_DIR/downstream" ] && [ "$DATA_DIR" = data ]; then
  python -m utils.download senteval --data_dir data
fi

read -r -a train_args <<< "$TRAIN_ARGS"
run_dirs=()
failed=()
for seed in $SEEDS; do
  for variant in baseline rr; do
    dir="$OUT/runs/$variant-seed$seed"
    run_dirs+=("$dir")
    weight=0
    if [ "$variant" = rr ]; then weight=$RR_WEIGHT; fi
    if [ -f "$dir/summary.json" ] && grep -q '"status": "finished"' "$dir/summary.json"; then
      echo "run.sh: $dir is finished already; not training again"
    else
      resume=()
      if ls -d "$dir"/state/step_*[0-9] >/dev/null 2>&1; then
        resume=(--resume_from_checkpoint latest)
      elif [ -e "$dir" ]; then  # killed before its first saved state: nothing to resume from
        echo "run.sh: $dir has no saved state to resume from; moving it to $dir.interrupted and starting again"
        rm -rf "$dir.interrupted"
        mv "$dir" "$dir.interrupted"
      fi
      echo "run.sh: training $dir (seed $seed, rank reduction $weight)"
      if ! $LAUNCH train.py \
        --model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --eval_data_dir "$DATA_DIR" --output_dir "$dir" \
        --pooler_type "$POOLER" --per_device_train_batch_size "$BATCH_SIZE" --learning_rate "$LR" \
        --max_seq_length "$MAX_LEN" --temp "$TEMP" --num_train_epochs "$EPOCHS" ${MAX_STEPS:+--max_train_steps "$MAX_STEPS"} \
        --eval_steps "$EVAL_STEPS" --save_steps "$SAVE_STEPS" ${SAVE_STEPS_UNTIL:+--save_steps_until "$SAVE_STEPS_UNTIL"} \
        --save_peak_checkpoint --checkpointing_steps "$CHECKPOINT_STEPS" --checkpoints_total_limit 1 \
        --mixed_precision "$MIXED_PRECISION" --seed "$seed" --rank-reduction "$weight" "${train_args[@]}" "${resume[@]}"; then
        echo "run.sh: $dir failed; going on with the other runs" >&2
        failed+=("$dir")
        continue
      fi
    fi
    if [ ! -f "$dir/sts_test.json" ]; then  # the STS test sets, once per best checkpoint
      python evaluate.py --model_name_or_path "$dir/best" --mode test --task_set sts --data_dir "$DATA_DIR" \
        --output_json "$dir/sts_test.json"
    fi
  done
done

analysed=()
for dir in "${run_dirs[@]}"; do
  if [ -f "$dir/metrics.jsonl" ]; then analysed+=("$dir"); fi
done
python analyze_rank.py --runs "${analysed[@]}" --data_dir "$DATA_DIR" --out "$OUT/analysis" \
  ${PROBING_DIR:+--probing_dir "$PROBING_DIR" --probing_at "$PROBING_AT"}
echo "run.sh: report in $OUT/analysis/report.md"
if [ ${#failed[@]} -gt 0 ]; then
  echo "run.sh: these runs failed (rerun run.sh to resume them): ${failed[*]}" >&2
  exit 1
fi
