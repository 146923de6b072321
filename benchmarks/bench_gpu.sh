#!/usr/bin/env bash
# The GPU benchmarks of docs/speed.md in one run; each part runs whatever happened to the others:
#   step        benchmarks.bench_step: train.py's step vs sentence-transformers, BERT-base shape with random
#               weights (speed does not depend on them), bf16, with and without Rank Reduction
#   rr_solvers  benchmarks.bench_rr_solvers: RR's penalty, eigh vs quadrature, at BERT-base's width
#   encode      benchmarks.bench_encode: encode vs sentence-transformers, the STS suite, the in-training
#               evaluation against the CUDA-graph step
#   transfer    benchmarks.bench_transfer: the transfer classifier, batched on the GPU vs scikit-learn
# Settings come from the environment:
#   PYTHON     the interpreter for every Python step; must import torch            [python3 on PATH, else python]
#   DATA_DIR   SentEval data/ folder (downstream/ STS, SICK and the transfer tasks)      [data]
#   MODEL      encoder for the transfer features; its tokenizer (BERT uncased) serves the BERT-base shape
#                                                        [sentence-transformers/all-MiniLM-L6-v2]
#   TRAIN_FILE training text of the steps, one sentence per line  [$DATA_DIR/train/wiki1m_for_simcse.first11914.txt,
#                                                                  else the STS test sentences]
#   OUT_DIR    <part>.json results and <part>.log logs, gpu.txt                            [results/bench-gpu]
#   FEATURES_DIR  cached transfer features (about 200 MB)                         [$OUT_DIR/transfer-features]
#   STEP_ARGS, RR_ARGS, ENCODE_ARGS, TRANSFER_ARGS  more flags for one part (a quick try: STEP_ARGS="--steps 2")
#   STEP_SECONDS, RR_SECONDS, ENCODE_SECONDS, TRANSFER_SECONDS  each part's time limit [240, 60, 180, 200]
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
# `python -m benchmarks.<name>` from any folder; relative paths stay the caller's
export PYTHONPATH="$(cd "$(dirname "$0")/.." && pwd)${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR" || exit 1
train_file=()
[ -f "$TRAIN_FILE" ] && train_file=(--train_file "$TRAIN_FILE")
bert_base=(--config bert-base --tokenizer "$MODEL" --data_dir "$DATA_DIR" "${train_file[@]}")

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$OUT_DIR/gpu.txt"
"$PYTHON" -c "import torch, transformers, accelerate, sentence_transformers, datasets, sklearn
print(*(f'{m.__name__} {m.__version__}' for m in (torch, transformers, accelerate, sentence_transformers, datasets, sklearn)), sep=', ')" \
    2>&1 | tee -a "$OUT_DIR/gpu.txt"

failed=()
part() {  # part NAME SECONDS ARGS...: one benchmark under its own time limit, so that one that hangs leaves time
  local name=$1 seconds=$2 status
  shift 2
  timeout "$seconds" "$PYTHON" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
  status=${PIPESTATUS[0]}
  echo "$name exit status: $status"
  [ "$status" -eq 0 ] || failed+=("$name")
}
# shellcheck disable=SC2086  # the *_ARGS are word lists
part step "${STEP_SECONDS:-240}" -m benchmarks.bench_step "${bert_base[@]}" --json "$OUT_DIR/step.json" ${STEP_ARGS:-}
part rr_solvers "${RR_SECONDS:-60}" -m benchmarks.bench_rr_solvers --dims 768 --json "$OUT_DIR/rr_solvers.json" ${RR_ARGS:-}
part encode "${ENCODE_SECONDS:-180}" -m benchmarks.bench_encode "${bert_base[@]}" --variant compile-cudagraphs \
    --json "$OUT_DIR/encode.json" ${ENCODE_ARGS:-}
# scikit-learn on one thread, as in the CPU table (its BLAS threads made it slower on these small problems)
OMP_NUM_THREADS=1 part transfer "${TRANSFER_SECONDS:-200}" -m benchmarks.bench_transfer --model_name_or_path "$MODEL" \
    --pooler avg --data_dir "$DATA_DIR" --cache_dir "$FEATURES_DIR" --mode test --json "$OUT_DIR/transfer.json" \
    ${TRANSFER_ARGS:-}
# every part ran whatever happened to the others; the exit status says whether all succeeded
[ ${#failed[@]} -eq 0 ] || { echo "bench_gpu.sh: failed: ${failed[*]}" >&2; exit 1; }
