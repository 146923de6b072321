"""The paper's findings (Jung et al. 2024), judged on the user's runs: measured numbers, a statistic and a
verdict for each claim, computed from the runs alone (analyze_rank.py's findings table).

The phases are `utils.analysis.phase_analysis`'s (utils.phase.segment over each run's training log, to the
best checkpoint best/), the phases of the report; the score a run ends with is its last full evaluation.
Each RR group is compared with the baseline group that differs from it in the RR settings alone
(`utils.analysis.counterpart`: model, method, data and recipe equal), each schedule group with the constant-RR
group that differs from it in the schedule settings alone; where there is none, the row says so.

Verdicts: "holds", "does not hold", or "not enough runs" where fewer than MIN_RUNS runs (per group, for a
comparison) can be judged, so that nothing passes or fails on one or two seeds. Thresholds:

1. Rank peaks early, then falls: a run shows it when its peak lies inside the run (not at the first or last
   evaluation) and the rank falls by at least FALL_MIN of the peak value by the end; holds when at least
   SHARE of the runs do.
2. Alignment and uniformity move differently in the two phases: for each of the two, the change over
   Phase 1 has one sign in every run, the change over Phase 2 the other sign in every run.
3. Probing changes differently across the phases: as 2, per probing task, at the checkpoints of the
   phase boundaries (step 0, rank peak and best); holds when at least half the tasks do.
4. Rank and STS-B dev correlate with different signs in the two phases: Spearman ρ (and Kendall τ) over
   the log's evaluations of each phase (at least utils.analysis.MIN_POINTS each); holds when ρ > 0 in
   Phase 1 and ρ < 0 in Phase 2 in at least SHARE of the runs.
5. RR improves performance, speed and stability: best STS-B dev and STS test avg higher, steps and training
   seconds to the best fewer: Welch's t-test (p < ALPHA, and the difference in the claimed direction); the
   exact permutation test of the difference of means is reported beside it (with 3 + 3 seeds it has 20
   arrangements, so its p is never below 0.1). Stability is the spread over seeds (sample std): judged by
   the Brown-Forsythe test only with at least MIN_RUNS_SPREAD runs per group; with fewer, the ratio of two
   sample stds has a 95 % interval spanning more than ten-fold, so no verdict is given.
6. Beyond the paper, an RR schedule keeps RR's gain without the late collapse: mean (best − last) STS-B
   dev ≤ LATE_DROP_MAX and mean best ≥ the constant-RR group's mean best.
7. Beyond the paper, RR spends less compute: the steps and training seconds a run took in all (with
   train.py's early stop, the run ends at its stall) fewer than the baseline's, as in 5; the measured line
   gives RR's as a fraction of the baseline's mean.
"""

import math

import numpy as np

from utils.analysis import (MIN_POINTS, RR_FLAGS, SCHEDULE_FLAGS, correlation, counterpart, finite, mean_std,
                            phase_analysis)
from utils.runs import method_of

MIN_RUNS = 3  # runs (per group) a verdict needs
MIN_RUNS_SPREAD = 5  # runs per group a comparison of spreads needs
SHARE = 0.8  # share of runs that must show a per-run effect
FALL_MIN = 0.01  # relative fall of the rank after its peak that counts as falling
ALPHA = 0.05
LATE_DROP_MAX = 0.3  # STS-B dev points a run may lose between its best and its end

HOLDS, FAILS, TOO_FEW = "holds", "does not hold", "not enough runs"


# ----------------------------------------------------------------------------- helpers


def _share_verdict(flags: list, what: str) -> tuple[str, str]:
    n, k = len(flags), sum(flags)
    if n < MIN_RUNS:
        return TOO_FEW, f"{n} run(s) can be judged, {MIN_RUNS} are needed"
    need = math.ceil(SHARE * n)
    return (HOLDS if k >= need else FAILS), f"{k}/{n} runs {what} (needed: {need})"


def _signs(values) -> str:
    v = [x for x in values if finite(x)]
    return f"+{sum(x > 0 for x in v)}/−{sum(x < 0 for x in v)}"


