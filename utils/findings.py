"""The paper's findings (Jung et al. 2024), judged on the user's runs: measured numbers, a statistic and a
verdict for each claim, computed from the runs alone (analyze_rank.py's findings table).

Phases come from each run's training log (train.py's dense rank evaluations, which also score STS-B dev):
Phase 1 = step 0 → the rank peak (`utils.phase.offline_peak` of the log), Phase 2 = the peak → the best
STS-B dev evaluation (best/). The score a run ends with is its last full evaluation.

Verdicts: "holds", "does not hold", or "not enough runs" where fewer than MIN_RUNS runs (per group, for a
comparison) can be judged, so that nothing passes or fails on one or two seeds. Thresholds:

1. Rank peaks early, then falls: a run shows it when its peak lies inside the run (not at the first or last
   evaluation) and the rank falls by at least FALL_MIN of the peak value by the end; holds when at least
   SHARE of the runs do.
2. Alignment and uniformity move differently in the two phases: for each of the two, the change over
   Phase 1 has one sign in every run, the change over Phase 2 the other sign in every run.
3. Probing changes differently across the phases: as 2, per probing task, at the checkpoints of the
   phase boundaries (the sweep's step 0, rank peak and best); holds when at least half the tasks do.
4. Rank and STS-B dev correlate with different signs in the two phases: Spearman ρ (and Kendall τ) over
   the log's evaluations of each phase (at least utils.analysis.MIN_POINTS each); holds when ρ > 0 in
   Phase 1 and ρ < 0 in Phase 2 in at least SHARE of the runs.
5. RR improves performance, speed and stability, each RR group against the baseline: best STS-B dev and STS
   test avg higher, steps to the best fewer: Welch's t-test (p < ALPHA, and the difference in the claimed
   direction); the exact permutation test of the difference of means is reported beside it (with 3 + 3
   seeds it has 20 arrangements, so its p is never below 0.1). Stability is the spread over seeds (sample
   std): judged by the Brown-Forsythe test only with at least MIN_RUNS_SPREAD runs per group; with fewer,
   the ratio of two sample stds has a 95 % interval spanning more than ten-fold, so no verdict is given.
6. Beyond the paper, an RR schedule keeps RR's gain without the late collapse: mean (best − last) STS-B
   dev ≤ LATE_DROP_MAX and mean best ≥ the constant-RR group's mean best.
"""

import math

import numpy as np

from utils.analysis import MIN_POINTS, correlation, mean_std
from utils.phase import offline_peak

MIN_RUNS = 3  # runs (per group) a verdict needs
MIN_RUNS_SPREAD = 5  # runs per group a comparison of spreads needs
SHARE = 0.8  # share of runs that must show a per-run effect
FALL_MIN = 0.01  # relative fall of the rank after its peak that counts as falling
ALPHA = 0.05
LATE_DROP_MAX = 0.3  # STS-B dev points a run may lose between its best and its end

HOLDS, FAILS, TOO_FEW = "holds", "does not hold", "not enough runs"


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


# ----------------------------------------------------------------------------- one run's training log


def trajectory(run: dict, rank_key: str = "effective_rank") -> dict:
    """One run's log reduced to what the findings read: {"steps", "rank", "stsb_dev", "alignment",
    "uniformity"} (lists over the eval and rank records, sorted by step), "peak" (offline_peak of the rank),
    "best_step", "best" and "last" (the STS-B dev of the best and of the last full evaluation)."""
    by_step = {r["step"]: r for r in sorted(run["log"], key=lambda r: r["step"]) if _finite(r.get(rank_key))}
    steps = sorted(by_step)
    col = lambda key: [by_step[s].get(key) for s in steps]  # noqa: E731
    out = {"steps": steps, "rank": col(rank_key), "stsb_dev": col("stsb_dev"), "alignment": col("alignment"),
           "uniformity": col("uniformity")}
    out["peak"] = offline_peak(steps, out["rank"])
    full = [r for r in run["log"] if r.get("event") == "eval" and _finite(r.get("stsb_dev"))]
    full.sort(key=lambda r: r["step"])
    best = next((r for r in full if r["step"] == run.get("best_step")), None)
    if best is None and full:
        best = max(full, key=lambda r: (r["stsb_dev"], -r["step"]))
    out["best_step"] = best["step"] if best else None
    out["best"] = best["stsb_dev"] if best else None
    out["last"] = full[-1]["stsb_dev"] if full else None
    out["last_step"] = full[-1]["step"] if full else None
    return out


