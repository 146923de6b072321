"""Resident memory and step time of train.py's training step over a long run, for each speed-flag variant.

    python -m benchmarks.bench_memory --model ../shared/models/all-MiniLM-L6-v2 --data_dir ../shared/data \\
        --train_file ../shared/data/train/unsup_corpus_wiki11914_snli25741.txt --cpu --json memory.json

Each variant runs in a process of its own (the memory one variant leaves behind would count for the next):
train.py's step (benchmarks.bench_step.TrainPy) on the run's own batches, the process's resident memory
(RSS) read at the given steps, and the mean step time over each stretch between them. The variants:
`default` (padded batches), `unpad` (--unpad_inputs: the real tokens packed, their count padded to a
multiple of utils.unpad.PACK_MULTIPLE) and `unpad-exact` (the packed count exactly the real tokens', every
count a new matrix shape: --unpad_inputs before the multiple existed).
"""

import argparse
import json
import sys
import time

from benchmarks.bench_step import TrainPy, add_step_arguments, resolve, step_header, step_settings, train_flags
from benchmarks.timing import Report, device_of, in_child, model_dir, parser, rss_mb, sync
from utils.cli import number

VARIANTS = {"default": [], "unpad": ["--unpad_inputs"], "unpad-exact": ["--unpad_inputs"]}


def parse_args(argv=None):
    p = parser(__doc__)
    add_step_arguments(p)
    p.add_argument("--at", type=number(int, 2), nargs="+", default=[10, 100, 300, 600],
                   help="the steps after which the resident memory is read")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS), help="the variants to run")
    p.add_argument("--one", choices=list(VARIANTS), default=None, help=argparse.SUPPRESS)  # a child's variant
    args = p.parse_args(argv)
    args.at = sorted(set(args.at))
    return args


def measure(args, variant: str) -> dict:
    """In this process: {"rss_mb": [MB after each step of --at], "ms_per_step": [mean ms of the steps since the
    previous reading], "stages_mb": {"imports", "model_and_optimizer", "first_step": MB after each}}."""
    import tempfile

    import train as _  # noqa: F401  (the project's imports count as a stage of their own)
    import utils.unpad

    if variant == "unpad-exact":
        utils.unpad.PACK_MULTIPLE = 1
    device = device_of(args)
    sentences = resolve(args, device)
    stages = {"imports": rss_mb()}
    with tempfile.TemporaryDirectory() as tmp:
        train = TrainPy(model_dir(args, tmp), sentences, [*train_flags(args), *VARIANTS[variant]], max(args.at))
        stages["model_and_optimizer"] = rss_mb()
        train.run("", 0)
        stages["first_step"] = rss_mb()
        out = {"rss_mb": [], "ms_per_step": [], "stages_mb": stages}
        done = 1
        for at in args.at:
            sync(device)
            started = time.perf_counter()
            for step in range(done, at):
                train.run("", step)
            sync(device)
            out["ms_per_step"].append(1000 * (time.perf_counter() - started) / (at - done))
            out["rss_mb"].append(rss_mb())
            done = at
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.one:  # a child: one variant, its result on stdout
        print(json.dumps(measure(args, args.one)))
        return None
    device = device_of(args)
    resolve(args, device)
    report = Report(args.json, device, **step_settings(args), at=args.at)
    rows = report.data.setdefault("variants", {})
    for variant in args.variants:
        child = [*(argv if argv is not None else sys.argv[1:]), "--one", variant]
        result = report.attempt(variant, lambda: in_child("benchmarks.bench_memory", child))
        if result is not None:
            rows[variant] = result
            report.save()  # a run cut short keeps every variant measured so far
            print(f"{variant}: RSS {result['rss_mb']}", flush=True)
    return report.finish(format_table(report.data))


def format_table(r: dict) -> str:
    at = r["at"]
    lines = [step_header(r), "",
             "| variant | " + " | ".join(f"RSS at step {s}, MB" for s in at) + " | ms/step (last stretch) |",
             "|---|" + "---|" * (len(at) + 1)]
    for variant, v in r.get("variants", {}).items():
        lines.append(f"| {variant} | " + " | ".join(f"{mb:,.0f}" for mb in v["rss_mb"])
                     + f" | {v['ms_per_step'][-1]:,.0f} |")
    lines += ["", "Where it goes, MB (each stage's growth of the resident memory):", "",
              "| variant | libraries and the project | model and optimizer | first step | steps 2 to "
              f"{at[-1]} |", "|---|---|---|---|---|"]
    for variant, v in r.get("variants", {}).items():
        marks = [0.0, *v["stages_mb"].values(), v["rss_mb"][-1]]
        lines.append(f"| {variant} | " + " | ".join(f"{b - a:+,.0f}" for a, b in zip(marks, marks[1:])) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
