"""The study's bookkeeping (analyze_rank.py): training runs on disk, their checkpoints, the two phases of
each run and the comparison of run groups. Pure functions of plain dicts and lists; no model is loaded.

Phases (Jung et al. 2024), over one run's checkpoints sorted by step: Phase 1 runs from the first
checkpoint (step 0) to the rank peak, the checkpoint with the highest rank (the earliest on ties:
`utils.phase.offline_peak`, the function train.py's summary uses); Phase 2 from the peak to the best STS-B
dev checkpoint (the run's `best/`, training's pick among its evaluations). Both ends belong to the phase.
A peak at the first checkpoint means no Phase 1, a peak at the last one no Phase 2 yet, and a best
checkpoint at or before the peak no Phase 2: each is said so, nothing is invented.
"""

import hashlib
import json
import math
import os

import numpy as np

from utils.checkpoint import export_dirs
from utils.phase import describe_peak, offline_peak
from utils.run_log import MetricsLog

MIN_POINTS = 4  # fewer checkpoints than this in a phase: no correlation is reported
# Run arguments that do not define a configuration: which seed, where it went, how it was restarted.
NOT_CONFIG = ("seed", "output_dir", "resume_from_checkpoint")
# train.py's Rank Reduction settings: left out of a baseline's label (rank_reduction 0), where they do nothing
RR_ONLY = ("rr_on", "rr_start", "rr_schedule", "rr_decay_steps", "rr_patience")


# ----------------------------------------------------------------------------- runs on disk


def _read_json(path, notes: list):
    """The JSON object in `path`; None if there is no such file, or (with a note) if it is not one, e.g.
    cut short by a kill or a full disk: the run is then read as if the file were missing."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        notes.append(f"{path} is not valid JSON ({err}): read as missing")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path} holds a JSON {type(obj).__name__}, not an object: read as missing")
        return None
    return obj


def eval_pooler_of(args: dict) -> str:
    """The pooler train.py evaluates with (utils.model.SimCSEModel.eval_pooler), from the run's args."""
    if args.get("pooler_type", "cls") == "cls" and args.get("mlp_only_train", True):
        return "cls_before_pooler"
    return args.get("pooler_type", "cls")


def load_run(run_dir: str) -> dict:
    """What analyze_rank.py needs to know about one train.py output folder.

    Returns {"name", "dir", "status" ("finished", train.py's "stopped: ..." or "unfinished" without
    summary.json), "args" (summary.json's, else a checkpoint's checkpoint.json; None if neither),
    "seed", "eval_pooler", "best_step" (best/best_metrics.json), "log_peak" (summary's offline peak of the
    training log, or None), "sts_test" (the avg of run.sh's sts_test.json of best/, or None), "log" (the
    eval and rank records of metrics.jsonl), "checkpoints" (see `list_checkpoints`), "notes"}.
    A JSON file that cannot be read is taken as missing, and metrics.jsonl with a bad line other than a
    cut last one as empty, each with a note. Raises FileNotFoundError where `run_dir` is no train.py
    output folder.
    """
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        raise FileNotFoundError(f"{run_dir}: not a train.py output folder (no metrics.jsonl)")
    notes = []
    summary = _read_json(os.path.join(run_dir, "summary.json"), notes)
    exports = export_dirs(os.path.join(run_dir, "checkpoints"))
    args = summary["args"] if summary else None
    if args is None and exports:
        args = (_read_json(os.path.join(exports[0][1], "checkpoint.json"), notes) or {}).get("args")
    best = _read_json(os.path.join(run_dir, "best", "best_metrics.json"), notes)
    sts_test = _read_json(os.path.join(run_dir, "sts_test.json"), notes)
    try:  # MetricsLog.read skips a last line cut by a kill (train.py resumes after it) but no other bad line
        log = MetricsLog(os.path.join(run_dir, "metrics.jsonl")).read()
    except ValueError as err:
        notes.append(f"{err}: the training log is left out (no log correlations for this run)")
        log = []
    run = {
        "name": os.path.basename(os.path.normpath(run_dir)),
        "dir": run_dir,
        "status": summary["status"] if summary else "unfinished",
        "args": args,
        "seed": args.get("seed") if args else None,
        "eval_pooler": summary["eval_pooler"] if summary else eval_pooler_of(args) if args else None,
        "best_step": best["step"] if best else None,
        "log_peak": summary["rank"]["offline_peak"] if summary else None,
        "sts_test": sts_test.get("avg") if sts_test else None,
        "log": [r for r in log if r.get("event") in ("eval", "rank")],
        "notes": notes,
    }
    run["checkpoints"] = list_checkpoints(run, exports)
    return run


