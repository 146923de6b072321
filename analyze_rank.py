"""Sweep the checkpoints of train.py runs and turn them into the two-phase picture of Jung et al. (2024):
rank metrics, alignment/uniformity and STS-B dev at every checkpoint, Phase 1 (start -> rank peak) and
Phase 2 (peak -> best STS-B dev checkpoint) per run, and seeds x configurations compared.

    # the runs of run.sh's study (train.py --save_steps keeps the checkpoints swept here)
    python analyze_rank.py --runs runs/study/runs/*-seed* --data_dir data --out runs/study/analysis

    # also the full STS test sets, and SentEval's probing tasks at step 0, the rank peak and the best
    python analyze_rank.py --runs runs/a runs/b --data_dir ../shared/data --sts_test \
        --probing_dir ../shared/data/probing --probing_at boundaries --out results/rank

Checkpoints of a run: checkpoints/step-NNNNNN/ (train.py --save_steps), best/, peak/, and step 0 from
the starting model where no export has it. Each checkpoint is embedded once (utils.encode, the run's
evaluation embedding: an export's config.sentence_embedding, e.g. PromptBERT's template and [MASK] state,
else its pooler; the starting model is read the way the run's exports are) and every metric reads that one
cache, in train.py's order, so a checkpoint scores
what the training log says it scored. Outputs in --out: checkpoints.csv, summary.json, report.md (also
printed) and PNG plots (matplotlib is optional: without it the tables are written and plots skipped).
"""

import argparse
import json
import os
import sys
import time

import torch