def _flips(d1: list, d2: list) -> bool:
    """Phase 1 changes all of one sign, Phase 2 changes all of the other (every run, no zero)."""
    if not d1 or not d2 or not all(finite(x) and x != 0 for x in d1 + d2):
        return False
    s1, s2 = {x > 0 for x in d1}, {x > 0 for x in d2}
    return len(s1) == 1 and len(s2) == 1 and s1 != s2


def _pm(stat: dict, spec: str = ".3g") -> str:
    if stat["mean"] is None:
        return "–"
    return f"{stat['mean']:{spec}}" + (f" ± {stat['std']:{spec.lstrip('+')}}" if stat["std"] is not None else "")


def compare_means(a, b) -> dict:
    """b − a: the difference of means, Welch's t-test and the exact (or 9,999-resample) permutation test,
    two-sided, of two small samples."""
    from scipy.stats import permutation_test, ttest_ind

    a, b = [float(x) for x in a if finite(x)], [float(x) for x in b if finite(x)]
    out = {"n": [len(a), len(b)], "diff": None, "welch_t": None, "welch_p": None, "permutation_p": None}
    if not a or not b:
        return out
    out["diff"] = float(np.mean(b) - np.mean(a))
    if len(a) < 2 or len(b) < 2:
        return out
    if np.ptp(a + b) == 0:
        out.update(welch_p=1.0, permutation_p=1.0)
        return out
    welch = ttest_ind(b, a, equal_var=False)
    out["welch_t"] = float(welch.statistic) if math.isfinite(welch.statistic) else None
    out["welch_p"] = float(welch.pvalue) if math.isfinite(welch.pvalue) else None
    perm = permutation_test((b, a), lambda x, y: np.mean(x) - np.mean(y), permutation_type="independent",
                            alternative="two-sided", n_resamples=9999, random_state=0)
    out["permutation_p"] = float(perm.pvalue)
    return out


def compare_spreads(a, b) -> dict:
    """The sample stds of two samples, their ratio b / a, and the Brown-Forsythe test (Levene, median)."""
    from scipy.stats import levene

    a, b = [float(x) for x in a if finite(x)], [float(x) for x in b if finite(x)]
    sa = float(np.std(a, ddof=1)) if len(a) > 1 else None
    sb = float(np.std(b, ddof=1)) if len(b) > 1 else None
    out = {"n": [len(a), len(b)], "std": [sa, sb], "ratio": sb / sa if sa and sb is not None else None, "p": None}
    # from 3 per sample: with 2, both points lie equally far from their median, so the test divides by zero
    if len(a) >= 3 and len(b) >= 3 and np.ptp(a) + np.ptp(b) > 0:
        p = float(levene(b, a, center="median").pvalue)
        out["p"] = p if math.isfinite(p) else None
    return out


# ----------------------------------------------------------------------------- the findings


def judge(runs: list, groups: list, phases: dict | None = None, rank_key: str = "effective_rank") -> dict:
    """The findings table. runs: utils.runs.load_run dicts ("sts_test": the STS test avg of the best checkpoint);
    groups: utils.analysis.group_runs output; phases: {run name: utils.analysis.phase_analysis output, with the
    checkpoint quantities where swept} (default: from each run's log).

    Findings 1-4 are judged on the baseline runs (the fine-tuning the paper analyses) where there are any,
    else on all runs; 5 and 7 compare every RR group with its baseline, 6 every schedule group with its
    constant-RR group. Returns {"findings": [{"id", "claim", "measured", "statistic", "verdict", "why",
    "detail"}], "judged_on", "thresholds"}."""
    if phases is None:
        phases = {r["name"]: phase_analysis(r["log"], rank_key, r["best_step"]) for r in runs}
    baselines = [g for g in groups if g["kind"] == "baseline"]
    judged = [r["name"] for g in baselines for r in g["runs"]] or [r["name"] for r in runs]
    findings = [_rank_peak(judged, phases), _align_uniform(judged, phases), _probing(judged, phases),
                _correlation(judged, phases)]
    values = {r["name"]: _run_values(r, phases[r["name"]]) for r in runs}
    findings += _rr_improves(groups, baselines, values)
    findings += _schedule(groups, values)
    findings += _compute(groups, baselines, values)
    return {"findings": findings, "judged_on": judged,
            "thresholds": {"min_runs": MIN_RUNS, "min_runs_spread": MIN_RUNS_SPREAD, "share": SHARE,
                           "fall_min": FALL_MIN, "alpha": ALPHA, "late_drop_max": LATE_DROP_MAX,
                           "min_points": MIN_POINTS}}


