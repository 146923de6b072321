"""The findings table on fabricated runs whose verdicts are known: holds, does not hold, not enough runs."""

import math

import pytest

from utils.analysis import group_runs, phase_analysis
from utils.findings import FAILS, HOLDS, TOO_FEW, compare_means, judge, judge_by_method

STEPS = list(range(0, 101, 5))


def fake_run(name, seed, rr=0.0, schedule="constant", peak=20, best_step=100, best=80.0, drop=0.0,
             align_up_in_phase2=False, rank_up_after_peak=False, noise=0.0, stopped_at=100, **args):
    """A run whose rank rises to `peak` then falls (or keeps rising), STS-B dev rising to `best` at
    `best_step` and losing `drop` by step 100; alignment rises in Phase 1 and falls in Phase 2 (or rises in
    both), uniformity falls in Phase 1 and rises in Phase 2; it trained `stopped_at` steps (less a step per
    seed), 3 s a step."""
    log = []
    for s in STEPS:
        up = s <= peak or rank_up_after_peak
        rank = 100 + (s if up else peak - 0.5 * (s - peak)) + noise * seed
        stsb = best - (best_step - s) * 0.05 if s <= best_step else best - drop * (s - best_step) / (100 - best_step)
        if s == 100 and best_step < 100:
            stsb = best - drop
        align = 0.1 + 0.001 * (s if s <= peak or align_up_in_phase2 else 2 * peak - s)
        unif = -2.0 - 0.01 * (s if s <= peak else 2 * peak - s)
        event = "eval" if s % 25 == 0 or s == 100 else "rank"
        log.append({"event": event, "step": s, "effective_rank": rank, "stsb_dev": stsb + noise * seed,
                    "alignment": align, "uniformity": unif, "elapsed_s": 3.0 * s + seed})
    args = {"rank_reduction": rr, "rr_schedule": schedule, "seed": seed, "output_dir": name, **args}
    compute = {"steps": stopped_at - seed, "train_seconds": 3.0 * stopped_at + seed, "best_step": best_step,
               "best_train_seconds": 3.0 * best_step + seed}
    return {"name": name, "dir": name, "args": args, "seed": seed, "status": "finished", "log": log,
            "best_step": best_step, "sts_test": 70.0 + (best - 80.0) + 0.1 * seed, "compute": compute, "notes": []}


def probing_phases(runs, flip=True):
    """The runs' phases with the probing changes the sweep's boundary checkpoints would add."""
    phases = {r["name"]: phase_analysis(r["log"], best_step=r["best_step"]) for r in runs}
    for ph in phases.values():
        for key, change in (("phase1", {"probing_Length": 2.0, "probing_Depth": -1.0, "probing_avg": 0.5}),
                            ("phase2", {"probing_Length": -1.0 if flip else 1.0, "probing_Depth": 0.5 if flip else -0.5,
                                        "probing_avg": -0.2})):
            if "delta" in ph[key]:
                ph[key]["delta"].update(change)
    return phases


def study(seeds=(1, 2, 3), **baseline):
    runs = [fake_run(f"baseline-seed{s}", s, noise=0.01, **baseline) for s in seeds]
    runs += [fake_run(f"rr-seed{s}", s, rr=0.1, best=81.0, best_step=50, drop=0.8, noise=0.01, stopped_at=75)
             for s in seeds]
    runs += [fake_run(f"rr-schedule-seed{s}", s, rr=0.1, schedule="plateau", best=81.1, best_step=50, drop=0.1,
                      noise=0.01, stopped_at=75) for s in seeds]
    return runs


def verdicts(result):
    return [(f["id"], f["verdict"]) for f in result["findings"]]


def test_the_phases_read_peak_best_and_last_from_the_log():
    t = phase_analysis(fake_run("r", 1, best_step=50, drop=0.8)["log"], best_step=50)
    assert t["peak"]["step"] == 20 and t["peak"]["where"] == "interior"
    assert t["best"]["step"] == 50 and t["best"]["stsb_dev"] == pytest.approx(80.0)
    assert t["last"]["stsb_dev"] == pytest.approx(79.2)


