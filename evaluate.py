"""Score a sentence encoder on SimCSE's STS tasks, with SimCSE's numbers (SentEval data and scoring).

    # the 7 test sets of SimCSE's STS table: STS12-16 ("all"), STS-B test, SICK-R test, and their Avg.
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode test --task_set sts --data_dir data

    # a sentence-transformers model with mean pooling, results also written to JSON
    python evaluate.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 --pooler avg --mode test \\
        --task_set sts --data_dir ../shared/data --output_json results/minilm_sts.json

    # the dev sets training watches: STS-B dev and SICK-R trial
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode dev --task_set sts --data_dir data

The pooler is --pooler if given, else the checkpoint's `config.sentence_pooler` (train.py's export
writes it), else SimCSE's default `cls`. What is scored is defined in utils/sts.py.
Exit status: 0 done; 1 the model could not be loaded; 2 bad data (or a pooler this model lacks).
"""

import argparse
import os
import sys
import time

import torch

from utils.cli import number
from utils.data import DataError
from utils.encode import default_max_length, encode
from utils.model import load_pretrained
from utils.pooling import POOLERS, PooledEncoder
from utils.run_log import write_json_atomic
from utils.sts import format_table, load_sts_tasks, score_sts

# ----------------------------------------------------------------------------- config
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model_name_or_path", required=True, help="local folder (or hub name) of the encoder")
parser.add_argument("--pooler", choices=POOLERS, default=None,
                    help="default: the checkpoint's config.sentence_pooler, else cls")
parser.add_argument("--mode", choices=["test", "dev"], default="test")
parser.add_argument("--task_set", choices=["sts"], default="sts")
parser.add_argument("--data_dir", default="data", help="SentEval's data/ folder (the one holding downstream/)")
parser.add_argument("--batch_size", type=number(int, 1), default=128, help="sentences per encode batch")
parser.add_argument("--max_seq_length", type=number(int, 2), default=None,
                    help="truncate inputs to this many tokens; default: the longest the encoder accepts")
parser.add_argument("--output_json", default=None, help="also write the results here (default: print only)")
parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
args = parser.parse_args()


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- data
# Read before loading the model: a wrong --data_dir fails in a second, not after the model load.
try:
    tasks = load_sts_tasks(args.data_dir, args.mode)
except DataError as err:
    fail(str(err))

# ----------------------------------------------------------------------------- model
encoder, tokenizer = load_pretrained(args.model_name_or_path)  # SystemExit with a one-line reason
if args.pooler:
    pooler, why = args.pooler, "--pooler"
elif getattr(encoder.config, "sentence_pooler", None):
    pooler, why = encoder.config.sentence_pooler, "the checkpoint's config.sentence_pooler"
else:
    pooler, why = "cls", "SimCSE's default; no --pooler and no config.sentence_pooler"
if pooler not in POOLERS:
    fail(f"{args.model_name_or_path}/config.json: sentence_pooler {pooler!r} is not one of {', '.join(POOLERS)}")
device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
if device.type == "cuda" and not torch.cuda.is_available():
    fail(f"--device {args.device}: no CUDA device is available here")
model = PooledEncoder(encoder, pooler).to(device)
max_length = args.max_seq_length or default_max_length(tokenizer, encoder.config)
print(f"model {args.model_name_or_path} | pooler {pooler} ({why}) | max_seq_length {max_length} | {device}")

# ----------------------------------------------------------------------------- evaluate
start = time.time()
try:
    result = score_sts(lambda sentences: encode(model, tokenizer, sentences, batch_size=args.batch_size,
                                                max_length=max_length, device=device,
                                                progress=sys.stderr.isatty()),
                       tasks)
except ValueError as err:  # e.g. --pooler cls on an encoder without a pooler layer
    fail(str(err))
seconds = time.time() - start

print(f"------ {args.mode} ------")
print(format_table(result))
print(f"{result['n_pairs']} pairs, {result['n_sentences']} unique sentences, {seconds:.1f} s")

if args.output_json:
    record = {
        "model": args.model_name_or_path, "pooler": pooler, "pooler_source": why, "mode": args.mode,
        "task_set": args.task_set, "max_seq_length": max_length, "batch_size": args.batch_size,
        "device": str(device), "scores": {task: t["spearman"] for task, t in result["tasks"].items()},
        **result, "seconds": round(seconds, 2),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    write_json_atomic(args.output_json, record, indent=2)
    print(f"wrote {args.output_json}")
