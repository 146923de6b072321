"""Turn train.py runs into the two-phase picture of Jung et al. (2024): the rank of the embeddings through
fine-tuning, Phase 1 (start -> rank peak) and Phase 2 (peak -> best checkpoint) per run, seeds x configurations
compared, and the paper's findings judged on the runs.

    # the runs of run.sh's study (train.py --save_steps keeps the checkpoints swept here)
    python analyze_rank.py --runs runs/study/runs/*-seed* --data_dir data --out runs/study/analysis

    # also the full STS test sets, and SentEval's probing tasks at step 0, the rank peak and the best
    python analyze_rank.py --runs runs/a runs/b --data_dir data --sts_test \
        --probing_dir data/probing --probing_at boundaries --out results/rank

The phases come from each run's training log (utils.phase.segment, to the checkpoint best/ holds). Every
checkpoint is swept: scored as training scored it (utils.scoring.score of the embedding training selected by),
plus the STS test sets and probing of the embedding evaluate.py reports. Outputs in --out: checkpoints.csv,
summary.json, report.md (also printed), PNG plots (matplotlib is optional) and measurements.jsonl, which a later
analysis into the same --out reads instead of measuring those checkpoints again. docs/analyze_rank.md says more.
"""

import argparse
import os
import sys
import time

import torch

from utils.analysis import (add_checkpoint_metrics, band, boundary_checkpoints, group_runs, group_stats,
                            log_series, phase_analysis, phase_labels)
from utils.cli import number
from utils.data import check_output_path
from utils.encode import parse_device
from utils.measurements import MeasurementStore
from utils.findings import judge_by_method
from utils.rank import RANK_METRICS
from utils.report import markdown, write_csv, write_summary
from utils import scoring
from utils.runs import FINISHED, load_runs, recorded_eval_sets
from utils.scoring import load_eval_sets
from utils.sts import load_sts_tasks
from utils.sweep import Sweep


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="train.py output folders")
    p.add_argument("--data_dir", required=True, help="SentEval data/ folder (STS-B dev, SICK-R trial, STS test)")
    scoring.add_arguments(p)  # default: the sets each run trained with
    p.add_argument("--out", default="results/rank_analysis",
                   help="folder for checkpoints.csv, summary.json, report.md and the plots")
    p.add_argument("--phase_metric", default="effective_rank", choices=RANK_METRICS,
                   help="the rank metric whose peak splits Phase 1 from Phase 2")
    p.add_argument("--sts_test", action="store_true", help="also score the 7 STS test sets at every checkpoint")
    p.add_argument("--probing_dir", default=None,
                   help="folder of SentEval probing files (split<TAB>label<TAB>sentence)")
    p.add_argument("--probing_at", default="all", choices=["all", "boundaries"],
                   help="probe every checkpoint, or only those at each run's phase boundaries")
    p.add_argument("--probing_limit", type=number(int, 1), default=None,
                   help="at most this many examples of each probing split (None: all)")
    p.add_argument("--probe_split", default="dev", choices=["train", "dev", "test"],
                   help="the STS-B split whose sentences form the probe set (train.py's --probe_split)")
    p.add_argument("--energy_tau", type=number(float, 0, inclusive=False), default=0.9, help="energy_rank's tau")
    p.add_argument("--batch_size", type=number(int, 1), default=128, help="sentences per encode batch")
    p.add_argument("--device", type=parse_device, default=None, help="cpu or cuda (None: cuda where available)")
    args = p.parse_args(argv)
    problem = scoring.check_arguments(args, args.data_dir, "--data_dir")
    if args.energy_tau > 1:
        problem = f"argument --energy_tau: must be <= 1, got {args.energy_tau}"
    if problem:
        p.error(problem)
    return args


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def probe_steps(args, run: dict, phases: dict) -> set:
    """The checkpoint steps of a run whose probing accuracies are measured."""
    if not args.probing_dir:
        return set()
    steps = [c["step"] for c in run["checkpoints"]]
    return set(steps) if args.probing_at == "all" else set(boundary_checkpoints(phases, steps).values()) - {None}


def analysis_notes(args, runs, sweep, probing_tasks) -> list[str]:
    """The report's closing notes: reused measurements, how probing was done, runs that did not finish."""
    notes = []
    if sweep.reused:
        notes.append(f"{len(sweep.reused)} measurement(s) of a checkpoint whose weights an earlier one already had "
                     "(e.g. every run's step-0 export of the same starting model) reused that one's numbers")
    if sweep.stored:
        notes.append(f"{len(sweep.stored)} measurement(s) read from {sweep.store.path}, where an earlier analysis "
                     "into this folder took them of the same weights and evaluation data (delete it to measure again)")
    if probing_tasks is None:
        notes.append("no probing columns: no --probing_dir given")
    elif args.probing_at == "boundaries":
        notes.append("probing accuracies (SentEval's fasttest classifier setting) at the checkpoints of each run's "
                     "phase boundaries only (--probing_at all: every checkpoint)")
    if probing_tasks is not None and args.probing_limit:
        dropped = {name: t.dropped for name, t in probing_tasks.items() if t.dropped}
        notes.append(f"probing on at most {args.probing_limit} examples per split (--probing_limit)"
                     + (f"; dev/test examples of labels missing from that training sample left out: {dropped}"
                        if dropped else ""))
    notes += [f"{r['name']}: {r['status']} (its checkpoints so far are analysed)" for r in runs
              if r["status"] not in FINISHED]
    return notes


