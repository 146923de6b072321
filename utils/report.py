"""analyze_rank.py's tables: checkpoints.csv (one row per checkpoint), summary.json and report.md.

The report's numbers all come from the `results` dict analyze_rank.py builds, the same one summary.json
holds, so report and JSON agree; the CSV holds every swept checkpoint, whose logged metrics equal the
training log's at the same step.
"""

import csv
import math
import os

from utils.analysis import LOG_METRICS
from utils.files import write_json_atomic
from utils.sweep import EMBEDDING_USE

BASE_COLUMNS = ["run", "group", "seed", "step", "phase", "is_peak", "is_best", "source"]
METRIC_COLUMNS = list(LOG_METRICS)
LABELS = {"effective_rank": "effective rank", "vne": "VNE", "eig_effective_rank": "exp(VNE)",
          "energy_rank": "energy rank", "alignment": "alignment", "uniformity": "uniformity",
          "stsb_dev": "STS-B dev", "sickr_dev": "SICK-R dev", "sts_test_avg": "STS test avg",
          "probing_avg": "probing avg"}


def metric_columns(rows) -> list[str]:
    """The metric columns present, in a fixed order: rank metrics, alignment/uniformity, STS dev, then the
    STS test columns (avg first) and the probing ones (per task, then avg) where computed."""
    present = {k for r in rows for k in r}
    extra = sorted(k for k in present if k.startswith("sts_test_") and k != "sts_test_avg")
    probing = sorted(k for k in present if k.startswith("probing_") and k != "probing_avg")
    ordered = METRIC_COLUMNS + ["sts_test_avg"] + extra + probing + ["probing_avg"]
    return [k for k in ordered if k in present]


def label(metric: str) -> str:
    if metric in LABELS:
        return LABELS[metric]
    for prefix, name in (("sts_test_", "test "), ("probing_", "probing ")):
        if metric.startswith(prefix):
            return name + metric[len(prefix):]
    return metric


def write_csv(path: str, rows) -> list[str]:
    """Rows (dicts) -> CSV with BASE_COLUMNS, the metric columns and `checkpoint` (its path); floats at
    full precision, missing values empty. Returns the header."""
    header = BASE_COLUMNS + metric_columns(rows) + ["checkpoint"]
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row.get(k) is None or (isinstance(row.get(k), float) and not
                                                             math.isfinite(row[k])) else row[k] for k in header})
    os.replace(tmp, path)
    return header


def write_summary(path: str, results: dict) -> None:
    write_json_atomic(path, results, indent=2)


# ----------------------------------------------------------------------------- Markdown


def _num(v, spec: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, spec)


def _pm(stat: dict, spec: str = ".2f") -> str:
    if stat["mean"] is None:
        return "–"
    text = format(stat["mean"], spec)
    if stat["std"] is not None:
        text += " ± " + format(stat["std"], spec)
    return f"{text} (n={stat['n']})"


def _corr(c: dict) -> tuple[str, str]:
    if c["note"]:
        return c["note"], ""
    return (f"{c['spearman']:+.3f} (p={c['spearman_p']:.3g})", f"{c['kendall']:+.3f} (p={c['kendall_p']:.3g})")


def _short_corr(c: dict) -> str:
    return "n<4" if c["note"] and c["note"].startswith("too few") else "const." if c["note"] else \
        f"{c['spearman']:+.2f} / {c['kendall']:+.2f} (n={c['n']})"


def _table(header, rows) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + \
        ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _phase_bounds(phases) -> str:
    out = []
    for key, name in (("phase1", "Phase 1"), ("phase2", "Phase 2")):
        ph = phases[key]
        out.append(f"{name}: {ph['absent']}" if "absent" in ph else
                   f"{name}: step {ph['start_step']} → {ph['end_step']} ({ph['n']} evaluations)")
    return "; ".join(out)