def _run_values(run: dict, ph: dict) -> dict:
    """What findings 5-7 compare, of one run."""
    compute = run.get("compute") or {}
    best, last = ph["best"]["stsb_dev"], ph["last"]["stsb_dev"]
    return {"best": best, "sts_test": run.get("sts_test"), "best_step": ph["best"]["step"],
            "best_seconds": compute.get("best_train_seconds"), "steps": compute.get("steps"),
            "train_seconds": compute.get("train_seconds"),
            "drop": best - last if finite(best) and finite(last) else None}


def _finding(id_, claim, measured, statistic, verdict, why, detail) -> dict:
    return {"id": id_, "claim": claim, "measured": measured, "statistic": statistic, "verdict": verdict,
            "why": why, "detail": detail}


def _rank_peak(names, phases) -> dict:
    per_run, flags = {}, []
    for n in names:
        peak, rank = phases[n]["peak"], phases[n]["rank"]
        if peak["index"] is None:
            continue
        start, top, end = rank["first"], peak["value"], rank["last"]
        fall = top - end
        shows = peak["where"] == "interior" and top > start and fall >= FALL_MIN * abs(top)
        per_run[n] = {"peak_step": peak["step"], "where": peak["where"], "rise": top - start, "fall": fall,
                      "last_step": rank["last_step"], "shows": shows}
        flags.append(shows)
    verdict, why = _share_verdict(flags, "peak inside the run and fall after it")
    steps = mean_std([d["peak_step"] for d in per_run.values() if d["where"] == "interior"])
    measured = (f"peak step {_pm(steps, '.0f')}; rise {_pm(mean_std([d['rise'] for d in per_run.values()]))}, "
                f"fall {_pm(mean_std([d['fall'] for d in per_run.values()]))}; "
                f"{sum(d['where'] == 'interior' for d in per_run.values())}/{len(per_run)} runs peak inside")
    return _finding(1, "The rank peaks early and falls after it (Phase 1, then Phase 2)", measured,
                    f"per run: interior peak and a fall ≥ {FALL_MIN:.0%} of the peak; share of runs ≥ {SHARE:.0%}",
                    verdict, why, per_run)


def _delta(phases, name, key, phase):
    return phases[name][f"phase{phase}"].get("delta", {}).get(key)


def _two_phase_flip(names, phases, keys, labels) -> tuple[dict, list]:
    """Per key: Phase 1 and Phase 2 deltas over the runs that have both, and whether the sign flips."""
    detail, usable = {}, []
    for key in keys:
        pairs = [(_delta(phases, n, key, 1), _delta(phases, n, key, 2)) for n in names]
        pairs = [(a, b) for a, b in pairs if finite(a) and finite(b)]
        d1, d2 = [a for a, _ in pairs], [b for _, b in pairs]
        detail[key] = {"label": labels.get(key, key), "runs": len(pairs), "phase1": mean_std(d1),
                       "phase2": mean_std(d2), "phase1_signs": _signs(d1), "phase2_signs": _signs(d2),
                       "flips": _flips(d1, d2)}
        usable.append(len(pairs))
    return detail, usable