def main(argv=None):
    args = parse_args(argv)

    # ---- runs and data: all read and checked before any model is loaded
    try:
        runs = load_runs(args.runs)
        check_output_path(args.out, "--out", folder=True)
        if not (args.dev_file or args.probe_file):  # the sets the runs trained with
            vars(args).update(recorded_eval_sets(runs))
        eval_sets = load_eval_sets(args.data_dir, args.probe_split, "--data_dir", args.dev_file, args.dev_columns,
                                   args.probe_file)
        test_tasks = load_sts_tasks(args.data_dir, "test") if args.sts_test else None
        probing_tasks = None
        if args.probing_dir:
            from utils.probing import load_probing_tasks

            probing_tasks = load_probing_tasks(args.probing_dir, args.probing_limit)
    except (FileNotFoundError, ValueError) as err:  # DataError is a ValueError
        fail(str(err))
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")

    # ---- the phases of each run, from its training log (utils.phase.segment: one definition)
    phases = {run["name"]: phase_analysis(run["log"], args.phase_metric, run["best_step"]) for run in runs}

    # ---- the sweep: every checkpoint scored as training scored it; probing where asked
    total = sum(len(r["checkpoints"]) for r in runs)
    print(f"{len(runs)} run(s), {total} checkpoints | rank = {args.phase_metric} | dev set {eval_sets.names['dev']} "
          f"| probe set {eval_sets.names['probe']} | {device}")
    start = time.time()
    sweep = Sweep(eval_sets, test_tasks, probing_tasks, args.energy_tau, args.batch_size, device,
                  store=MeasurementStore(args.out))  # what an earlier analysis into --out measured is not measured again
    rows_by_run = sweep.run(runs, {run["name"]: probe_steps(args, run, phases[run["name"]]) for run in runs})
    seconds = time.time() - start

    # ---- the checkpoints at the phase boundaries: STS test and probing there
    for run in runs:
        run["notes"] += add_checkpoint_metrics(phases[run["name"]], rows_by_run[run["name"]])
        if args.sts_test:  # the best checkpoint's STS test sets, swept (else run.sh's sts_test.json of best/)
            run["sts_test"] = (phases[run["name"]]["checkpoints"]["best"] or {}).get("sts_test_avg", run["sts_test"])

    # ---- groups and findings
    groups = group_runs(runs)
    group_of = {r["name"]: g["label"] for g in groups for r in g["runs"]}
    results_by_run = {run["name"]: run_result(run, rows_by_run[run["name"]], phases[run["name"]], group_of[run["name"]])
                      for run in runs}
    group_results = [group_stats(g, results_by_run, args.phase_metric) for g in groups]
    findings, findings_by_method = judge_by_method(runs, groups, phases, args.phase_metric)
    logs = {run["name"]: log_series(run["log"], args.phase_metric) for run in runs}
    results = {
        "settings": {**vars(args), "probe_sentences": eval_sets.probe[2], "eval_sets": eval_sets.names, "device": str(device),
                     "sts_test_source": "the full STS test sets at the best checkpoint (--sts_test)" if args.sts_test
                     else "run.sh's sts_test.json of each run's best/ (evaluate.py), where present"},
        "columns": None,
        "runs": list(results_by_run.values()),
        "groups": group_results,
        "findings": findings,
        "findings_by_method": findings_by_method,
        "bands": {g["label"]: {m: band([logs[r["name"]] for r in g["runs"]], m)
                               for m in (args.phase_metric, "stsb_dev")} for g in groups},
        "seconds": round(seconds, 1),
        "notes": analysis_notes(args, runs, sweep, probing_tasks),
    }

    # ---- outputs
    os.makedirs(args.out, exist_ok=True)
    results["columns"] = write_csv(os.path.join(args.out, "checkpoints.csv"),
                                   [r for run in runs for r in rows_by_run[run["name"]]])
    from utils.plots import write_plots

    plots, plots_note = write_plots(args.out, runs, rows_by_run, results, args.phase_metric)
    results["plots"], results["plots_note"] = plots, plots_note
    write_summary(os.path.join(args.out, "summary.json"), results)
    report = markdown(results, rows_by_run, plots, plots_note)
    with open(os.path.join(args.out, "report.md"), "w") as f:
        f.write(report)
    print(report)
    print(f"{total} checkpoints in {seconds:.0f} s; wrote {args.out}/checkpoints.csv, summary.json, report.md"
          + (f" and {len(plots)} plots" if plots else ""))


def run_result(run: dict, rows: list, ph: dict, group: str) -> dict:
    """One run's entry of summary.json; its checkpoint rows labelled with their group and phase on the way."""
    for row, phase in zip(rows, phase_labels([r["step"] for r in rows], ph["peak"]["step"], ph["best"]["step"])):
        row.update(group=group, phase=phase, is_peak=int(row["step"] == ph["peak"]["step"]),
                   is_best=int(row["step"] == ph["best"]["step"]))
    return {"name": run["name"], "dir": run["dir"], "status": run["status"], "group": group, "seed": run["seed"],
            "checkpoints": len(rows), "phases": ph, "sts_test": run["sts_test"], "compute": run["compute"],
            "embeddings": run["embeddings"], "notes": run["notes"]}


if __name__ == "__main__":
    main()
