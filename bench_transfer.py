"""Benchmark the classifier part of the transfer suite: batched (evaluate.py's) vs scikit-learn model by model.

    # MiniLM features for the 7 transfer tasks (cached), then both methods in SentEval's --mode test setting
    python bench_transfer.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 --pooler avg \\
        --data_dir ../shared/data --cache_dir /tmp/transfer-features-minilm --mode test

Sentence embeddings are computed once per task (utils/transfer.py, one encode call each) and cached as
`<cache_dir>/<task>.npz`; only the classifier protocols are timed, on the same features, with the same
folds, held-out rows and L2 grid (utils/classifier.py). `batched` is `train_batched` (all models of a
task in one batched model, what evaluate.py runs); `sklearn` is `fit_sklearn`, one scikit-learn
`LogisticRegression` per fold and L2 value (its defaults: lbfgs, max_iter 100), the only difference being
the fitter. scikit-learn is needed only here and in the tests (requirements-dev.txt).

The batched trainer runs on one CPU thread whatever the setting (utils/classifier.py says why); compare
with `OMP_NUM_THREADS=1` for scikit-learn too, or see its BLAS threads at work (the README has both).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
import torch

from utils.classifier import CONFIGS, fit_sklearn, train_batched
from utils.data import DataError
from utils.encode import EmbeddingCache, encode
from utils.model import load_pretrained
from utils.pooling import PooledEncoder
from utils.transfer import TRANSFER_TASKS, features, load_transfer_tasks, run_protocol

METHODS = {"batched": train_batched, "sklearn": fit_sklearn}

parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model_name_or_path", required=True)
parser.add_argument("--pooler", default="avg")
parser.add_argument("--data_dir", default="data")
parser.add_argument("--cache_dir", required=True, help="features are read from / written to <cache_dir>/<task>.npz")
parser.add_argument("--mode", choices=list(CONFIGS), default="test")
parser.add_argument("--tasks", nargs="+", choices=TRANSFER_TASKS, default=list(TRANSFER_TASKS))
parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
parser.add_argument("--seed", type=int, default=1111, help="folds, held-out rows, initial weights, minibatch order")
parser.add_argument("--device", default=None, help="for the batched classifier (default: cuda when available)")
parser.add_argument("--output_json", default=None)
args = parser.parse_args()

try:
    tasks = load_transfer_tasks(args.data_dir, args.tasks)
except DataError as err:
    sys.exit(f"error: {err}")

# ----------------------------------------------------------------------------- features (cached)
os.makedirs(args.cache_dir, exist_ok=True)
meta_path = os.path.join(args.cache_dir, "meta.json")
meta = {"model": os.path.abspath(args.model_name_or_path), "pooler": args.pooler}
if os.path.exists(meta_path):
    with open(meta_path) as f:
        cached = json.load(f)
    if cached != meta:
        sys.exit(f"error: {args.cache_dir} holds the features of {cached}; use another --cache_dir")
with open(meta_path, "w") as f:
    json.dump(meta, f)


def make_embed():
    """The encoder, loaded only when some task's features are not cached yet."""
    encoder, tokenizer = load_pretrained(args.model_name_or_path)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = PooledEncoder(encoder, args.pooler).to(device)
    return EmbeddingCache(lambda sentences: encode(model, tokenizer, sentences, batch_size=128))


embed, data = None, {}
for name, task in tasks.items():
    path = os.path.join(args.cache_dir, f"{name}.npz")
    if not os.path.exists(path):
        embed = embed or make_embed()
        start = time.time()
        split_features = features(task, embed)
        np.savez(path + ".tmp.npz", **{f"{split}_X": X for split, (X, _) in split_features.items()},
                 **{f"{split}_y": y for split, (_, y) in split_features.items()})
        os.replace(path + ".tmp.npz", path)
        print(f"{name}: {len(task.sentences)} sentences embedded in {time.time() - start:.1f} s -> {path}")
    with np.load(path) as z:
        data[name] = {split: (z[f"{split}_X"], z[f"{split}_y"]) for split in task.splits}

# ----------------------------------------------------------------------------- time the classifiers
config = CONFIGS[args.mode]
machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}"
print(f"mode {args.mode}: {config} | {machine} | torch threads {torch.get_num_threads()}")
# Task by task, both methods back to back, so that both see the same machine load.
results = {method: {} for method in args.methods}
for name, task in tasks.items():
    for method in args.methods:
        start, cpu = time.perf_counter(), time.process_time()
        r = run_protocol(task, data[name], config, seed=args.seed, device=args.device, fit=METHODS[method])
        r["seconds"], r["cpu_seconds"] = time.perf_counter() - start, time.process_time() - cpu
        results[method][name] = r
        print(f"{method:8s} {name:5s} acc {r['acc']:6.2f}  dev {r['devacc']:6.2f}  {r['n_models']:4d} models "
              f"{r['seconds']:8.1f} s  (CPU {r['cpu_seconds']:.1f} s)", flush=True)

names = list(tasks)
print(f"\n| {args.mode} | {' | '.join(names)} | total |")
print("|---|" + "---|" * (len(names) + 1))
for method, per_task in results.items():
    accuracies = " | ".join(f"{per_task[n]['acc']:.2f}" for n in names)
    print(f"| {method} accuracy | {accuracies} | |")
for method, per_task in results.items():
    cells = [f"{per_task[n]['seconds']:.1f} ({per_task[n]['cpu_seconds']:.1f})" for n in names]
    total = sum(r["seconds"] for r in per_task.values()), sum(r["cpu_seconds"] for r in per_task.values())
    print(f"| {method} seconds (CPU) | {' | '.join(cells)} | {total[0]:.1f} ({total[1]:.1f}) |")
if len(results) == 2 and "batched" in results:
    other = next(m for m in results if m != "batched")
    wall = {m: sum(r["seconds"] for r in results[m].values()) for m in results}
    cpu = {m: sum(r["cpu_seconds"] for r in results[m].values()) for m in results}
    gaps = {n: results["batched"][n]["acc"] - results[other][n]["acc"] for n in names}
    worst = max(gaps, key=lambda n: abs(gaps[n]))
    print(f"\nbatched is {wall[other] / wall['batched']:.1f}x faster than {other} in wall time, "
          f"{cpu[other] / cpu['batched']:.1f}x in CPU time; largest accuracy gap {gaps[worst]:+.2f} points ({worst})")
if args.output_json:
    with open(args.output_json, "w") as f:
        json.dump({"mode": args.mode, "machine": machine, "results": results}, f, indent=2, default=float)