def test_every_finding_holds_on_a_study_that_shows_them():
    runs = study()
    result = judge(runs, group_runs(runs), probing_phases(runs))
    assert result["judged_on"] == ["baseline-seed1", "baseline-seed2", "baseline-seed3"]
    got = dict(((f["id"], f["claim"]), f["verdict"]) for f in result["findings"])
    by_id = {}
    for (i, claim), v in got.items():
        by_id.setdefault(i, []).append((claim, v))
    assert [v for _, v in by_id[1]] == [HOLDS]
    assert [v for _, v in by_id[2]] == [HOLDS]
    assert [v for _, v in by_id[3]] == [HOLDS]
    assert [v for _, v in by_id[4]] == [HOLDS]
    f5 = {c: v for c, v in by_id[5]}
    # two RR groups x (STS-B dev, STS test, steps and seconds to the best, stability); 3 seeds: stability
    # cannot be judged
    assert len(f5) == 10
    for claim, verdict in f5.items():
        expected = TOO_FEW if "stability" in claim else HOLDS
        assert verdict == expected, (claim, verdict)
    assert [v for _, v in by_id[6]] == [HOLDS]
    # two RR groups x (steps, seconds trained): the early stop ended them at 3/4 of the baseline's
    assert [v for _, v in by_id[7]] == [HOLDS] * 4
    compute = next(f for f in result["findings"] if f["id"] == 7)
    assert compute["measured"].startswith("steps trained: 73 ± 1 vs 98 ± 1 (RR / baseline: 0.74 ± 0.01)")
    corr = next(f for f in result["findings"] if f["id"] == 4)["detail"]
    assert corr["phase1_spearman"]["mean"] > 0.9 and corr["phase2_spearman"]["mean"] < -0.9


def test_findings_that_the_runs_contradict_do_not_hold():
    # rank keeps rising (no peak inside), alignment rises in both phases
    runs = study(rank_up_after_peak=True, align_up_in_phase2=True)
    for r in runs:
        if r["name"].startswith("rr-schedule"):  # a schedule that still collapses late
            for rec in r["log"]:
                if rec["step"] == 100:
                    rec["stsb_dev"] -= 2.0
    result = judge(runs, group_runs(runs), probing_phases(runs, flip=False))
    v = dict((f["id"], f["verdict"]) for f in result["findings"] if f["id"] in (1, 2, 3, 6))
    assert v == {1: FAILS, 2: TOO_FEW, 3: TOO_FEW, 6: FAILS}  # no Phase 2 in the log: 2 and 3 cannot be judged
    runs = study()  # both phases, probing that does not flip
    result = judge(runs, group_runs(runs), probing_phases(runs, flip=False))
    assert next(f["verdict"] for f in result["findings"] if f["id"] == 3) == FAILS


def test_phase_flip_failure_and_correlation_failure():
    runs = study(align_up_in_phase2=True)
    # Phase 2 correlation positive: STS-B dev falls with the rank after the peak
    for r in runs[:3]:
        for rec in r["log"]:
            if rec["step"] > 20:
                rec["stsb_dev"] = 79.0 - 0.01 * rec["step"]
            if rec["step"] == 100:
                rec["stsb_dev"] = 80.5  # the best stays the last evaluation
    result = judge(runs, group_runs(runs))
    v = dict((f["id"], f["verdict"]) for f in result["findings"] if f["id"] in (2, 4))
    assert v[2] == FAILS and v[4] == FAILS


def test_several_methods_are_judged_each_on_its_own_runs():
    """Two methods' studies in one analysis: each method's baseline is compared with its own RR runs only."""
    simcse = [dict(r, method_label="SimCSE") for r in study()]
    esim = [dict(r, name="esimcse-" + r["name"], dir="esimcse-" + r["dir"], method_label="ESimCSE",
                 args={**r["args"], "method": "esimcse", "output_dir": "esimcse-" + r["name"]}) for r in study()]
    # ESimCSE's RR runs are worse than its baseline: judged on its own, finding 5 fails there
    for r in esim:
        if r["args"]["rank_reduction"]:
            r["log"] = [dict(row, stsb_dev=row["stsb_dev"] - 3) for row in r["log"]]
            r["sts_test"] -= 3
    runs = simcse + esim
    findings, by_method = judge_by_method(runs, group_runs(runs))
    assert findings is None and list(by_method) == ["SimCSE", "ESimCSE"]
    assert by_method["SimCSE"]["judged_on"] == [r["name"] for r in simcse if not r["args"]["rank_reduction"]]
    five = lambda result: [f for f in result["findings"] if f["id"] == 5]  # noqa: E731
    assert FAILS not in [f["verdict"] for f in five(by_method["SimCSE"])] and five(by_method["SimCSE"])
    assert [f["verdict"] == FAILS for f in five(by_method["ESimCSE"])].count(True) >= 2
    single, none = judge_by_method(simcse, group_runs(simcse))  # one method: the plain table
    assert none is None and verdicts(single) == verdicts(judge(simcse, group_runs(simcse)))
    older = [dict(r, method_label=None) for r in runs]  # summaries without method_label: the method as recorded
    assert list(judge_by_method(older, group_runs(older))[1]) == ["simcse", "esimcse"]


def test_too_few_runs_say_so_rather_than_pass_or_fail():
    runs = study(seeds=(1, 2))
    result = judge(runs, group_runs(runs), probing_phases(runs))
    assert all(f["verdict"] == TOO_FEW for f in result["findings"]), verdicts(result)
    assert all(f["why"] for f in result["findings"])


