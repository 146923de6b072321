"""Time each train.py --method's training step against SimCSE's, with and without Rank Reduction.

    python -m benchmarks.bench_methods --model ../shared/models/all-MiniLM-L6-v2 --data_dir ../shared/data \\
        --train_file ../shared/data/train/unsup_corpus_wiki11914_snli25741.txt --variant unpad --json methods.json

The methods are train.py's registry (utils.methods.METHODS), SimCSE first as the reference; each is built as
train.py builds it, from its published recipe's flags (utils.methods.recipe_flags) at this benchmark's batch
size, and every method trains on the same batches, so per step is per sentence. The step and its timing are
bench_step's (train.py's own objects; with and without RR in alternating blocks); memory: benchmarks/timing.py.
"""

import tempfile

from benchmarks.bench_step import VARIANTS, TrainPy, add_step_arguments, resolve, step_header, step_settings, \
    time_steps, train_flags, variant_flags
from benchmarks.timing import MEMORY_HEADER, Report, device_of, memory_cells, model_dir, parser
from utils.cli import number
from utils.methods import METHODS, recipe_flags


def parse_args(argv=None):
    p = parser(__doc__)
    add_step_arguments(p)
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="the methods to time against SimCSE's (default: every method of train.py)")
    p.add_argument("--variant", choices=list(VARIANTS), default="default",
                   help="train.py speed flags of every step (default: default)")
    p.add_argument("--rank_reduction", type=number(float, 0), default=0.1,
                   help="RR's λ in the RR timing, 0 for none (default 0.1)")
    return p.parse_args(argv)


def per_step(t: dict) -> dict:
    """ms/step and memory of a time_steps result."""
    return {"ms_per_step": 1000 * t["seconds"] / t["steps"],
            **{k: t[k] for k in ("rss_mb", "rss_growth_mb", "cuda_peak_mb") if k in t}}


def main(argv=None):
    args = parse_args(argv)
    device = device_of(args)
    sentences = resolve(args, device)
    report = Report(args.json, device, **step_settings(args), variant=args.variant,
                    variant_flags=variant_flags(args.variant), rank_reduction=args.rank_reduction)
    methods = report.data["methods"] = {}
    total = args.warmup_steps + args.steps
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(args, tmp)
        for name in dict.fromkeys(["simcse", *args.methods]):
            flags = [*recipe_flags(name), *VARIANTS[args.variant], *train_flags(args),
                     "--rank-reduction", str(args.rank_reduction)]
            timed = report.attempt(f"train.py --method {name}", lambda: time_steps(
                TrainPy(path, sentences, flags, total), args.warmup_steps, args.steps, device))
            if timed is None:
                continue
            row = methods[name] = {"label": METHODS[name].label, **per_step(timed[""])}
            if "rr" in timed:
                row["rank_reduction"] = per_step(timed["rr"])
            print(f"train.py --method {name}: {row['ms_per_step']:.1f} ms/step" + (
                f", with --rank-reduction {args.rank_reduction:g}: {row['rank_reduction']['ms_per_step']:.1f}"
                if "rr" in timed else ""), flush=True)
    if "simcse" in methods:
        for row in methods.values():
            for t in filter(None, (row, row.get("rank_reduction"))):
                t["vs_simcse"] = t["ms_per_step"] / methods["simcse"]["ms_per_step"]
    return report.finish(format_table(report.data))


def format_table(r: dict) -> str:
    lines = [f"{step_header(r)} | train.py {r['variant_flags']}", "",
             f"| method | ms/step | x SimCSE | {MEMORY_HEADER} |", "|---|---|---|---|---|"]
    for t in r["methods"].values():
        rr_label = f"{t['label']} + RR λ = {r['rank_reduction']:g}"
        for row, label in ((t, t["label"]), (t.get("rank_reduction"), rr_label)):
            if row:
                vs = f"{row['vs_simcse']:.2f}x" if "vs_simcse" in row else "-"
                lines.append(f"| {label} | {row['ms_per_step']:.1f} | {vs} | {memory_cells(row)} |")
    lines.append("(every method on the same batches of the same size, so per step = per sentence; x SimCSE: against "
                 "SimCSE without RR)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
