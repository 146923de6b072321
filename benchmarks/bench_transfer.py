"""Time the transfer suite's classifier part: batched (evaluate.py's) against scikit-learn, model by model.

    # MiniLM features for the 7 transfer tasks (cached), then both fitters in SentEval's --mode test setting
    OMP_NUM_THREADS=1 python -m benchmarks.bench_transfer --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \\
        --pooler avg --data_dir ../shared/data --cache_dir /tmp/transfer-features-minilm --mode test

Sentence embeddings are computed once per task (utils/transfer.py, one encode call each) and cached as
`<cache_dir>/<task>.npz`; only the classifier protocols are timed, on the same features, with the same
folds, held-out rows and L2 grid (utils/classifier.py). `batched` is `train_batched` (all models of a
task in one batched model, what evaluate.py runs); `sklearn` is `fit_sklearn`, one scikit-learn
`LogisticRegression` per fold and L2 value (its defaults: lbfgs, max_iter 100), the only difference being
the fitter. scikit-learn is needed only here and in the tests (requirements-dev.txt). The batched trainer
runs on one CPU thread whatever the setting (utils/classifier.py says why); run with `OMP_NUM_THREADS=1` to
give scikit-learn one thread too. Memory: benchmarks/timing.py.
"""

import json
import os
import sys
import time

import numpy as np

from benchmarks.timing import Meter, Report, device_of, parser
from utils.classifier import CONFIGS, fit_sklearn, train_batched
from utils.data import DataError
from utils.files import write_json_atomic
from utils.transfer import TRANSFER_TASKS, features, load_transfer_tasks, run_protocol

FITTERS = {"batched": train_batched, "sklearn": fit_sklearn}


def parse_args(argv=None):
    p = parser(__doc__, model=False, seed=1111)
    p.add_argument("--model_name_or_path", required=True, help="the encoder of the features")
    p.add_argument("--pooler", default="avg", help="its pooler, as evaluate.py --pooler (default avg)")
    p.add_argument("--data_dir", default="data", help="SentEval data/ folder (default data)")
    p.add_argument("--cache_dir", required=True, help="features are read from / written to <cache_dir>/<task>.npz")
    p.add_argument("--mode", choices=list(CONFIGS), default="test",
                   help="the classifier setting, as evaluate.py's (default test)")
    p.add_argument("--tasks", nargs="+", choices=TRANSFER_TASKS, default=list(TRANSFER_TASKS),
                   help="the tasks to time (default: all seven)")
    p.add_argument("--methods", nargs="+", choices=list(FITTERS), default=list(FITTERS),
                   help="the fitters to time: batched (evaluate.py's), sklearn (default both)")
    return p.parse_args(argv)


def cached_features(args, tasks: dict, device) -> dict:
    """{task: {split: (X, y)}}: each task's features from the cache, embedded (and cached) where missing."""
    os.makedirs(args.cache_dir, exist_ok=True)
    meta_path = os.path.join(args.cache_dir, "meta.json")
    meta = {"model": os.path.abspath(args.model_name_or_path), "pooler": args.pooler}
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            cached = json.load(f)
        if cached != meta:
            sys.exit(f"error: {args.cache_dir} holds the features of {cached}; use another --cache_dir")
    write_json_atomic(meta_path, meta)
    embed, data = None, {}
    for name, task in tasks.items():
        path = os.path.join(args.cache_dir, f"{name}.npz")
        if not os.path.exists(path):
            embed = embed or make_embed(args, device)
            start = time.time()
            split_features = features(task, embed)
            np.savez(path + ".tmp.npz", **{f"{split}_X": X for split, (X, _) in split_features.items()},
                     **{f"{split}_y": y for split, (_, y) in split_features.items()})
            os.replace(path + ".tmp.npz", path)
            print(f"{name}: {len(task.sentences)} sentences embedded in {time.time() - start:.1f} s -> {path}")
        with np.load(path) as z:
            data[name] = {split: (z[f"{split}_X"], z[f"{split}_y"]) for split in task.splits}
    return data