def _align_uniform(names, phases) -> dict:
    labels = {"alignment": "alignment", "uniformity": "uniformity"}
    detail, usable = _two_phase_flip(names, phases, list(labels), labels)
    measured = "; ".join(f"{k}: Δ Phase 1 {_pm(d['phase1'])} ({d['phase1_signs']}), Δ Phase 2 {_pm(d['phase2'])} "
                         f"({d['phase2_signs']})" for k, d in detail.items())
    statistic = "sign of each Δ per phase, in every run; the sign must flip between the phases"
    if min(usable) < MIN_RUNS:
        return _finding(2, "Alignment and uniformity move differently in the two phases", measured, statistic,
                        TOO_FEW, f"{min(usable)} run(s) with both phases, {MIN_RUNS} are needed", detail)
    flipped = [k for k, d in detail.items() if d["flips"]]
    verdict = HOLDS if len(flipped) == len(detail) else FAILS
    why = f"sign flips consistently for: {', '.join(flipped) or 'neither'}"
    return _finding(2, "Alignment and uniformity move differently in the two phases", measured, statistic,
                    verdict, why, detail)


def _probing(names, phases) -> dict:
    claim = "Linguistic abilities (probing) change differently across the phases"
    statistic = "per task: sign of Δ per phase at the boundary checkpoints, in every run; flips in ≥ half the tasks"
    tasks = sorted({k for n in names for p in ("phase1", "phase2") for k in phases[n][p].get("delta", {})
                    if k.startswith("probing_") and k != "probing_avg"})
    if not tasks:
        return _finding(3, claim, "no probing accuracies", statistic, TOO_FEW,
                        "no probing was measured (analyze_rank.py --probing_dir)", {})
    detail, usable = _two_phase_flip(names, phases, tasks, {t: t[len("probing_"):] for t in tasks})
    measured = "; ".join(f"{d['label']} {_pm(d['phase1'], '.2f')} / {_pm(d['phase2'], '.2f')}" for d in detail.values())
    measured = "Δ accuracy Phase 1 / Phase 2: " + measured
    if max(usable) < MIN_RUNS:
        return _finding(3, claim, measured, statistic, TOO_FEW,
                        f"{max(usable)} run(s) with probing at both phases, {MIN_RUNS} are needed", detail)
    flipped = [d["label"] for d in detail.values() if d["flips"]]
    verdict = HOLDS if 2 * len(flipped) >= len(detail) else FAILS
    return _finding(3, claim, measured, statistic, verdict,
                    f"{len(flipped)}/{len(detail)} tasks flip consistently ({', '.join(flipped) or 'none'})", detail)


def _correlation(names, phases) -> dict:
    claim = "Rank and STS-B dev correlate with different signs in the two phases (+ in Phase 1, − in Phase 2)"
    per_run, flags = {}, []
    for n in names:
        c = {p: phases[n][f"phase{p}"].get("correlation") or correlation([], []) for p in (1, 2)}
        per_run[n] = {"phase1": c[1], "phase2": c[2]}
        if c[1]["spearman"] is not None and c[2]["spearman"] is not None:
            flags.append(c[1]["spearman"] > 0 and c[2]["spearman"] < 0)
    stats = {f"phase{p}_{m}": mean_std([d[f"phase{p}"][m] for d in per_run.values()])
             for p in (1, 2) for m in ("spearman", "kendall")}
    measured = (f"Phase 1 ρ {_pm(stats['phase1_spearman'], '+.2f')}, τ {_pm(stats['phase1_kendall'], '+.2f')}; "
                f"Phase 2 ρ {_pm(stats['phase2_spearman'], '+.2f')}, τ {_pm(stats['phase2_kendall'], '+.2f')} "
                f"(log points per run, Phase 1 + 2: {_points(per_run)})")
    verdict, why = _share_verdict(flags, "with ρ > 0 in Phase 1 and ρ < 0 in Phase 2")
    if len(flags) < MIN_RUNS:
        why = (f"{len(flags)} run(s) have ≥ {MIN_POINTS} log points in both phases, {MIN_RUNS} are needed "
               "(denser --rank_eval_steps early gives Phase 1 more points)")
    return _finding(4, claim, measured, f"Spearman ρ / Kendall τ of rank vs STS-B dev over each phase's log "
                                        f"points (≥ {MIN_POINTS}), mean ± std over runs", verdict, why,
                    {"per_run": per_run, **stats})


def _points(per_run: dict) -> str:
    return ", ".join(str(d["phase1"]["n"]) + "+" + str(d["phase2"]["n"]) for d in per_run.values())