def _compute(c: dict) -> str:
    if not c or c.get("steps") is None:
        return "compute unknown"
    text = f"trained {c['steps']} steps in {_num(c.get('train_seconds'), '.0f')} s"
    if c.get("best_step") is not None:
        text += f", the best at step {c['best_step']} after {_num(c.get('best_train_seconds'), '.0f')} s"
    return f"{text} ({c['source']})"


def _at(values: dict | None, boundary_step, metric: str) -> str:
    """A boundary's value; a checkpoint read at another step than the boundary's says which."""
    if not values:
        return "–"
    text = _num(values.get(metric))
    return text if values["step"] == boundary_step or text == "–" else f"{text} (step {values['step']})"


def run_section(name: str, run: dict, rows, rank_key: str) -> list[str]:
    """One run: the peak in words, its compute, the values at the phase boundaries with the change over each
    phase, and the within-phase correlation of the rank with STS-B dev."""
    phases = run["phases"]
    peak, best = phases["peak"], phases["best"]
    lines = [f"### {name}", "", f"{run['status']}; group *{run['group']}*, seed {run['seed']}; "
             f"{len(rows)} checkpoints (steps {', '.join(str(r['step']) for r in rows)}); "
             f"{_compute(run.get('compute'))}.", "",
             f"- {peak['description'][0].upper() + peak['description'][1:]}."]
    if best["step"] is not None:
        lines.append(f"- Best STS-B dev {best['stsb_dev']:.2f} at step {best['step']} ({best['source']}).")
    lines.append(f"- {_phase_bounds(phases)}.")
    for which, described in (run.get("embeddings") or {}).items():
        lines.append(f"- {which} embedding ({EMBEDDING_USE[which]}): {'; '.join(described) or '–'}.")
    lines += [f"- Note: {n}" for n in run["notes"]] + [""]
    bounds, checkpoints = phases["boundaries"], phases.get("checkpoints") or {}
    present = [{**(bounds[k] or {}), **(checkpoints.get(k) or {})} for k in bounds]
    cols = metric_columns(present)
    steps = {k: (bounds[k] or {}).get("step", "–") for k in bounds}
    header = ["metric", f"start (step {steps['start']})", f"peak (step {steps['peak']})",
              f"best (step {steps['best']})", "Δ Phase 1", "Δ Phase 2"]
    body = []
    for m in cols:
        source = bounds if m in METRIC_COLUMNS else checkpoints
        cells = [_at(source.get(k), steps[k], m) for k in ("start", "peak", "best")]
        deltas = [_num(phases[p]["delta"].get(m), "+.4g") if "delta" in phases[p] else "–"
                  for p in ("phase1", "phase2")]
        body.append([label(m), *cells, *deltas])
    lines += _table(header, body) + [""]
    corr_rows = []
    for key, pname in (("phase1", "Phase 1"), ("phase2", "Phase 2")):
        ph = phases[key]
        if "absent" in ph:
            corr_rows.append([pname, "–", "–", ph["absent"], ""])
            continue
        rho, tau = _corr(ph["correlation"])
        corr_rows.append([pname, f"{ph['start_step']} → {ph['end_step']}", ph["correlation"]["n"], rho, tau])
    lines += _table(["phase", "steps", "evaluations", f"Spearman ρ ({rank_key} vs STS-B dev)", "Kendall τ"],
                    corr_rows) + [""]
    return lines


def findings_section(findings: dict, method: str | None = None) -> list[str]:
    """The findings table (utils.findings.judge) with the rules it applied; `method`: the runs' method, where
    a report judges several methods each on its own runs."""
    t = findings["thresholds"]
    rows = [[f["id"], f["claim"], f["measured"], f["statistic"], f"**{f['verdict']}**: {f['why']}"]
            for f in findings["findings"]]
    return ["## Findings" + (f": {method}" if method else ""), "",
            f"Each claim of the paper judged on these runs (findings 1–4 on {', '.join(findings['judged_on'])}). "
            f"A verdict needs {t['min_runs']} runs per group ({t['min_runs_spread']} for a spread); per-run "
            f"effects must appear in ≥ {t['share']:.0%} of the runs; tests at p < {t['alpha']}; correlations need "
            f"≥ {t['min_points']} points per phase. Each RR group is compared with the baseline that differs from "
            "it in the RR settings alone. Rules: `utils/findings.py`.", "",
            *_table(["#", "claim", "measured", "statistic", "verdict"], rows), ""]