def make_embed(args, device):
    """The encoder, loaded only when some task's features are not cached yet."""
    from utils.encode import EmbeddingCache, encode
    from utils.model import load_pretrained
    from utils.pooling import PooledEncoder

    encoder, tokenizer = load_pretrained(args.model_name_or_path)
    model = PooledEncoder(encoder, args.pooler).to(device)
    return EmbeddingCache(lambda sentences: encode(model, tokenizer, sentences, batch_size=128))


def main(argv=None):
    args = parse_args(argv)
    device = device_of(args)
    try:
        tasks = load_transfer_tasks(args.data_dir, args.tasks)
    except DataError as err:
        sys.exit(f"error: {err}")
    report = Report(args.json, device, cpus=os.cpu_count(), mode=args.mode, classifier=CONFIGS[args.mode].as_dict())
    data = cached_features(args, tasks, device)
    if "sklearn" in args.methods:
        import sklearn.linear_model  # noqa: F401 - imported before the clock starts
    print(f"mode {args.mode}: {CONFIGS[args.mode]} | {report.data['device']} | {os.cpu_count()} CPUs", flush=True)
    results = report.data["results"] = {method: {} for method in args.methods}
    for name, task in tasks.items():  # task by task, both fitters back to back: the same machine load
        for method in args.methods:
            def run():
                meter, cpu = Meter(device), time.process_time()
                with meter:
                    r = run_protocol(task, data[name], CONFIGS[args.mode], seed=args.seed, device=device,
                                     fit=FITTERS[method])
                return {**r, **meter.result(), "cpu_seconds": time.process_time() - cpu}

            r = report.attempt(f"{method} {name}", run)
            if r is not None:
                results[method][name] = r
                print(f"{method:8s} {name:5s} acc {r['acc']:6.2f}  dev {r['devacc']:6.2f}  {r['n_models']:4d} models "
                      f"{r['seconds']:8.1f} s  (CPU {r['cpu_seconds']:.1f} s)", flush=True)
    return report.finish(format_table(args.mode, list(tasks), results))


def format_table(mode: str, names: list, results: dict) -> str:
    def row(label, per_task, text, total=""):
        return f"| {label} | {' | '.join(text(per_task[n]) if n in per_task else '-' for n in names)} | {total} |"

    lines = [f"| {mode} | {' | '.join(names)} | total |", "|---|" + "---|" * (len(names) + 1)]
    for method, per_task in results.items():
        wall, cpu = (sum(r[k] for r in per_task.values()) for k in ("seconds", "cpu_seconds"))
        lines += [row(f"{method} accuracy", per_task, lambda r: f"{r['acc']:.2f}"),
                  row(f"{method} seconds (CPU)", per_task, lambda r: f"{r['seconds']:.1f} ({r['cpu_seconds']:.1f})",
                      f"{wall:.1f} ({cpu:.1f})"),
                  row(f"{method} RSS, MB (growth)", per_task,
                      lambda r: f"{r['rss_mb']:,.0f} ({r['rss_growth_mb']:+,.0f})")]
        if any("cuda_peak_mb" in r for r in per_task.values()):
            lines.append(row(f"{method} CUDA peak, MB", per_task, lambda r: f"{r['cuda_peak_mb']:,.0f}"))
    if set(results) == set(FITTERS) and all(len(per_task) == len(names) for per_task in results.values()):
        wall = {m: sum(r["seconds"] for r in results[m].values()) for m in results}
        cpu = {m: sum(r["cpu_seconds"] for r in results[m].values()) for m in results}
        gaps = {n: results["batched"][n]["acc"] - results["sklearn"][n]["acc"] for n in names}
        worst = max(gaps, key=lambda n: abs(gaps[n]))
        lines.append(f"\nbatched is {wall['sklearn'] / wall['batched']:.1f}x faster than sklearn in wall time, "
                     f"{cpu['sklearn'] / cpu['batched']:.1f}x in CPU time; largest accuracy gap {gaps[worst]:+.2f} "
                     f"points ({worst})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