def _names(group) -> list:
    return [r["name"] for r in group["runs"]]


def _mean_finding(id_, claim, what, a, b, direction, detail, ratio=False) -> dict:
    """Group b against group a on one per-run number: means, Welch's and the permutation test, a verdict in
    `direction` (+1: higher is the claim, -1: lower); `ratio`: b's values as a fraction of a's mean too."""
    test = compare_means(a, b)
    ma, mb = mean_std(a), mean_std(b)
    measured = f"{what}: {_pm(mb, '.4g')} vs {_pm(ma, '.4g')}"
    if ratio and ma["mean"]:
        fraction = mean_std([v / ma["mean"] for v in mb["values"]])
        measured += f" (RR / baseline: {_pm(fraction, '.2f')})"
        detail = {**detail, "fraction": fraction}
    statistic = (f"Δ = {test['diff']:+.3g}, Welch p = {_p(test['welch_p'])}, permutation p = "
                 f"{_p(test['permutation_p'])}" if test["diff"] is not None else "–")
    if min(ma["n"], mb["n"]) < MIN_RUNS:
        verdict, why = TOO_FEW, f"{ma['n']} + {mb['n']} runs with {what}, {MIN_RUNS} per group are needed"
    elif test["welch_p"] is not None and test["welch_p"] < ALPHA and test["diff"] * direction > 0:
        verdict, why = HOLDS, f"{'higher' if direction > 0 else 'fewer'} with Welch p < {ALPHA}"
    else:
        verdict = FAILS
        why = ("the difference is in the other direction" if test["diff"] is not None
               and test["diff"] * direction <= 0 else f"not significant (Welch p ≥ {ALPHA})")
    return _finding(id_, claim, measured, statistic, verdict, why,
                    {**detail, **test, "mean": [ma["mean"], mb["mean"]], "std": [ma["std"], mb["std"]]})


def _no_counterpart(id_, claim, group, why) -> dict:
    return _finding(id_, claim, "–", "–", TOO_FEW, why, {"group": group["label"], "compared_with": None})


def _baseline_of(group, baselines):
    return counterpart(group, baselines, RR_FLAGS, "baseline", "the RR settings")


def _rr_improves(groups, baselines, values) -> list:
    out = []
    rr_groups = [g for g in groups if g["kind"] != "baseline"]
    if not rr_groups:
        return [_finding(5, "Rank Reduction improves performance, speed and stability", "–", "–", TOO_FEW,
                         "no RR group", {})]
    for g in rr_groups:
        base, why = _baseline_of(g, baselines)
        if base is None:
            out.append(_no_counterpart(5, f"RR improves performance, speed and stability: {g['label']}", g, why))
            continue
        names, b_names = _names(g), _names(base)
        label, detail = f"{g['label']} vs {base['label']}", {"group": g["label"], "baseline": base["label"]}
        for key, what, direction, claim in (("best", "best STS-B dev", 1, "performance (STS-B dev)"),
                                            ("sts_test", "STS test avg", 1, "performance (STS test)"),
                                            ("best_step", "steps to the best", -1, "speed (steps)"),
                                            ("best_seconds", "training seconds to the best", -1, "speed (seconds)")):
            a, b = [values[n][key] for n in b_names], [values[n][key] for n in names]
            out.append(_mean_finding(5, f"RR improves {claim}: {label}", what, a, b, direction,
                                     {**detail, "metric": key}))
        a, b = [values[n]["best"] for n in b_names], [values[n]["best"] for n in names]
        spread = compare_spreads(a, b)
        sa, sb = spread["std"]
        measured = (f"std of best STS-B dev over seeds: {_num(sb)} vs {_num(sa)}; late drop (best − last): "
                    f"{_pm(mean_std([values[n]['drop'] for n in names]))} vs "
                    f"{_pm(mean_std([values[n]['drop'] for n in b_names]))}")
        statistic = f"std ratio {_num(spread['ratio'])}, Brown-Forsythe p = {_p(spread['p'])}"
        if min(spread["n"]) < MIN_RUNS_SPREAD:
            verdict, why = TOO_FEW, (f"{spread['n'][0]} + {spread['n'][1]} runs: a spread is compared from "
                                     f"{MIN_RUNS_SPREAD} runs per group on")
        elif spread["p"] is not None and spread["p"] < ALPHA and sb < sa:
            verdict, why = HOLDS, f"smaller spread with Brown-Forsythe p < {ALPHA}"
        else:
            verdict, why = FAILS, "the spread is not significantly smaller"
        out.append(_finding(5, f"RR improves stability (spread over seeds): {label}", measured, statistic,
                            verdict, why, {**detail, **spread}))
    return out