# what the per-method summary calls each compared number (utils.findings' `metric`)
SHORT = {"best": "STS-B dev", "sts_test": "STS test", "best_step": "steps to the best",
         "best_seconds": "seconds to the best", "steps": "steps trained", "train_seconds": "seconds trained"}


def _verdicts(findings: list, group: str) -> str:
    """The verdicts of findings 5 and 7 on one group, grouped by verdict."""
    rows = [f for f in findings if f["id"] in (5, 7) and f["detail"].get("group") == group]
    if not rows:
        return "–"
    if rows[0]["detail"].get("baseline") is None:  # no baseline to compare with: the row says why
        return f"{rows[0]['verdict']}: {rows[0]['why']}"
    by_verdict = {}
    for f in rows:
        fraction = f["detail"].get("fraction")
        ratio = f" ({fraction['mean']:.2f}×)" if fraction and fraction["mean"] is not None else ""
        by_verdict.setdefault(f["verdict"], []).append(SHORT.get(f["detail"].get("metric"), "spread") + ratio)
    verdicts = "; ".join(f"**{v}**: {', '.join(what)}" for v, what in by_verdict.items())
    return f"vs {rows[0]['detail']['baseline']}: {verdicts}"


def summary_section(results: dict) -> list[str]:
    """Per method: each group's best STS-B dev and STS test, steps and seconds to the best and in total
    (mean ± std over seeds), with the verdicts of RR against its baseline."""
    findings = {None: results.get("findings")} if results.get("findings") else {}
    findings.update(results.get("findings_by_method") or {})
    methods = list(dict.fromkeys(g["method"] for g in results["groups"]))
    body = []  # each method's groups together, its baseline first, whatever order the runs were given in
    for g in sorted(results["groups"], key=lambda g: (methods.index(g["method"]), g["kind"] != "baseline")):
        judged = findings.get(g["method"]) or findings.get(None) or {"findings": []}
        body.append([g["method"], g["label"], len(g["runs"]), _pm(g["best_stsb_dev"]), _pm(g["sts_test_avg"]),
                     _pm(g["best_step"], ".0f"), _pm(g["best_seconds"], ".0f"), _pm(g["steps"], ".0f"),
                     _pm(g["train_seconds"], ".0f"),
                     "–" if g["kind"] == "baseline" else _verdicts(judged["findings"], g["label"])])
    return ["## Summary per method", "",
            *_table(["method", "group", "runs", "best STS-B dev", "STS test avg", "steps to the best",
                     "seconds to the best", "steps trained", "seconds trained", "verdicts"], body), "",
            "Seconds are training seconds (train.py's summary: the steps' own time, evaluations not counted); "
            "steps and seconds trained end at the early stop where a run stopped early.", ""]


def _probe_set(s: dict) -> str:
    """The probe set as the settings name it (older summaries: the STS-B split and its size)."""
    names = s.get("eval_sets")
    return names["probe"] if names else f"STS-B {s['probe_split']}, {s['probe_sentences']} sentences"