def list_checkpoints(run: dict, exports=None) -> list[dict]:
    """[{"step", "path", "pooler", "source"}] sorted by step, one per step: checkpoints/step-NNNNNN/
    (train.py --save_steps), best/ and peak/ where their step has no export (same weights otherwise), and
    step 0 from the starting model (args.model_name_or_path with the eval pooler) where no export has it.
    `pooler` None means: the checkpoint's own config.sentence_pooler. Adds to run["notes"]."""
    run_dir = run["dir"]
    if exports is None:
        exports = export_dirs(os.path.join(run_dir, "checkpoints"))
    found = {step: {"step": step, "path": path, "pooler": None, "source": os.path.relpath(path, run_dir)}
             for step, path in exports}
    for folder, marker in (("best", "best_metrics.json"), ("peak", "peak_step.json")):
        info = _read_json(os.path.join(run_dir, folder, marker), run["notes"])
        if info is not None and info["step"] not in found:
            found[info["step"]] = {"step": info["step"], "path": os.path.join(run_dir, folder), "pooler": None,
                                   "source": folder}
    args = run["args"]
    if 0 not in found:
        if not args:
            run["notes"].append("no step-0 checkpoint and no run arguments: the starting model is not swept")
        elif args.get("pooler_type") == "cls" and not args.get("mlp_only_train", True):
            run["notes"].append("no step-0 checkpoint: the starting model evaluates through a freshly "
                                "initialised MLP that only a --save_steps export keeps, so step 0 is not swept")
        else:
            found[0] = {"step": 0, "path": args["model_name_or_path"], "pooler": run["eval_pooler"],
                        "source": "starting model"}
    if not exports:
        run["notes"].append("no checkpoints/ exports (train.py --save_steps): only the starting, best and "
                            "peak checkpoints are swept")
    return [found[step] for step in sorted(found)]


WEIGHT_FILES = (".safetensors", ".bin", ".pt")


def weights_fingerprint(path: str) -> str:
    """A digest of a checkpoint's weights: sha256 over its weight files (names and bytes), so checkpoints
    that hold the same weights (every run's step-0 export of one starting model, a best/ copied from an
    export) are measured once. A hub name, or a folder without weight files, is its own fingerprint."""
    if not os.path.isdir(path):
        return f"name:{path}"
    files = sorted(f for f in os.listdir(path) if f.endswith(WEIGHT_FILES))
    if not files:
        return f"folder:{os.path.abspath(path)}"
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(path, name), "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------- phases


