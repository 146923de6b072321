#!/usr/bin/env bash
# Unsupervised SimCSE with SimCSE's recipe, then the STS test evaluation of the best checkpoint.
#
#   bash run.sh                                     # bert-base-uncased on wiki1m (downloads what is missing)
#   MODEL=roberta-base SEED=1 bash run.sh
#   LAUNCH="accelerate launch --multi_gpu --num_processes 4" BATCH_SIZE=16 bash run.sh
#   MODEL=../shared/models/all-MiniLM-L6-v2 TRAIN_FILE=../shared/data/train/wiki1m_for_simcse.first11914.txt \
#     DATA_DIR=../shared/data MAX_STEPS=50 EVAL_STEPS=25 bash run.sh   # a short CPU run
#
# Every setting below can be overridden from the environment. A finished run (summary.json present) is not
# trained again, and a run with saved training state resumes from its latest state.
set -euo pipefail
cd "$(dirname "$0")"

MODEL=${MODEL:-bert-base-uncased}
TRAIN_FILE=${TRAIN_FILE:-data/wiki1m_for_simcse.txt}
DATA_DIR=${DATA_DIR:-data}
SEED=${SEED:-42}
BATCH_SIZE=${BATCH_SIZE:-64}
LR=${LR:-3e-5}
MAX_LEN=${MAX_LEN:-32}
TEMP=${TEMP:-0.05}
POOLER=${POOLER:-cls}
EPOCHS=${EPOCHS:-1}
MAX_STEPS=${MAX_STEPS:-}
EVAL_STEPS=${EVAL_STEPS:-125}
CHECKPOINT_STEPS=${CHECKPOINT_STEPS:-1000}
MIXED_PRECISION=${MIXED_PRECISION:-no}
LAUNCH=${LAUNCH:-python}
OUT=${OUT:-runs/unsup-simcse-$(basename "$MODEL")-seed$SEED}

# SimCSE's data, fetched only where the default paths are empty (user-given paths must exist).
if [ ! -f "$TRAIN_FILE" ] && [ "$TRAIN_FILE" = data/wiki1m_for_simcse.txt ]; then
  python -m utils.download wiki1m --out_dir data
fi
if [ ! -d "$DATA_DIR/downstream" ] && [ "$DATA_DIR" = data ]; then
  python -m utils.download senteval --data_dir data
fi

if [ -f "$OUT/summary.json" ]; then
  echo "run.sh: $OUT is finished already; not training again"
else
  resume=()
  if [ -d "$OUT/state" ] && [ -n "$(ls "$OUT/state")" ]; then resume=(--resume_from_checkpoint latest); fi
  $LAUNCH train.py \
    --model_name_or_path "$MODEL" --train_file "$TRAIN_FILE" --eval_data_dir "$DATA_DIR" --output_dir "$OUT" \
    --pooler_type "$POOLER" --per_device_train_batch_size "$BATCH_SIZE" --learning_rate "$LR" \
    --max_seq_length "$MAX_LEN" --temp "$TEMP" --num_train_epochs "$EPOCHS" ${MAX_STEPS:+--max_train_steps "$MAX_STEPS"} \
    --eval_steps "$EVAL_STEPS" --checkpointing_steps "$CHECKPOINT_STEPS" --checkpoints_total_limit 1 \
    --mixed_precision "$MIXED_PRECISION" --seed "$SEED" "${resume[@]}"
fi

python evaluate.py --model_name_or_path "$OUT/best" --mode test --task_set sts --data_dir "$DATA_DIR" \
  --output_json "$OUT/sts_test.json"