def markdown(results: dict, rows_by_run: dict, plots: list, plots_note) -> str:
    s = results["settings"]
    rank_key = s["phase_metric"]
    n_ckpt = sum(len(v) for v in rows_by_run.values())
    lines = ["# Representation rank through fine-tuning", "",
             f"`analyze_rank.py` over {len(results['runs'])} run(s), {n_ckpt} checkpoints. Rank = `{rank_key}` "
             f"of the probe set ({_probe_set(s)}); STS-B dev and SICK-R dev are Spearman × 100"
             + (f" (\"STS-B dev\" here is the runs' own dev set, {s['dev_file']})" if s.get("dev_file") else "")
             + ".", "",
             "**Phases**, one definition (`utils.phase.segment`, as train.py's summary and the findings read them), "
             "over each run's training log (its full and dense rank evaluations): Phase 1 = the first evaluation "
             "(step 0) → the rank peak (the evaluation with the highest rank, earliest on ties); Phase 2 = the "
             "peak → the best checkpoint (`best/`). Both ends belong to the phase. The changes and correlations "
             "of the logged metrics are over the log's evaluations; STS test and probing, which only a "
             "checkpoint gives, are read at the swept checkpoint at each boundary step, or the nearest one "
             "(said so).", "",
             "**Embeddings**: the rank metrics, alignment, uniformity, STS-B dev and SICK-R dev are of each "
             "checkpoint's dev embedding, what training logged and selected `best/` by, so a checkpoint scores "
             "what the training log says; the STS test sets and probing are of its test embedding, what "
             "evaluate.py reports. The two differ only where a method reads two (PromptBERT); each run lists "
             "its own.", ""]
    lines += summary_section(results)
    if results.get("findings"):
        lines += findings_section(results["findings"])
    for method, findings in (results.get("findings_by_method") or {}).items():
        lines += findings_section(findings, method)
    lines += ["## Groups (mean ± std over seeds)", ""]
    body = []
    for g in results["groups"]:
        unfinished = f" ({len(g['unfinished'])} unfinished)" if g["unfinished"] else ""
        peak_step = _pm(g["peak_step"], ".0f") + f", {g['interior_peaks']}/{len(g['runs'])} runs with a peak"
        body.append([g["label"], f"{len(g['runs'])}{unfinished}", ", ".join(str(x) for x in g["seeds"]),
                     _pm(g["best_stsb_dev"]), _pm(g["sts_test_avg"]), _pm(g["best_step"], ".0f"), peak_step,
                     _pm(g[f"peak_{rank_key}"])])
    lines += _table(["group", "runs", "seeds", "best STS-B dev", "STS test avg", "best step", "rank-peak step",
                     f"peak {rank_key}"], body)
    lines += ["", f"STS test avg: {s['sts_test_source']}. Best step = convergence speed (the step of `best/`); "
              "the rank-peak step is averaged over the runs whose rank peaks inside the run (not at its first "
              "or last evaluation).", ""]
    if len(results["groups"]) > 1:
        differs = sorted({k for g in results["groups"] for k in g["differs"]})
        lines += [f"Groups differ in: {', '.join(f'`{k}`' for k in differs)}.", ""]
    lines += ["## Runs", ""]
    body = []
    for run in results["runs"]:
        ph, c = run["phases"], run.get("compute") or {}
        body.append([run["name"], run["group"], run["seed"], run["status"], len(rows_by_run[run["name"]]),
                     c.get("steps", "–"), _num(c.get("train_seconds"), ".0f"),
                     f"{ph['peak']['step']} ({ph['peak']['where']})", ph["best"]["step"],
                     _num(ph["best"]["stsb_dev"], ".2f"),
                     _short_corr(ph["phase1"]["correlation"]) if "correlation" in ph["phase1"] else "no Phase 1",
                     _short_corr(ph["phase2"]["correlation"]) if "correlation" in ph["phase2"] else "no Phase 2"])
    lines += _table(["run", "group", "seed", "status", "checkpoints", "steps trained", "seconds trained",
                     "rank-peak step", "best step", "best STS-B dev", "Phase 1 ρ / τ", "Phase 2 ρ / τ"], body)
    lines += [""]
    for run in results["runs"]:
        lines += run_section(run["name"], run, rows_by_run[run["name"]], rank_key)
    lines += ["## Plots", ""]
    if plots:
        lines += [f"![{os.path.splitext(p)[0]}]({p})" for p in plots] + [""]
    if plots_note:
        lines += [plots_note, ""]
    if results["notes"]:
        lines += ["## Notes", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)