def correlation(x, y, min_points: int = MIN_POINTS) -> dict:
    """Spearman's rho and Kendall's tau (scipy, two-sided p-values) of paired series, with n and a note:
    "too few points" where n < min_points, "undefined: constant series" where either is constant."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)]
    out = {"n": len(pairs), "spearman": None, "spearman_p": None, "kendall": None, "kendall_p": None,
           "note": None}
    if len(pairs) < min_points:
        out["note"] = f"too few points (n={len(pairs)} < {min_points})"
        return out
    a, b = (np.array(v, dtype=float) for v in zip(*pairs))
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        out["note"] = "undefined: constant series"
        return out
    rho, tau = spearmanr(a, b), kendalltau(a, b)
    out.update(spearman=float(rho.statistic), spearman_p=float(rho.pvalue),
               kendall=float(tau.statistic), kendall_p=float(tau.pvalue))
    return out


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def best_index(steps, stsb_dev, best_step=None) -> tuple:
    """(index, source): the checkpoint at `best_step` (the run's best/) where it was swept, else the
    highest STS-B dev (earliest on ties); (None, None) without a finite score."""
    if best_step is not None and best_step in steps:
        return steps.index(best_step), "best/"
    finite = [(v, -i) for i, v in enumerate(stsb_dev) if _finite(v)]
    if not finite:
        return None, None
    return -max(finite)[1], "highest swept STS-B dev"


def _phase(rows, start, end, metrics, rank_key, log=None) -> dict:
    first, last = rows[start], rows[end]
    inside = rows[start : end + 1]
    phase = {
        "start_step": first["step"], "end_step": last["step"], "n": len(inside),
        "start": {m: first.get(m) for m in metrics}, "end": {m: last.get(m) for m in metrics},
        "delta": {m: last[m] - first[m] if _finite(first.get(m)) and _finite(last.get(m)) else None
                  for m in metrics},
        "correlation": correlation([r[rank_key] for r in inside], [r["stsb_dev"] for r in inside]),
    }
    if log is not None:  # the training log's full evaluations in the same step range (denser in Phase 2)
        evals = [r for r in log if "stsb_dev" in r and first["step"] <= r["step"] <= last["step"]]
        phase["log_correlation"] = correlation([r.get(rank_key) for r in evals], [r["stsb_dev"] for r in evals])
    return phase


def phase_analysis(rows, rank_key: str = "effective_rank", metrics=None, best_step=None, log=None) -> dict:
    """Split one run's checkpoint rows (dicts with "step", `rank_key`, "stsb_dev", ... ; any order) into
    Phase 1 and Phase 2 and describe both.

    Returns {"peak": offline_peak of `rank_key` + "description", "best": {"step", "stsb_dev", "source"},
    "phase1", "phase2"}: a phase is {"start_step", "end_step", "n" (checkpoints, both ends included),
    "start", "end", "delta" (end - start of every metric), "correlation" (`rank_key` vs STS-B dev over
    its checkpoints), "log_correlation" (the same over `log`'s full evaluations, where given)} or
    {"absent": the reason}. `metrics`: the columns whose change is reported (default: every numeric key).
    """
    rows = sorted(rows, key=lambda r: r["step"])
    steps = [r["step"] for r in rows]
    if metrics is None:
        metrics = [k for k in rows[0] if k != "step" and isinstance(rows[0][k], (int, float))] if rows else []
    peak = offline_peak(steps, [r.get(rank_key) for r in rows])
    peak["description"] = describe_peak(peak, rank_key).replace("evaluation", "checkpoint")  # ours are checkpoints
    b, source = best_index(steps, [r.get("stsb_dev") for r in rows], best_step)
    out = {"peak": peak, "best": {"step": steps[b] if b is not None else None,
                                  "stsb_dev": rows[b]["stsb_dev"] if b is not None else None, "source": source}}
    p = peak["index"]
    if p is None:
        out["phase1"] = out["phase2"] = {"absent": f"no {rank_key} was measured"}
        return out
    out["phase1"] = (_phase(rows, 0, p, metrics, rank_key, log) if p > 0 else
                     {"absent": f"no Phase 1: {rank_key} was highest at the first checkpoint (step {steps[0]})"})
    if peak["where"] == "end":
        out["phase2"] = {"absent": f"no Phase 2 yet: {rank_key} was still highest at the last checkpoint "
                                   f"(step {steps[p]})"}
    elif b is None:
        out["phase2"] = {"absent": "no Phase 2: no STS-B dev score"}
    elif b <= p:
        out["phase2"] = {"absent": f"no Phase 2: the best STS-B dev checkpoint (step {steps[b]}) "
                                   f"{'is' if b == p else 'comes before'} the rank peak (step {steps[p]})"}
    else:
        out["phase2"] = _phase(rows, p, b, metrics, rank_key, log)
    return out


def phase_labels(steps, peak_step, best_step) -> list[str]:
    """checkpoints.csv's `phase` column: "1" before the peak, "peak", "2" after it up to the best
    checkpoint, "after" beyond that. Phase 1 = {"1", "peak"}, Phase 2 = {"peak", "2"}."""
    labels = []
    for s in steps:
        if peak_step is None:
            labels.append("")
        elif s < peak_step:
            labels.append("1")
        elif s == peak_step:
            labels.append("peak")
        elif best_step is not None and s <= best_step:
            labels.append("2")
        else:
            labels.append("after")
    return labels


# ----------------------------------------------------------------------------- groups


def config_key(args) -> str:
    """The configuration a run belongs to: its args less NOT_CONFIG, as canonical JSON."""
    if not args:
        return "null"
    # unset flags (another method's, or newer than the run) and the default method say nothing: a run
    # saved before a flag existed groups with the runs after it
    return json.dumps({k: v for k, v in sorted(args.items()) if k not in NOT_CONFIG and v is not None
                       and not (k == "method" and v == "simcse")}, sort_keys=True)


def method_label(args) -> str:
    """The name of a run's method ("SimCSE" for runs from before train.py had --method, or without args)."""
    from utils.methods import METHODS

    return METHODS[(args or {}).get("method") or "simcse"].label


def group_runs(runs) -> list[dict]:
    """Runs with the same configuration, in first-seen order: [{"key", "label", "differs", "runs"}].

    "differs": the args whose values tell this group from the others; "label": "baseline" or "RR λ=w"
    (by rank_reduction), plus `name=value` for every other differing arg. Where the runs are of several
    methods, or of one other than SimCSE, the label starts with the method's name ("ESimCSE",
    "ESimCSE + RR λ=0.1"); an arg is named only where it differs between runs of the same method (its own
    flags and its recipe's batch, lr and epochs are part of the method's name). Runs without args each form
    their own group, labelled by the run's name."""

    groups = {}
    for run in runs:
        key = config_key(run["args"]) if run["args"] else f"run:{run['dir']}"
        groups.setdefault(key, {"key": key, "runs": []})["runs"].append(run)
    groups = list(groups.values())
    configs = [json.loads(g["key"]) if not g["key"].startswith("run:") else None for g in groups]
    names = sorted({k for c in configs if c for k in c})
    differing = [k for k in names if len({json.dumps(c.get(k)) for c in configs if c}) > 1]
    methods = {(c or {}).get("method") or "simcse" for c in configs}
    for group, config in zip(groups, configs):
        if config is None:
            group["differs"], group["label"] = {}, group["runs"][0]["name"]
            continue
        group["differs"] = {k: config.get(k) for k in differing}
        weight = config.get("rank_reduction", 0) or 0
        method = config.get("method") or "simcse"
        same_method = [c for c in configs if c and (c.get("method") or "simcse") == method]
        parts = ["baseline" if weight == 0 else f"RR λ={weight:g}"]
        if methods != {"simcse"}:
            parts = [method_label(config) + ("" if weight == 0 else f" + RR λ={weight:g}")]
        parts += [f"{k}={config.get(k)}" for k in differing if k not in ("rank_reduction", "method")
                  and not (k in RR_ONLY and weight == 0)  # RR's settings mean nothing without RR
                  and not (k == "rr_schedule" and config.get(k) == "constant")
                  and len({json.dumps(c.get(k)) for c in same_method}) > 1]
        group["label"] = ", ".join(parts)
    labels = [g["label"] for g in groups]
    for i, group in enumerate(groups):  # same label, different config (an arg outside the label differs)
        if labels.count(group["label"]) > 1:
            group["label"] += f" #{labels[: i + 1].count(group['label'])}"
    return groups


def mean_std(values) -> dict:
    """{"mean", "std" (sample, ddof=1; None for n < 2), "n", "values"} of the finite values."""
    values = [float(v) for v in values if _finite(v)]
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), "values": values}


def group_stats(group, results: dict, rank_key: str) -> dict:
    """Mean ± std over one group's runs. `results`: {run name: {"phases": phase_analysis output,
    "sts_test": float or None}}. The rank-peak step is averaged over interior peaks only (a peak at the
    first or last checkpoint is no peak); the peak rank over all runs."""
    names = [r["name"] for r in group["runs"]]
    phases = [results[n]["phases"] for n in names]
    interior = [p["peak"] for p in phases if p["peak"]["where"] == "interior"]
    return {
        "label": group["label"], "differs": group["differs"], "runs": names,
        "seeds": [r["seed"] for r in group["runs"]],
        "unfinished": [r["name"] for r in group["runs"] if r["status"] != "finished"],
        "best_stsb_dev": mean_std([p["best"]["stsb_dev"] for p in phases]),
        "sts_test_avg": mean_std([results[n]["sts_test"] for n in names]),
        "best_step": mean_std([p["best"]["step"] for p in phases]),
        "peak_step": mean_std([p["step"] for p in interior]),
        "interior_peaks": len(interior),
        f"peak_{rank_key}": mean_std([p["peak"]["value"] for p in phases]),
    }


def band(rows_per_run, metric: str) -> dict:
    """Mean, std and min/max of `metric` over runs at every step all runs have it: rows_per_run is one
    list of checkpoint rows per run. Returns {"steps", "mean", "std" (sample; 0 with one run), "min",
    "max"} as lists (the overlay plot's curve and band)."""
    tables = [{r["step"]: r.get(metric) for r in rows if _finite(r.get(metric))} for rows in rows_per_run]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    if not common:
        return {"steps": [], "mean": [], "std": [], "min": [], "max": []}
    values = np.array([[t[s] for t in tables] for s in common], dtype=float)
    std = values.std(1, ddof=1) if len(tables) > 1 else np.zeros(len(common))
    return {"steps": common, "mean": values.mean(1).tolist(), "std": std.tolist(),
            "min": values.min(1).tolist(), "max": values.max(1).tolist()}