def _phase_points(t: dict, phase: int) -> list[int]:
    """Indices of the log points of Phase 1 (0 → peak) or Phase 2 (peak → best), both ends included; [] when
    that phase is absent."""
    p = t["peak"]["index"]
    if p is None or t["best_step"] is None:
        return []
    if phase == 1:
        return list(range(p + 1)) if p > 0 else []
    end = max((i for i, s in enumerate(t["steps"]) if s <= t["best_step"]), default=-1)
    return list(range(p, end + 1)) if end > p else []


def _delta(t: dict, key: str, phase: int):
    idx = _phase_points(t, phase)
    if not idx or not (_finite(t[key][idx[0]]) and _finite(t[key][idx[-1]])):
        return None
    return t[key][idx[-1]] - t[key][idx[0]]


# ----------------------------------------------------------------------------- helpers


def _share_verdict(flags: list, what: str) -> tuple[str, str]:
    n, k = len(flags), sum(flags)
    if n < MIN_RUNS:
        return TOO_FEW, f"{n} run(s) can be judged, {MIN_RUNS} are needed"
    need = math.ceil(SHARE * n)
    return (HOLDS if k >= need else FAILS), f"{k}/{n} runs {what} (needed: {need})"


def _signs(values) -> str:
    v = [x for x in values if _finite(x)]
    return f"+{sum(x > 0 for x in v)}/−{sum(x < 0 for x in v)}"


def _flips(d1: list, d2: list) -> bool:
    """Phase 1 changes all of one sign, Phase 2 changes all of the other (every run, no zero)."""
    if not d1 or not d2 or not all(_finite(x) and x != 0 for x in d1 + d2):
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

    a, b = [float(x) for x in a if _finite(x)], [float(x) for x in b if _finite(x)]
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

    a, b = [float(x) for x in a if _finite(x)], [float(x) for x in b if _finite(x)]
    sa = float(np.std(a, ddof=1)) if len(a) > 1 else None
    sb = float(np.std(b, ddof=1)) if len(b) > 1 else None
    out = {"n": [len(a), len(b)], "std": [sa, sb], "ratio": sb / sa if sa and sb is not None else None, "p": None}
    if len(a) >= 2 and len(b) >= 2 and np.ptp(a) + np.ptp(b) > 0:
        out["p"] = float(levene(b, a, center="median").pvalue)
    return out


# ----------------------------------------------------------------------------- groups


def group_kind(args: dict | None) -> str:
    """"baseline", "rr" (a constant weight) or "rr-schedule" from a run's arguments."""
    if not args or not (args.get("rank_reduction") or 0) > 0:
        return "baseline"
    return "rr" if args.get("rr_schedule", "constant") == "constant" else "rr-schedule"


# ----------------------------------------------------------------------------- the findings