def test_not_significant_or_reversed_differences_do_not_hold():
    runs = study()
    for r in runs:  # RR no better than the baseline: same best, the schedule too
        if r["args"]["rank_reduction"]:
            for rec in r["log"]:
                rec["stsb_dev"] -= 2.0
    result = judge(runs, group_runs(runs))
    perf = [f for f in result["findings"] if f["id"] == 5 and "STS-B dev" in f["claim"]]
    assert perf and all(f["verdict"] == FAILS for f in perf)


def test_spread_is_judged_from_five_seeds():
    runs = [fake_run(f"baseline-seed{s}", s, noise=0.5) for s in range(1, 6)]
    runs += [fake_run(f"rr-seed{s}", s, rr=0.1, best=81.0, best_step=50, noise=0.01) for s in range(1, 6)]
    result = judge(runs, group_runs(runs))
    stability = next(f for f in result["findings"] if "stability" in f["claim"])
    assert stability["verdict"] == HOLDS and stability["detail"]["ratio"] < 0.1


def test_the_spread_test_needs_three_per_sample():
    from scipy.stats import levene

    from utils.findings import compare_spreads

    two = compare_spreads([84.2, 84.5], [84.8, 85.1])  # 2 + 2: both deviations from each median are equal
    assert two["p"] is None and two["std"][0] == pytest.approx(0.3 / 2 ** 0.5)
    a, b = [84.0, 84.3, 84.9], [85.0, 85.05, 85.1]
    assert compare_spreads(a, b)["p"] == pytest.approx(levene(b, a, center="median").pvalue)


def test_compare_means_welch_and_exact_permutation():
    from scipy.stats import ttest_ind

    a, b = [1.0, 2.0, 3.0], [4.0, 5.0, 6.5]
    out = compare_means(a, b)
    assert out["diff"] == pytest.approx(5.1667 - 2.0, abs=1e-3)
    assert out["welch_p"] == pytest.approx(ttest_ind(b, a, equal_var=False).pvalue)
    assert out["permutation_p"] == pytest.approx(0.1)  # 2 of the 20 splits of 3 + 3 are as extreme
    assert compare_means([1.0], [2.0])["welch_p"] is None
    assert math.isnan(float("nan")) and compare_means([], [1.0])["diff"] is None


def minilm_and_tiny(order):
    """A tiny model's baseline, all-MiniLM-L6-v2's baseline and RR runs (RR a little worse), and RR runs of a third
    model without a baseline, in the given order of groups."""
    groups = {
        "tiny": [fake_run(f"tiny-seed{s}", s, best=29.7, noise=0.01, model_name_or_path="tiny") for s in (1, 2, 3)],
        "minilm": [fake_run(f"minilm-seed{s}", s, best=91.9, noise=0.01, model_name_or_path="minilm")
                   for s in (1, 2, 3)],
        "minilm-rr": [fake_run(f"minilm-rr-seed{s}", s, rr=0.1, best=91.8, noise=0.01, model_name_or_path="minilm")
                      for s in (1, 2, 3)],
        "other-rr": [fake_run(f"other-rr-seed{s}", s, rr=0.1, noise=0.01, model_name_or_path="other")
                     for s in (1, 2, 3)],
    }
    return [r for name in order for r in groups[name]]


def test_each_rr_group_is_compared_with_its_own_baseline_whatever_the_order():
    """A tiny model's baseline listed first used to be every RR group's baseline: MiniLM's RR (91.8) 'improved'
    on it although MiniLM's own baseline (91.9) is higher."""
    results = []
    for order in (["tiny", "minilm", "minilm-rr", "other-rr"], ["other-rr", "minilm-rr", "minilm", "tiny"]):
        runs = minilm_and_tiny(order)
        result = judge(runs, group_runs(runs))
        rows = {(f["id"], f["detail"].get("group"), f["detail"].get("metric")): f for f in result["findings"]
                if f["id"] in (5, 7)}
        results.append({k: (f["verdict"], f["detail"].get("baseline")) for k, f in rows.items()})
        [minilm_rr] = [g["label"] for g in group_runs(runs) if g["runs"][0]["name"].startswith("minilm-rr")]
        [minilm] = [g["label"] for g in group_runs(runs) if g["runs"][0]["name"] == "minilm-seed1"]
        best = rows[(5, minilm_rr, "best")]
        assert best["verdict"] == FAILS and best["detail"]["baseline"] == minilm
        assert best["why"] == "the difference is in the other direction"
        [other] = [f for f in result["findings"] if f["id"] == 5
                   and f["detail"].get("group", "").startswith("RR λ=0.1, model_name_or_path=other")]
        assert other["verdict"] == TOO_FEW and other["why"] == \
            "no baseline group differs from it in the RR settings alone"
    assert results[0] == results[1]  # the order of --runs changes no verdict
