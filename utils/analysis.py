"""The study's analysis (analyze_rank.py): the two phases of each run and the groups of runs compared. Pure
functions of plain dicts and lists; no model is loaded.

The phases have one definition, `utils.phase.segment`, read here over each run's training log: its eval and
rank records (dense early, where the rank peaks), with the best checkpoint the one best/ holds. Phase 1 runs
from the first evaluation to the rank peak, Phase 2 from the peak to the best checkpoint. Quantities only a
checkpoint gives (the STS test sets, probing) are read at the swept checkpoint at each boundary step, or at the
nearest one (said so). The report, the checkpoint table and the findings all use these phases.
"""

import argparse
import json
import math

import numpy as np

from utils.phase import describe_peak, segment
from utils.rank import RANK_METRICS
from utils.rank_reduction import RankReduction
from utils.runs import FINISHED, method_of

MIN_POINTS = 4  # fewer evaluations than this in a phase: no correlation is reported
# what utils.scoring.score gives and the training log holds; the other metric columns come from checkpoints only
LOG_METRICS = (*RANK_METRICS, "alignment", "uniformity", "stsb_dev", "sickr_dev")
CHECKPOINT_PREFIXES = ("sts_test_", "probing_")
BOUNDARIES = ("start", "peak", "best")
# Run arguments that do not define a configuration: which seed, where it went, how it was restarted.
NOT_CONFIG = ("seed", "output_dir", "resume_from_checkpoint")


def _flags_of(add_arguments) -> tuple:
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return tuple(vars(parser.parse_args([])))


# train.py's Rank Reduction settings, as the RR object registers them; those after the penalty's own four
# steer its schedule
RR_FLAGS = _flags_of(RankReduction.add_arguments)
SCHEDULE_FLAGS = tuple(f for f in RR_FLAGS if f not in ("rank_reduction", "rr_on", "rr_solver", "rr_start"))