from utils.analysis import band, group_runs, group_stats, load_run, phase_analysis, phase_labels, weights_fingerprint
from utils.cli import number
from utils.data import DataError, check_output_path
from utils.encode import EmbeddingCache, default_max_length, encode, parse_device, sentence_embedding_of
from utils.findings import judge_by_method
from utils.model import ModelLoadError, load_pretrained
from utils.pooling import PooledEncoder
from utils.rank import RANK_METRICS, probe_metrics, stsb_probe
from utils.report import markdown, metric_columns, write_csv, write_summary
from utils.sts import load_sts_tasks, score_sts


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--runs", nargs="+", required=True, help="train.py output folders")
    p.add_argument("--data_dir", required=True, help="SentEval data/ folder (STS-B dev, SICK-R trial, STS test)")
    p.add_argument("--out", default="results/rank_analysis", help="checkpoints.csv, summary.json, report.md, *.png")
    p.add_argument("--phase_metric", default="effective_rank", choices=RANK_METRICS,
                   help="the rank metric whose peak splits Phase 1 from Phase 2")
    p.add_argument("--sts_test", action="store_true", help="also the 7 STS test sets at every checkpoint")
    p.add_argument("--probing_dir", default=None,
                   help="SentEval probing files (split<TAB>label<TAB>sentence); any of the ten tasks found")
    p.add_argument("--probing_at", default="all", choices=["all", "boundaries"],
                   help="probing at every checkpoint, or only at each run's step 0, rank peak and best checkpoint "
                        "(what the phase changes need; 3 checkpoints a run)")
    p.add_argument("--probing_limit", type=number(int, 1), default=None,
                   help="at most this many examples of each probing split (train/dev/test; the files are shuffled, "
                        "so a random sample): probing a checkpoint then costs a fraction of the full files, with "
                        "noisier accuracies (default: all)")
    p.add_argument("--probe_split", default="dev", choices=["train", "dev", "test"],
                   help="STS-B split whose sentences are the probe set (train.py's --probe_split)")
    p.add_argument("--energy_tau", type=number(float, 0, inclusive=False), default=0.9, help="energy_rank's tau")
    p.add_argument("--batch_size", type=number(int, 1), default=128, help="sentences per encode batch (on a GPU: a budget of this x 64 tokens)")
    p.add_argument("--device", type=parse_device, default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    if args.energy_tau > 1:
        p.error(f"argument --energy_tau: must be <= 1, got {args.energy_tau}")
    return args


def embedding_of(checkpoint: dict, config, run_embedding: dict | None) -> dict:
    """{"pooler", "template", "period"} one checkpoint is read with: an export's own config.sentence_embedding,
    else its config.sentence_pooler (else cls); the starting model (its pooler given by the run) the run's
    exports' sentence_embedding where they record one, so every step of a run is the same embedding.
    Raises ModelLoadError for a malformed sentence_embedding (the checkpoint is then skipped, with a note)."""
    if checkpoint["pooler"] is not None:
        return run_embedding or {"pooler": checkpoint["pooler"], "template": None, "period": False}
    try:
        spec = sentence_embedding_of(config)
    except ValueError as err:
        raise ModelLoadError(f"{checkpoint['path']}/{err}") from None
    return spec or {"pooler": getattr(config, "sentence_pooler", None) or "cls", "template": None, "period": False}


def run_sentence_embedding(run: dict) -> dict | None:
    """The config.sentence_embedding of the run's first export that records a readable one, else None."""
    for checkpoint in run["checkpoints"]:
        if checkpoint["pooler"] is not None:  # the starting model, not an export
            continue
        try:
            with open(os.path.join(checkpoint["path"], "config.json")) as f:
                spec = sentence_embedding_of(json.load(f))
        except (OSError, ValueError):  # left to that checkpoint's own load, which notes it
            continue
        if spec:
            return spec
    return None


def main(argv=None):
    args = parse_args(argv)

    def fail(message):
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2)

    # ---- runs and data: all read and checked before any model is loaded
    runs = []
    for run_dir in args.runs:
        try:
            runs.append(load_run(run_dir))
        except FileNotFoundError as err:
            fail(str(err))
    names = [r["name"] for r in runs]
    for run in runs:  # two runs with the same folder name (from two studies) are told apart by path
        if names.count(run["name"]) > 1:
            run["name"] = os.path.normpath(run["dir"])
    if len({r["name"] for r in runs}) < len(runs):
        fail("the same run folder is given twice")
    try:
        check_output_path(args.out, "--out", folder=True)
        probe_sentences, probe_pairs = stsb_probe(args.data_dir, args.probe_split)
        dev_tasks = load_sts_tasks(args.data_dir, "dev")
        test_tasks = load_sts_tasks(args.data_dir, "test") if args.sts_test else None
        probing_tasks = None
        if args.probing_dir:
            from utils.probing import load_probing_tasks

            probing_tasks = load_probing_tasks(args.probing_dir, args.probing_limit)
    except DataError as err:
        fail(str(err))
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    import transformers

    transformers.utils.logging.disable_progress_bar()  # one progress bar: ours, over checkpoints

    measured_once = {}  # (weights, embedding, what) -> row: the same weights read the same way are measured once
    reused = []

    def measure(checkpoint, sts: bool, probing: bool, run_embedding: dict | None = None) -> dict:
        """Load one checkpoint, embed each sentence once, and compute what is asked for. `run_embedding`:
        the sentence_embedding the run's exports record, which the starting model is read with."""
        encoder, tokenizer = load_pretrained(checkpoint["path"], flag="--runs")
        spec = embedding_of(checkpoint, encoder.config, run_embedding)
        key = (weights_fingerprint(checkpoint["path"]), json.dumps(spec, sort_keys=True), sts, probing)
        if key in measured_once:
            reused.append(checkpoint["path"])
            return dict(measured_once[key])
        try:
            model = PooledEncoder(encoder, spec["pooler"], mask_token_id=tokenizer.mask_token_id).to(device)
        except ValueError as err:  # the mask pooler on a tokenizer without a mask token
            raise ModelLoadError(f"{checkpoint['path']}: {err}") from None
        max_length = default_max_length(tokenizer, encoder.config)
        embed = EmbeddingCache(lambda s: encode(model, tokenizer, s, batch_size=args.batch_size, max_length=max_length,
                                                device=device, template=spec["template"], period=spec["period"]))
        row = {}
        if sts:  # train.py's order: probe set, then STS-B dev / SICK-R trial (same batches, same numbers)
            row.update(probe_metrics(embed(probe_sentences), probe_pairs, tau=args.energy_tau))
            dev = score_sts(embed, dev_tasks)["tasks"]
            row.update(stsb_dev=dev["STSBenchmark"]["spearman"], sickr_dev=dev["SICKRelatedness"]["spearman"])
            if test_tasks:
                test = score_sts(embed, test_tasks)
                row["sts_test_avg"] = test["avg"]
                row.update({f"sts_test_{task}": t["spearman"] for task, t in test["tasks"].items()})
        if probing:
            from utils.classifier import CONFIGS
            from utils.transfer import run_tasks

            result = run_tasks(probing_tasks, embed, CONFIGS["fasttest"], device=device, log=lambda *a: None)
            row.update({f"probing_{task}": acc for task, acc in result["scores"].items()})
            row["probing_avg"] = result["avg"]
        measured_once[key] = dict(row)
        return row

    # ---- the sweep: every checkpoint of every run, one progress bar
    from tqdm.auto import tqdm

    run_embeddings = {run["name"]: run_sentence_embedding(run) for run in runs}
    total = sum(len(r["checkpoints"]) for r in runs)
    print(f"{len(runs)} run(s), {total} checkpoints | rank = {args.phase_metric} | probe set: STS-B "
          f"{args.probe_split}, {len(probe_sentences)} sentences | {device}")
    start = time.time()
    rows_by_run = {}
    with tqdm(total=total, desc="checkpoints", unit="ckpt") as progress:
        for run in runs:
            rows = []
            for checkpoint in list(run["checkpoints"]):
                progress.set_postfix_str(f"{run['name']} step {checkpoint['step']}")
                every = probing_tasks is not None and args.probing_at == "all"
                try:
                    measured = measure(checkpoint, sts=True, probing=every, run_embedding=run_embeddings[run["name"]])
                except ModelLoadError as err:  # e.g. a deleted or corrupted export, a hub name offline
                    run["notes"].append(f"step {checkpoint['step']} ({checkpoint['source']}) skipped: {err.reason}")
                    run["checkpoints"].remove(checkpoint)
                    continue
                finally:
                    progress.update(1)
                rows.append({"run": run["name"], "seed": run["seed"], "step": checkpoint["step"],
                             "source": checkpoint["source"], "checkpoint": checkpoint["path"], **measured})
            rows_by_run[run["name"]] = rows

    # ---- phases per run (probing at the phase boundaries needs the peak first: a second, short pass)
    def analyse(run):
        rows = rows_by_run[run["name"]]
        return phase_analysis(rows, args.phase_metric, metric_columns(rows), run["best_step"], run["log"])

    phases = {run["name"]: analyse(run) for run in runs}
    if probing_tasks is not None and args.probing_at == "boundaries":
        todo = []
        for run in runs:
            rows, ph = rows_by_run[run["name"]], phases[run["name"]]
            wanted = {rows[0]["step"] if rows else None, ph["peak"]["step"], ph["best"]["step"]} - {None}
            todo += [(run, row) for row in rows if row["step"] in wanted]
        for run, row in tqdm(todo, desc="probing", unit="ckpt"):
            checkpoint = next(c for c in run["checkpoints"] if c["step"] == row["step"])
            row.update(measure(checkpoint, sts=False, probing=True, run_embedding=run_embeddings[run["name"]]))
        phases = {run["name"]: analyse(run) for run in runs}
    seconds = time.time() - start

    # ---- per-run results, groups
    groups = group_runs(runs)
    group_of = {r["name"]: g["label"] for g in groups for r in g["runs"]}
    results_by_run = {}
    for run in runs:
        ph = phases[run["name"]]
        rows = rows_by_run[run["name"]]
        best_row = next((r for r in rows if r["step"] == ph["best"]["step"]), {})
        sts_test = best_row.get("sts_test_avg", run["sts_test"]) if args.sts_test else run["sts_test"]
        for row, phase in zip(rows, phase_labels([r["step"] for r in rows], ph["peak"]["step"], ph["best"]["step"])):
            row.update(group=group_of[run["name"]], phase=phase, is_peak=int(row["step"] == ph["peak"]["step"]),
                       is_best=int(row["step"] == ph["best"]["step"]))
        results_by_run[run["name"]] = {
            "name": run["name"], "dir": run["dir"], "status": run["status"], "group": group_of[run["name"]],
            "seed": run["seed"], "checkpoints": len(rows), "phases": ph, "sts_test": sts_test,
            "log_peak": run["log_peak"], "notes": run["notes"],
        }
    group_results = [group_stats(g, results_by_run, args.phase_metric) for g in groups]
    findings, findings_by_method = judge_by_method(runs, groups, phases, args.phase_metric)
    notes = []
    if reused:
        notes.append(f"{len(reused)} measurement(s) of a checkpoint whose weights an earlier one already had "
                     "(e.g. every run's step-0 export of the same starting model) reused that one's numbers")
    if probing_tasks is None:
        notes.append("no probing columns: no --probing_dir given")
    elif args.probing_at == "boundaries":
        notes.append("probing accuracies (SentEval's fasttest classifier setting) at each run's step 0, rank "
                     "peak and best checkpoint only (--probing_at all: every checkpoint)")
    if probing_tasks is not None and args.probing_limit:
        dropped = {name: t.dropped for name, t in probing_tasks.items() if t.dropped}
        notes.append(f"probing on at most {args.probing_limit} examples per split (--probing_limit)"
                     + (f"; dev/test examples of labels missing from that training sample left out: {dropped}"
                        if dropped else ""))
    for run in runs:
        if run["status"] != "finished":
            notes.append(f"{run['name']}: {run['status']} (its checkpoints so far are analysed)")
    results = {
        "settings": {**vars(args), "probe_sentences": len(probe_sentences), "device": str(device),
                     "sts_test_source": "the full STS test sets at the best checkpoint (--sts_test)" if args.sts_test
                     else "run.sh's sts_test.json of each run's best/ (evaluate.py), where present"},
        "columns": None,
        "runs": list(results_by_run.values()),
        "groups": group_results,
        "findings": findings,
        "findings_by_method": findings_by_method,
        "bands": {g["label"]: {m: band([rows_by_run[run["name"]] for run in g["runs"]], m)
                               for m in (args.phase_metric, "stsb_dev")} for g in groups},
        "seconds": round(seconds, 1),
        "notes": notes,
    }

    # ---- outputs
    os.makedirs(args.out, exist_ok=True)
    all_rows = [r for run in runs for r in rows_by_run[run["name"]]]
    results["columns"] = write_csv(os.path.join(args.out, "checkpoints.csv"), all_rows)
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


if __name__ == "__main__":
    main()