def _schedule(groups, values) -> list:
    out = []
    constant = [g for g in groups if g["kind"] == "rr"]
    for g in (g for g in groups if g["kind"] == "rr-schedule"):
        claim = f"The RR schedule keeps RR's gain without the late collapse: {g['label']}"
        ref, why = counterpart(g, constant, SCHEDULE_FLAGS, "constant-RR", "the RR schedule settings")
        if ref is None:
            out.append(_no_counterpart(6, claim, g, why))
            continue
        drop = mean_std([values[n]["drop"] for n in _names(g)])
        best = mean_std([values[n]["best"] for n in _names(g)])
        ref_best = mean_std([values[n]["best"] for n in _names(ref)])
        ref_drop = mean_std([values[n]["drop"] for n in _names(ref)])
        measured = (f"late drop {_pm(drop)} (constant RR: {_pm(ref_drop)}); best STS-B dev {_pm(best, '.4g')} "
                    f"(constant RR: {_pm(ref_best, '.4g')})")
        statistic = f"mean (best − last) ≤ {LATE_DROP_MAX} and mean best ≥ constant RR's mean best"
        if min(drop["n"], ref_best["n"]) < MIN_RUNS:
            verdict, why = TOO_FEW, f"{drop['n']} + {ref_best['n']} runs, {MIN_RUNS} per group are needed"
        else:
            ok_drop, ok_best = drop["mean"] <= LATE_DROP_MAX, best["mean"] >= ref_best["mean"]
            verdict = HOLDS if ok_drop and ok_best else FAILS
            why = (f"late drop {'≤' if ok_drop else '>'} {LATE_DROP_MAX}; best "
                   f"{'≥' if ok_best else '<'} constant RR's")
        out.append(_finding(6, claim, measured, statistic, verdict, why,
                            {"group": g["label"], "constant_rr": ref["label"], "late_drop": drop, "best": best,
                             "constant_rr_best": ref_best, "constant_rr_late_drop": ref_drop}))
    return out


def _compute(groups, baselines, values) -> list:
    out = []
    for g in (g for g in groups if g["kind"] != "baseline"):
        base, why = _baseline_of(g, baselines)
        if base is None:
            out.append(_no_counterpart(7, f"RR spends less compute: {g['label']}", g, why))
            continue
        detail = {"group": g["label"], "baseline": base["label"]}
        for key, what in (("steps", "steps trained"), ("train_seconds", "training seconds")):
            a, b = [values[n][key] for n in _names(base)], [values[n][key] for n in _names(g)]
            out.append(_mean_finding(7, f"RR spends less compute ({what}): {g['label']} vs {base['label']}", what,
                                     a, b, -1, {**detail, "metric": key}, ratio=True))
    return out


def _num(v, spec: str = ".3g") -> str:
    return f"{v:{spec}}" if finite(v) else "–"


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def judge_by_method(runs: list, groups: list, phases: dict | None = None,
                    rank_key: str = "effective_rank") -> tuple[dict | None, dict | None]:
    """(findings, findings_by_method): `judge` on all runs where they are of one method; else None and
    {method: judge of that method's runs} (`utils.runs.method_of`), so that baseline and RR are compared
    within a method, never across methods."""
    by_method = {}
    for group in groups:
        by_method.setdefault(method_of(group["runs"][0]), []).append(group)
    if len(by_method) <= 1:
        return judge(runs, groups, phases, rank_key), None
    return None, {label: judge([r for g in gs for r in g["runs"]], gs, phases, rank_key)
                  for label, gs in by_method.items()}
