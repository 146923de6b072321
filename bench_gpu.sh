#!/usr/bin/env bash
# The GPU benchmarks of docs/speed.md, in one run (about 6 minutes on an H100/H200):
#   1. python -m utils.bench: train.py's step vs sentence-transformers' SimCSE recipe, BERT-base shape
#      (random weights: speed does not depend on them), bf16; encode, full STS suite, in-training eval;
#   2. bench_transfer.py: the transfer suite's classifier part, batched on the GPU vs scikit-learn.
# Settings come from the environment:
#   PYTHON     the interpreter for every Python step; must import torch            [python3 on PATH, else python]
#   DATA_DIR   SentEval data/ folder (downstream/ STS, SICK and the transfer tasks)      [data]
#   MODEL      encoder for the transfer features; its tokenizer (BERT uncased) serves step 1
#                                                        [sentence-transformers/all-MiniLM-L6-v2]
#   TRAIN_FILE training text for step 1, one sentence per line  [$DATA_DIR/train/wiki1m_for_simcse.first11914.txt,
#                                                                 else the STS test sentences]
#   OUT_DIR    JSON results and logs                                                       [results/bench-gpu]
#   FEATURES_DIR  cached transfer features (about 200 MB)                         [$OUT_DIR/transfer-features]
#   BENCH_ARGS, TRANSFER_ARGS  more flags for either script (a quick try: BENCH_ARGS="--steps 2 --variants default")
set -u
PYTHON=${PYTHON:-$(command -v python3 || command -v python || echo python3)}
if ! "$PYTHON" -c 'import torch' >/dev/null 2>&1; then
  echo "bench_gpu.sh: error: $PYTHON cannot import torch; install the requirements or set PYTHON=/path/to/python" >&2
  exit 2
fi
DATA_DIR=${DATA_DIR:-data}
MODEL=${MODEL:-sentence-transformers/all-MiniLM-L6-v2}
TRAIN_FILE=${TRAIN_FILE:-$DATA_DIR/train/wiki1m_for_simcse.first11914.txt}
OUT_DIR=${OUT_DIR:-results/bench-gpu}
FEATURES_DIR=${FEATURES_DIR:-$OUT_DIR/transfer-features}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR" || exit 1
train_file=()
[ -f "$TRAIN_FILE" ] && train_file=(--train_file "$TRAIN_FILE")

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
"$PYTHON" -c "import torch, transformers, accelerate, sentence_transformers, datasets, sklearn
print(*(f'{m.__name__} {m.__version__}' for m in (torch, transformers, accelerate, sentence_transformers, datasets, sklearn)), sep=', ')" \
    2>&1 | tee -a "$OUT_DIR/gpu.txt"

# each step has its own time limit, so that one that hangs leaves time for the other
timeout "${BENCH_SECONDS:-330}" "$PYTHON" -m utils.bench --config bert-base --tokenizer "$MODEL" --data_dir "$DATA_DIR" \
    "${train_file[@]}" --json "$OUT_DIR/bench_gpu_bert_base.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT_DIR/bench.log"
bench_status=${PIPESTATUS[0]}
echo "utils.bench exit status: $bench_status"

# scikit-learn on one thread, as in the CPU table (its BLAS threads made it slower on these small problems)
OMP_NUM_THREADS=1 timeout "${TRANSFER_SECONDS:-200}" "$PYTHON" bench_transfer.py --model_name_or_path "$MODEL" \
    --pooler avg --data_dir "$DATA_DIR" --cache_dir "$FEATURES_DIR" --mode test \
    --output_json "$OUT_DIR/bench_transfer_gpu.json" ${TRANSFER_ARGS:-} 2>&1 | tee "$OUT_DIR/transfer.log"
transfer_status=${PIPESTATUS[0]}
echo "bench_transfer.py exit status: $transfer_status"
# both ran whatever happened to the other; the exit status says whether both succeeded
[ "$bench_status" -eq 0 ] && [ "$transfer_status" -eq 0 ]
