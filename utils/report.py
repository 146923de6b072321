"""analyze_rank.py's tables: checkpoints.csv (one row per checkpoint), summary.json and report.md.

The report's numbers all come from the `results` dict analyze_rank.py builds, the same one summary.json
holds, so report, JSON and CSV agree; a reader can recompute every peak and correlation from the CSV.
"""

import csv
import math
import os

from utils.run_log import write_json_atomic

BASE_COLUMNS = ["run", "group", "seed", "step", "phase", "is_peak", "is_best", "source"]
METRIC_COLUMNS = ["effective_rank", "vne", "eig_effective_rank", "energy_rank", "alignment", "uniformity",
                  "stsb_dev", "sickr_dev"]
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
                   f"{name}: step {ph['start_step']} → {ph['end_step']} ({ph['n']} checkpoints)")
    return "; ".join(out)


def run_section(name: str, run: dict, rows, rank_key: str) -> list[str]:
    """One run: the peak in words, start/peak/best values with the change over each phase, and the
    within-phase correlation of the rank with STS-B dev."""
    phases = run["phases"]
    peak, best = phases["peak"], phases["best"]
    lines = [f"### {name}", "", f"{run['status']}; group *{run['group']}*, seed {run['seed']}; "
             f"{len(rows)} checkpoints (steps {', '.join(str(r['step']) for r in rows)}).", "",
             f"- {peak['description'][0].upper() + peak['description'][1:]}."]
    if best["step"] is not None:
        lines.append(f"- Best STS-B dev {best['stsb_dev']:.2f} at step {best['step']} ({best['source']}).")
    if run.get("log_peak"):
        lines.append(f"- Training log ({rank_key} at every rank evaluation): "
                     f"{run['log_peak']['description'] or ''}.")
    lines.append(f"- {_phase_bounds(phases)}.")
    lines += [f"- Note: {n}" for n in run["notes"]] + [""]
    by_step = {r["step"]: r for r in rows}
    start = rows[0] if rows else {}
    at_peak = by_step.get(peak["step"], {})
    at_best = by_step.get(best["step"], {})
    cols = [m for m in metric_columns(rows)]
    header = ["metric", f"start (step {start.get('step', '–')})", f"peak (step {peak['step']})",
              f"best (step {best['step']})", "Δ Phase 1", "Δ Phase 2"]
    body = []
    for m in cols:
        d1 = phases["phase1"].get("delta", {}).get(m)
        d2 = phases["phase2"].get("delta", {}).get(m)
        body.append([label(m), _num(start.get(m)), _num(at_peak.get(m)), _num(at_best.get(m)),
                     _num(d1, "+.4g") if "delta" in phases["phase1"] else "–",
                     _num(d2, "+.4g") if "delta" in phases["phase2"] else "–"])
    lines += _table(header, body) + [""]
    corr_rows = []
    for key, pname in (("phase1", "Phase 1"), ("phase2", "Phase 2")):
        ph = phases[key]
        if "absent" in ph:
            corr_rows.append([pname, "–", "–", ph["absent"], "", "–"])
            continue
        rho, tau = _corr(ph["correlation"])
        log = ph.get("log_correlation")
        corr_rows.append([pname, f"{ph['start_step']} → {ph['end_step']}", ph["correlation"]["n"], rho, tau,
                          _short_corr(log) if log else "–"])
    lines += _table(["phase", "steps", "checkpoints", f"Spearman ρ ({rank_key} vs STS-B dev)", "Kendall τ",
                     "training-log evals ρ / τ"], corr_rows) + [""]
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
            f"≥ {t['min_points']} points per phase. Rules: `utils/findings.py`.", "",
            *_table(["#", "claim", "measured", "statistic", "verdict"], rows), ""]


def markdown(results: dict, rows_by_run: dict, plots: list, plots_note) -> str:
    s = results["settings"]
    rank_key = s["phase_metric"]
    n_ckpt = sum(len(v) for v in rows_by_run.values())
    lines = ["# Representation rank through fine-tuning", "",
             f"`analyze_rank.py` over {len(results['runs'])} run(s), {n_ckpt} checkpoints. Rank = `{rank_key}` "
             f"of the STS-B {s['probe_split']} probe set ({s['probe_sentences']} sentences); STS-B dev and SICK-R "
             "dev are Spearman × 100. Phase 1 = step 0 → the rank peak (the checkpoint with the highest rank, "
             "earliest on ties); Phase 2 = the peak → the best STS-B dev checkpoint (the run's `best/`). "
             "Correlations are over the checkpoints of a phase, both ends included; every number can be "
             "recomputed from `checkpoints.csv` (Phase 1 = rows with phase 1 or peak, Phase 2 = peak or 2).", ""]
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
              "or last checkpoint).", ""]
    if len(results["groups"]) > 1:
        differs = sorted({k for g in results["groups"] for k in g["differs"]})
        lines += [f"Groups differ in: {', '.join(f'`{k}`' for k in differs)}.", ""]
    lines += ["## Runs", ""]
    body = []
    for run in results["runs"]:
        ph = run["phases"]
        body.append([run["name"], run["group"], run["seed"], run["status"], len(rows_by_run[run["name"]]),
                     f"{ph['peak']['step']} ({ph['peak']['where']})", ph["best"]["step"],
                     _num(ph["best"]["stsb_dev"], ".2f"),
                     _short_corr(ph["phase1"]["correlation"]) if "correlation" in ph["phase1"] else "no Phase 1",
                     _short_corr(ph["phase2"]["correlation"]) if "correlation" in ph["phase2"] else "no Phase 2"])
    lines += _table(["run", "group", "seed", "status", "checkpoints", "rank-peak step", "best step",
                     "best STS-B dev", "Phase 1 ρ / τ", "Phase 2 ρ / τ"], body) + [""]
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