def judge(runs: list, groups: list, sweep_phases: dict | None = None, rank_key: str = "effective_rank") -> dict:
    """The findings table. runs: utils.analysis.load_run dicts; groups: utils.analysis.group_runs output;
    sweep_phases: {run name: utils.analysis.phase_analysis of its checkpoint sweep} (probing deltas).

    Findings 1-4 are judged on the baseline runs (the fine-tuning the paper analyses) where there are any,
    else on all runs; finding 5 compares every RR group with the baseline group, 6 every schedule group with
    the constant-RR group. Returns {"findings": [{"id", "claim", "measured", "statistic", "verdict",
    "why", "detail"}], "judged_on", "thresholds"}."""
    traj = {r["name"]: trajectory(r, rank_key) for r in runs}
    kinds = {g["label"]: group_kind(g["runs"][0]["args"]) for g in groups}
    baseline_groups = [g for g in groups if kinds[g["label"]] == "baseline"]
    judged = [r["name"] for g in baseline_groups for r in g["runs"]] or [r["name"] for r in runs]
    sweep_phases = sweep_phases or {}
    findings = [
        _rank_peak(judged, traj),
        _align_uniform(judged, traj),
        _probing(judged, sweep_phases),
        _correlation(judged, traj),
    ]
    base = baseline_groups[0] if baseline_groups else None
    runs_by_name = {r["name"]: r for r in runs}
    findings += _rr_improves(groups, kinds, base, traj, runs_by_name)
    findings += _schedule(groups, kinds, traj)
    return {"findings": findings, "judged_on": judged,
            "thresholds": {"min_runs": MIN_RUNS, "min_runs_spread": MIN_RUNS_SPREAD, "share": SHARE,
                           "fall_min": FALL_MIN, "alpha": ALPHA, "late_drop_max": LATE_DROP_MAX,
                           "min_points": MIN_POINTS}}


def _finding(id_, claim, measured, statistic, verdict, why, detail) -> dict:
    return {"id": id_, "claim": claim, "measured": measured, "statistic": statistic, "verdict": verdict,
            "why": why, "detail": detail}


def _rank_peak(names, traj) -> dict:
    per_run, flags = {}, []
    for n in names:
        t = traj[n]
        peak = t["peak"]
        if peak["index"] is None:
            continue
        start, top, end = t["rank"][0], peak["value"], t["rank"][-1]
        fall = top - end
        shows = peak["where"] == "interior" and top > start and fall >= FALL_MIN * abs(top)
        per_run[n] = {"peak_step": peak["step"], "where": peak["where"], "rise": top - start, "fall": fall,
                      "last_step": t["steps"][-1], "shows": shows}
        flags.append(shows)
    verdict, why = _share_verdict(flags, "peak inside the run and fall after it")
    steps = mean_std([d["peak_step"] for d in per_run.values() if d["where"] == "interior"])
    measured = (f"peak step {_pm(steps, '.0f')}; rise {_pm(mean_std([d['rise'] for d in per_run.values()]))}, "
                f"fall {_pm(mean_std([d['fall'] for d in per_run.values()]))}; "
                f"{sum(d['where'] == 'interior' for d in per_run.values())}/{len(per_run)} runs peak inside")
    return _finding(1, "The rank peaks early and falls after it (Phase 1, then Phase 2)", measured,
                    f"per run: interior peak and a fall ≥ {FALL_MIN:.0%} of the peak; share of runs ≥ {SHARE:.0%}",
                    verdict, why, per_run)


def _two_phase_flip(names, delta_of, keys, labels) -> tuple[dict, list]:
    """Per key: Phase 1 and Phase 2 deltas over the runs that have both, and whether the sign flips."""
    detail, usable = {}, []
    for key in keys:
        pairs = [(delta_of(n, key, 1), delta_of(n, key, 2)) for n in names]
        pairs = [(a, b) for a, b in pairs if _finite(a) and _finite(b)]
        d1, d2 = [a for a, _ in pairs], [b for _, b in pairs]
        detail[key] = {"label": labels.get(key, key), "runs": len(pairs), "phase1": mean_std(d1),
                       "phase2": mean_std(d2), "phase1_signs": _signs(d1), "phase2_signs": _signs(d2),
                       "flips": _flips(d1, d2)}
        usable.append(len(pairs))
    return detail, usable


def _align_uniform(names, traj) -> dict:
    labels = {"alignment": "alignment", "uniformity": "uniformity"}
    detail, usable = _two_phase_flip(names, lambda n, k, p: _delta(traj[n], k, p), list(labels), labels)
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