def finite(v) -> bool:
    """A number that is neither NaN nor infinite (None and booleans are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _change(start, end):
    return end - start if finite(start) and finite(end) else None


# ----------------------------------------------------------------------------- phases


def correlation(x, y, min_points: int = MIN_POINTS) -> dict:
    """Spearman's rho and Kendall's tau (scipy, two-sided p-values) of paired series, with n and a note:
    "too few points" where n < min_points, "undefined: constant series" where either is constant."""
    from scipy.stats import kendalltau, spearmanr

    pairs = [(a, b) for a, b in zip(x, y) if finite(a) and finite(b)]
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


def log_series(log, rank_key: str = "effective_rank") -> list[dict]:
    """The evaluations the phases are read from: one record per step (the last written), in step order, those
    with a finite `rank_key`."""
    by_step = {r["step"]: r for r in log}
    return [by_step[s] for s in sorted(by_step) if finite(by_step[s].get(rank_key))]


def _full(record) -> bool:
    """A full evaluation (train.py's `eval` record: best/ is selected among them) with a finite STS-B dev."""
    return record.get("event", "eval") == "eval" and finite(record.get("stsb_dev"))


def best_index(series, best_step=None) -> tuple:
    """(index, source): the evaluation at `best_step` (the run's best/) where the log has it, else the full
    evaluation with the highest STS-B dev (earliest on ties); (None, None) without a finite score."""
    steps = [r["step"] for r in series]
    if best_step is not None and best_step in steps:
        return steps.index(best_step), "best/"
    full = [(r["stsb_dev"], -i) for i, r in enumerate(series) if _full(r)]
    if not full:
        return None, None
    return -max(full)[1], "highest logged STS-B dev"


def _phase(series, part: dict, metrics, rank_key: str) -> dict:
    if "absent" in part:
        return {"absent": part["absent"]}
    inside = [series[i] for i in part["indices"]]
    first, last = inside[0], inside[-1]
    return {
        "start_step": part["start_step"], "end_step": part["end_step"], "n": len(inside),
        "start": {m: first.get(m) for m in metrics}, "end": {m: last.get(m) for m in metrics},
        "delta": {m: _change(first.get(m), last.get(m)) for m in metrics},
        "correlation": correlation([r[rank_key] for r in inside], [r.get("stsb_dev") for r in inside]),
    }


def phase_analysis(log, rank_key: str = "effective_rank", best_step=None) -> dict:
    """Phase 1 and Phase 2 of one run (`utils.phase.segment`) over its training log (eval and rank records, any
    order), and what they show.

    Returns {"peak": offline_peak of `rank_key` + "description", "best": {"step", "stsb_dev", "source"}, "last"
    (the last full evaluation: {"step", "stsb_dev"}), "rank": {"first", "last", "last_step"} (the series' ends),
    "boundaries": {"start", "peak", "best": the log's record there, or None}, "phase1", "phase2"}: a phase is
    {"start_step", "end_step", "n" (evaluations, both ends included), "start", "end", "delta" (end - start of
    every logged metric), "correlation" (`rank_key` vs STS-B dev over its evaluations)} or {"absent": why}.
    """
    series = log_series(log, rank_key)
    steps = [r["step"] for r in series]
    b, source = best_index(series, best_step)
    parts = segment(steps, [r[rank_key] for r in series], steps[b] if b is not None else None)
    peak = {**parts["peak"], "description": describe_peak(parts["peak"], rank_key)}
    metrics = [m for m in LOG_METRICS if any(m in r for r in series)]
    full = sorted((r for r in log if _full(r)), key=lambda r: r["step"])
    at = {"start": 0 if series else None, "peak": peak["index"], "best": b}
    return {
        "peak": peak,
        "best": {"step": steps[b] if b is not None else None,
                 "stsb_dev": series[b]["stsb_dev"] if b is not None else None, "source": source},
        "last": {"step": full[-1]["step"] if full else None, "stsb_dev": full[-1]["stsb_dev"] if full else None},
        "rank": {"first": series[0][rank_key], "last": series[-1][rank_key], "last_step": steps[-1]} if series
        else {"first": None, "last": None, "last_step": None},
        "boundaries": {k: {"step": steps[i], **{m: series[i].get(m) for m in metrics}} if i is not None else None
                       for k, i in at.items()},
        "phase1": _phase(series, parts["phase1"], metrics, rank_key),
        "phase2": _phase(series, parts["phase2"], metrics, rank_key),
    }


def nearest(steps, step):
    """The step of `steps` closest to `step` (the earlier on ties), or None."""
    return min(steps, key=lambda s: (abs(s - step), s), default=None) if step is not None else None


def boundary_checkpoints(phases: dict, steps) -> dict:
    """{"start", "peak", "best": the checkpoint step (of `steps`) its quantities are read at, or None}."""
    return {k: nearest(steps, (phases["boundaries"][k] or {}).get("step")) for k in BOUNDARIES}


def add_checkpoint_metrics(phases: dict, rows: list) -> list[str]:
    """Adds the checkpoint-only quantities of `rows` (a run's swept checkpoints: STS test, probing) at each phase
    boundary: phases["checkpoints"] = {"start", "peak", "best": {"step" (the checkpoint read), values} or None},
    and their change over each present phase to its "start", "end" and "delta" (None where both ends read the
    same checkpoint). Returns a note for each boundary read at another step."""
    metrics = sorted({k for r in rows for k in r if k.startswith(CHECKPOINT_PREFIXES)})
    by_step = {r["step"]: r for r in rows}
    read = boundary_checkpoints(phases, by_step)
    phases["checkpoints"] = {k: {"step": s, **{m: by_step[s].get(m) for m in metrics}} if s is not None else None
                             for k, s in read.items()}
    for key, (a, b) in (("phase1", ("start", "peak")), ("phase2", ("peak", "best"))):
        phase = phases[key]
        if "absent" in phase or not metrics:
            continue
        first, last = phases["checkpoints"][a] or {}, phases["checkpoints"][b] or {}
        phase["checkpoint_steps"] = [first.get("step"), last.get("step")]
        for m in metrics:
            phase["start"][m], phase["end"][m] = first.get(m), last.get(m)
            same = first.get("step") == last.get("step")
            phase["delta"][m] = None if same else _change(first.get(m), last.get(m))
    return [f"the {k} (step {phases['boundaries'][k]['step']}): STS test and probing read at the nearest swept "
            f"checkpoint, step {s}" for k, s in read.items()
            if metrics and s is not None and s != phases["boundaries"][k]["step"]]


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


def group_kind(args: dict | None) -> str:
    """"baseline", "rr" (a constant weight) or "rr-schedule" from a run's arguments."""
    if not args or not (args.get("rank_reduction") or 0) > 0:
        return "baseline"
    return "rr" if args.get("rr_schedule", "constant") == "constant" else "rr-schedule"


def group_runs(runs) -> list[dict]:
    """Runs with the same configuration, in first-seen order: [{"key", "label", "kind", "differs", "runs"}].

    "differs": the args whose values tell this group from the others; "label": "baseline" or "RR λ=w"
    (by rank_reduction), plus `name=value` for every other differing arg. Where the runs are of several
    methods, or of one other than SimCSE, the label starts with the method's name (`utils.runs.method_of`:
    "ESimCSE", "ESimCSE + RR λ=0.1"); an arg is named only where it differs between runs of the same method
    (its own flags and its recipe's batch, lr and epochs are part of the method's name). Runs without args
    each form their own group, labelled by the run's name."""
    groups = {}
    for run in runs:
        key = config_key(run["args"]) if run["args"] else f"run:{run['dir']}"
        groups.setdefault(key, {"key": key, "kind": group_kind(run["args"]), "runs": []})["runs"].append(run)
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
            parts = [method_of(group["runs"][0]) + ("" if weight == 0 else f" + RR λ={weight:g}")]
        parts += [f"{k}={config.get(k)}" for k in differing if k not in ("rank_reduction", "method")
                  and not (k in RR_FLAGS and weight == 0)  # RR's settings mean nothing without RR
                  and not (k == "rr_schedule" and config.get(k) == "constant")
                  and len({json.dumps(c.get(k)) for c in same_method}) > 1]
        group["label"] = ", ".join(parts)
    labels = [g["label"] for g in groups]
    for i, group in enumerate(groups):  # same label, different config (an arg outside the label differs)
        if labels.count(group["label"]) > 1:
            group["label"] += f" #{labels[: i + 1].count(group['label'])}"
    return groups


def _config_less(group: dict, free) -> dict | None:
    if group["key"].startswith("run:"):
        return None
    return {k: v for k, v in json.loads(group["key"]).items() if k not in free}


def counterpart(group: dict, candidates: list, free, what: str, settings: str) -> tuple[dict | None, str | None]:
    """(the group of `candidates` whose configuration differs from `group`'s in the `free` args alone, None), or
    (None, why there is none). Where several do, the one that agrees with `group` on most `free` args; a tie
    is said, never broken by the order of the runs. `what`, `settings`: the candidates' and the free args'
    names, for the reason."""
    own = _config_less(group, free)
    same = [c for c in candidates if own is not None and _config_less(c, free) == own]
    if not same:
        return None, f"no {what} group differs from it in {settings} alone"
    config = json.loads(group["key"])
    agree = {c["label"]: sum(json.loads(c["key"]).get(k) == config.get(k) for k in free) for c in same}
    top = max(agree.values())
    best = [c for c in same if agree[c["label"]] == top]
    if len(best) > 1:
        return None, f"several {what} groups differ from it in {settings} alone: " + \
            ", ".join(sorted(c["label"] for c in best))
    return best[0], None


def mean_std(values) -> dict:
    """{"mean", "std" (sample, ddof=1; None for n < 2), "n", "values"} of the finite values."""
    values = [float(v) for v in values if finite(v)]
    return {"mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": len(values), "values": values}


def group_stats(group, results: dict, rank_key: str) -> dict:
    """Mean ± std over one group's runs. `results`: {run name: {"phases": phase_analysis output, "sts_test":
    float or None, "compute": utils.runs.compute_of output (optional)}}. The rank-peak step is averaged over
    interior peaks only (a peak at the first or last evaluation is no peak); the peak rank over all runs."""
    names = [r["name"] for r in group["runs"]]
    phases = [results[n]["phases"] for n in names]
    compute = [results[n].get("compute") or {} for n in names]
    interior = [p["peak"] for p in phases if p["peak"]["where"] == "interior"]
    return {
        "label": group["label"], "kind": group["kind"], "method": method_of(group["runs"][0]),
        "differs": group["differs"], "runs": names, "seeds": [r["seed"] for r in group["runs"]],
        "unfinished": [r["name"] for r in group["runs"] if r["status"] not in FINISHED],
        "best_stsb_dev": mean_std([p["best"]["stsb_dev"] for p in phases]),
        "sts_test_avg": mean_std([results[n]["sts_test"] for n in names]),
        "best_step": mean_std([p["best"]["step"] for p in phases]),
        "best_seconds": mean_std([c.get("best_train_seconds") for c in compute]),
        "steps": mean_std([c.get("steps") for c in compute]),
        "train_seconds": mean_std([c.get("train_seconds") for c in compute]),
        "peak_step": mean_std([p["step"] for p in interior]),
        "interior_peaks": len(interior),
        f"peak_{rank_key}": mean_std([p["peak"]["value"] for p in phases]),
    }


def band(rows_per_run, metric: str) -> dict:
    """Mean, std and min/max of `metric` over runs at every step all runs have it: rows_per_run is one
    list of records (dicts with "step") per run. Returns {"steps", "mean", "std" (sample; 0 with one run),
    "min", "max"} as lists (the overlay plot's curve and band)."""
    tables = [{r["step"]: r.get(metric) for r in rows if finite(r.get(metric))} for rows in rows_per_run]
    common = sorted(set.intersection(*(set(t) for t in tables))) if tables else []
    if not common:
        return {"steps": [], "mean": [], "std": [], "min": [], "max": []}
    values = np.array([[t[s] for t in tables] for s in common], dtype=float)
    std = values.std(1, ddof=1) if len(tables) > 1 else np.zeros(len(common))
    return {"steps": common, "mean": values.mean(1).tolist(), "std": std.tolist(),
            "min": values.min(1).tolist(), "max": values.max(1).tolist()}