def _probing(names, sweep_phases) -> dict:
    claim = "Linguistic abilities (probing) change differently across the phases"
    statistic = "per task: sign of Δ per phase at the boundary checkpoints, in every run; flips in ≥ half the tasks"
    tasks = sorted({k for n in names for ph in (sweep_phases.get(n) or {},)
                    for p in ("phase1", "phase2") for k in (ph.get(p) or {}).get("delta", {})
                    if k.startswith("probing_") and k != "probing_avg"})
    if not tasks:
        return _finding(3, claim, "no probing accuracies", statistic, TOO_FEW,
                        "no probing was measured (analyze_rank.py --probing_dir)", {})

    def delta_of(name, key, phase):
        ph = (sweep_phases.get(name) or {}).get(f"phase{phase}") or {}
        return ph.get("delta", {}).get(key)

    detail, usable = _two_phase_flip(names, delta_of, tasks, {t: t[len("probing_"):] for t in tasks})
    measured = "; ".join(f"{d['label']} {_pm(d['phase1'], '.2f')} / {_pm(d['phase2'], '.2f')}" for d in detail.values())
    measured = "Δ accuracy Phase 1 / Phase 2: " + measured
    if max(usable) < MIN_RUNS:
        return _finding(3, claim, measured, statistic, TOO_FEW,
                        f"{max(usable)} run(s) with probing at both phases, {MIN_RUNS} are needed", detail)
    flipped = [d["label"] for d in detail.values() if d["flips"]]
    verdict = HOLDS if 2 * len(flipped) >= len(detail) else FAILS
    return _finding(3, claim, measured, statistic, verdict,
                    f"{len(flipped)}/{len(detail)} tasks flip consistently ({', '.join(flipped) or 'none'})", detail)


def _correlation(names, traj) -> dict:
    claim = "Rank and STS-B dev correlate with different signs in the two phases (+ in Phase 1, − in Phase 2)"
    per_run, flags = {}, []
    for n in names:
        t = traj[n]
        c = {}
        for phase in (1, 2):
            idx = _phase_points(t, phase)
            c[phase] = correlation([t["rank"][i] for i in idx], [t["stsb_dev"][i] for i in idx])
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


def _rr_improves(groups, kinds, base, traj, runs_by_name) -> list:
    out = []
    rr_groups = [g for g in groups if kinds[g["label"]] != "baseline"]
    if base is None or not rr_groups:
        why = "no baseline group" if base is None else "no RR group"
        return [_finding(5, "Rank Reduction improves performance, speed and stability", "–", "–", TOO_FEW, why, {})]
    b_names = [r["name"] for r in base["runs"]]

    def values(names, what):
        if what == "sts_test":
            return [runs_by_name[n]["sts_test"] for n in names]
        return [traj[n][what] for n in names]

    for g in rr_groups:
        names = [r["name"] for r in g["runs"]]
        label = f"{g['label']} vs {base['label']}"
        for key, what, direction, claim in (("best", "best STS-B dev", 1, "performance (STS-B dev)"),
                                            ("sts_test", "STS test avg", 1, "performance (STS test)"),
                                            ("best_step", "steps to the best", -1, "speed")):
            a, b = values(b_names, key), values(names, key)
            test = compare_means(a, b)
            ma, mb = mean_std(a), mean_std(b)
            measured = f"{what}: {_pm(mb, '.4g')} vs {_pm(ma, '.4g')}"
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
            out.append(_finding(5, f"RR improves {claim}: {label}", measured, statistic, verdict, why,
                                {"group": g["label"], "baseline": base["label"], "metric": key, **test,
                                 "mean": [ma["mean"], mb["mean"]], "std": [ma["std"], mb["std"]]}))
        a, b = values(b_names, "best"), values(names, "best")
        spread = compare_spreads(a, b)
        sa, sb = spread["std"]
        measured = (f"std of best STS-B dev over seeds: {_num(sb)} vs {_num(sa)}; late drop (best − last): "
                    f"{_pm(mean_std([_drop(traj[n]) for n in names]))} vs {_pm(mean_std([_drop(traj[n]) for n in b_names]))}")
        statistic = f"std ratio {_num(spread['ratio'])}, Brown-Forsythe p = {_p(spread['p'])}"
        if min(spread["n"]) < MIN_RUNS_SPREAD:
            verdict, why = TOO_FEW, (f"{spread['n'][0]} + {spread['n'][1]} runs: a spread is compared from "
                                     f"{MIN_RUNS_SPREAD} runs per group on")
        elif spread["p"] is not None and spread["p"] < ALPHA and sb < sa:
            verdict, why = HOLDS, f"smaller spread with Brown-Forsythe p < {ALPHA}"
        else:
            verdict, why = FAILS, "the spread is not significantly smaller"
        out.append(_finding(5, f"RR improves stability (spread over seeds): {label}", measured, statistic,
                            verdict, why, {"group": g["label"], "baseline": base["label"], **spread}))
    return out


def _drop(t: dict):
    return t["best"] - t["last"] if _finite(t["best"]) and _finite(t["last"]) else None


def _schedule(groups, kinds, traj) -> list:
    out = []
    constant = [g for g in groups if kinds[g["label"]] == "rr"]
    for g in (g for g in groups if kinds[g["label"]] == "rr-schedule"):
        names = [r["name"] for r in g["runs"]]
        drop = mean_std([_drop(traj[n]) for n in names])
        best = mean_std([traj[n]["best"] for n in names])
        claim = f"The RR schedule keeps RR's gain without the late collapse: {g['label']}"
        ref = constant[0] if constant else None
        ref_best = mean_std([traj[r["name"]]["best"] for r in ref["runs"]]) if ref else None
        ref_drop = mean_std([_drop(traj[r["name"]]) for r in ref["runs"]]) if ref else None
        measured = (f"late drop {_pm(drop)} (constant RR: {_pm(ref_drop) if ref else '–'}); best STS-B dev "
                    f"{_pm(best, '.4g')} (constant RR: {_pm(ref_best, '.4g') if ref else '–'})")
        statistic = f"mean (best − last) ≤ {LATE_DROP_MAX} and mean best ≥ constant RR's mean best"
        if ref is None:
            verdict, why = TOO_FEW, "no constant-RR group to compare with"
        elif min(drop["n"], ref_best["n"]) < MIN_RUNS:
            verdict, why = TOO_FEW, f"{drop['n']} + {ref_best['n']} runs, {MIN_RUNS} per group are needed"
        else:
            ok_drop, ok_best = drop["mean"] <= LATE_DROP_MAX, best["mean"] >= ref_best["mean"]
            verdict = HOLDS if ok_drop and ok_best else FAILS
            why = (f"late drop {'≤' if ok_drop else '>'} {LATE_DROP_MAX}; best "
                   f"{'≥' if ok_best else '<'} constant RR's")
        out.append(_finding(6, claim, measured, statistic, verdict, why,
                            {"group": g["label"], "late_drop": drop, "best": best,
                             "constant_rr_best": ref_best, "constant_rr_late_drop": ref_drop}))
    return out


def _num(v, spec: str = ".3g") -> str:
    return f"{v:{spec}}" if _finite(v) else "–"


def _p(v) -> str:
    return "–" if v is None else f"{v:.3g}"


def judge_by_method(runs: list, groups: list, sweep_phases: dict | None = None,
                    rank_key: str = "effective_rank") -> tuple[dict | None, dict | None]:
    """(findings, findings_by_method): `judge` on all runs where they are of one method; else None and
    {method label: judge of that method's runs}, so that baseline and RR are compared within a method,
    never across methods."""
    from utils.analysis import method_label

    by_method = {}
    for group in groups:
        by_method.setdefault(method_label(group["runs"][0]["args"]), []).append(group)
    if len(by_method) <= 1:
        return judge(runs, groups, sweep_phases, rank_key), None
    return None, {label: judge([r for g in gs for r in g["runs"]], gs, sweep_phases, rank_key)
                  for label, gs in by_method.items()}
