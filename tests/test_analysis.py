"""utils/analysis.py, utils/runs.py, utils/report.py and utils/plots.py on synthetic training logs, checkpoint
series and fake run folders."""

import csv
import json
import math
import os
import sys

import pytest
from scipy.stats import kendalltau, spearmanr

from utils.analysis import (RR_FLAGS, add_checkpoint_metrics, band, best_index, config_key, correlation, counterpart,
                            group_runs, group_stats, mean_std, nearest, phase_analysis, phase_labels)
from utils.report import markdown, metric_columns, write_csv
from utils.runs import list_checkpoints, load_run, load_runs, weights_fingerprint


def series(ranks, stsb, steps=None, **extra):
    steps = steps or [10 * i for i in range(len(ranks))]
    rows = [{"step": s, "effective_rank": r, "stsb_dev": d} for s, r, d in zip(steps, ranks, stsb)]
    for key, values in extra.items():
        for row, v in zip(rows, values):
            row[key] = v
    return rows


# ----------------------------------------------------------------------------- phases


def test_rise_and_fall_splits_at_the_peak_and_reports_each_phase():
    ranks = [10, 14, 19, 25, 30, 28, 24, 21, 20, 19]
    stsb = [60, 62, 61, 66, 64, 70, 73, 75, 74, 72]
    rows = series(ranks, stsb, alignment=[0.1 * i for i in range(10)])
    out = phase_analysis(list(reversed(rows)), best_step=70)  # any row order
    assert out["peak"]["step"] == 40 and out["peak"]["where"] == "interior" and out["peak"]["value"] == 30
    assert out["best"] == {"step": 70, "stsb_dev": 75, "source": "best/"}
    p1, p2 = out["phase1"], out["phase2"]
    assert (p1["start_step"], p1["end_step"], p1["n"]) == (0, 40, 5)
    assert (p2["start_step"], p2["end_step"], p2["n"]) == (40, 70, 4)
    assert p1["delta"] == {"effective_rank": 20, "stsb_dev": 4, "alignment": pytest.approx(0.4)}
    assert p2["delta"]["effective_rank"] == 21 - 30 and p2["delta"]["stsb_dev"] == 75 - 64
    assert p1["start"]["effective_rank"] == 10 and p2["end"]["stsb_dev"] == 75
    for phase, sl in ((p1, slice(0, 5)), (p2, slice(4, 8))):
        c = phase["correlation"]
        rho, tau = spearmanr(ranks[sl], stsb[sl]), kendalltau(ranks[sl], stsb[sl])
        assert c["n"] == len(ranks[sl]) and c["note"] is None
        assert c["spearman"] == pytest.approx(rho.statistic) and c["spearman_p"] == pytest.approx(rho.pvalue)
        assert c["kendall"] == pytest.approx(tau.statistic) and c["kendall_p"] == pytest.approx(tau.pvalue)
    assert p2["correlation"]["spearman"] < 0 < p1["correlation"]["spearman"]


def test_peak_ties_go_to_the_earliest_checkpoint():
    out = phase_analysis(series([5, 9, 9, 7, 6], [1, 2, 3, 4, 5]), best_step=40)
    assert out["peak"]["step"] == 10 and out["phase2"]["n"] == 4


@pytest.mark.parametrize("ranks, stsb, best_step, phase, reason", [  # utils.phase.segment's words
    ([9, 8, 7, 6, 5], [1, 2, 3, 4, 5], 40, "phase1",
     "no Phase 1: the rank was highest at the first evaluation (step 0)"),
    ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 40, "phase2",
     "no Phase 2 yet: the rank was still highest at the last evaluation (step 40)"),
    ([1, 2, 5, 4, 3], [9, 2, 3, 4, 5], 0, "phase2",
     "no Phase 2: the best checkpoint (step 0) comes before the rank peak (step 20)"),
    ([1, 2, 5, 4, 3], [1, 2, 9, 4, 5], 20, "phase2",
     "no Phase 2: the best checkpoint (step 20) is the rank peak (step 20)"),
])
def test_missing_phases_are_said_not_invented(ranks, stsb, best_step, phase, reason):
    out = phase_analysis(series(ranks, stsb), best_step=best_step)
    assert out[phase] == {"absent": reason}


def test_peak_at_start_still_has_a_phase_2_and_the_description_speaks_of_evaluations():
    out = phase_analysis(series([9, 8, 7, 6, 5], [1, 2, 3, 4, 5]), best_step=40)
    assert out["phase2"]["n"] == 5 and out["phase2"]["correlation"]["spearman"] == pytest.approx(-1)
    assert "first evaluation (step 0)" in out["peak"]["description"]


def test_correlation_needs_four_finite_points_and_varying_series():
    assert correlation([1, 2, 3], [3, 2, 1])["note"] == "too few points (n=3 < 4)"
    assert correlation([1, 2, 3, None, math.nan], [3, 2, 1, 0, 0])["n"] == 3
    assert correlation([1, 1, 1, 1], [1, 2, 3, 4])["note"] == "undefined: constant series"
    assert correlation([1, 2, 3, 4], [1, 3, 2, 4])["spearman"] == pytest.approx(0.8)


def test_best_is_best_dir_where_logged_else_the_highest_earliest_full_evaluation():
    log = series([1, 2, 3], [5, 9, 9])
    assert best_index(log, best_step=20) == (2, "best/")
    assert best_index(log, best_step=15) == (1, "highest logged STS-B dev")
    log[1]["event"] = "rank"  # best/ is chosen among the full evaluations only
    assert best_index(log) == (2, "highest logged STS-B dev")
    assert best_index(series([1, 2], [None, math.nan])) == (None, None)


def test_phase_labels_mark_both_phases_and_beyond():
    assert phase_labels([0, 10, 20, 30, 40], 10, 30) == ["1", "peak", "2", "2", "after"]
    assert phase_labels([0, 10, 20], 0, 0) == ["peak", "after", "after"]
    assert phase_labels([0, 10], None, None) == ["", ""]


def test_phases_read_every_evaluation_of_the_log_dense_and_full():
    log = [{"event": "rank", "step": s, "effective_rank": 1 + s / 10, "stsb_dev": s / 10} for s in range(0, 100, 10)]
    log += [{"event": "eval", "step": s, "effective_rank": 20 - s / 100, "stsb_dev": s / 10}
            for s in range(100, 301, 25)]
    log += [{"event": "rank", "step": 140, "effective_rank": 18.0},  # rank only: a point of the series, not of ρ
            {"event": "train", "step": 160, "loss": 1.0}, {"event": "eval", "step": 170, "stsb_dev": 1.0}]
    out = phase_analysis(log, best_step=300)
    assert out["peak"]["step"] == 100 and out["best"] == {"step": 300, "stsb_dev": 30.0, "source": "best/"}
    assert out["phase1"]["n"] == 11 and out["phase1"]["correlation"]["spearman"] == pytest.approx(1)
    assert out["phase2"]["n"] == 10 and out["phase2"]["correlation"]["n"] == 9
    assert out["phase2"]["correlation"]["spearman"] == pytest.approx(-1)
    assert out["last"] == {"step": 300, "stsb_dev": 30.0} and out["rank"]["first"] == 1


def test_checkpoint_quantities_are_read_at_the_boundaries_or_the_nearest_checkpoint():
    log = series([1, 3, 5, 4, 3, 2], [1, 2, 3, 4, 6, 5])  # steps 0..50: peak at 20, best at 40
    phases = phase_analysis(log, best_step=40)
    rows = [{"step": s, "probing_Tense": 50 + s, "sts_test_avg": 60 + s / 10, "stsb_dev": 0.0} for s in (0, 30, 40)]
    notes = add_checkpoint_metrics(phases, rows)
    assert [c["step"] for c in phases["checkpoints"].values()] == [0, 30, 40]
    assert notes == ["the peak (step 20): STS test and probing read at the nearest swept checkpoint, step 30"]
    assert phases["phase1"]["delta"]["probing_Tense"] == 30 and phases["phase2"]["delta"]["probing_Tense"] == 10
    assert phases["phase1"]["checkpoint_steps"] == [0, 30] and phases["phase1"]["delta"]["stsb_dev"] == 2  # the log's
    assert nearest([0, 30], 15) == 0 and nearest([], 5) is None
    same = phase_analysis(log, best_step=40)
    add_checkpoint_metrics(same, [r for r in rows if r["step"] != 30] + [{"step": 10, "probing_Tense": 1.0}])
    assert same["checkpoints"]["peak"]["step"] == 10 and same["checkpoints"]["start"]["step"] == 0
    one = phase_analysis(log, best_step=40)
    add_checkpoint_metrics(one, rows[:1])  # every boundary reads the one checkpoint: no change can be measured
    assert one["phase1"]["delta"]["probing_Tense"] is None


# ----------------------------------------------------------------------------- groups


def fake_run(name, seed, weight=0.0, status="finished", method_label=None, **args):
    base = {"model_name_or_path": "m", "seed": seed, "output_dir": f"runs/{name}", "learning_rate": 3e-5,
            "rank_reduction": weight, "resume_from_checkpoint": None}
    return {"name": name, "dir": f"runs/{name}", "seed": seed, "status": status, "args": {**base, **args},
            "method_label": method_label}


def test_runs_group_by_everything_but_seed_output_dir_and_resume():
    runs = [fake_run("b1", 1), fake_run("b2", 2, resume_from_checkpoint="latest"), fake_run("r1", 1, 0.1),
            fake_run("r2", 2, 0.1), fake_run("lr", 1, learning_rate=1e-4)]
    groups = group_runs(runs)
    assert [[r["name"] for r in g["runs"]] for g in groups] == [["b1", "b2"], ["r1", "r2"], ["lr"]]
    assert [g["label"] for g in groups] == ["baseline, learning_rate=3e-05", "RR λ=0.1, learning_rate=3e-05",
                                           "baseline, learning_rate=0.0001"]
    assert groups[1]["differs"] == {"learning_rate": 3e-5, "rank_reduction": 0.1}
    assert config_key(runs[0]["args"]) == config_key(runs[1]["args"])
    two = group_runs(runs[:4])
    assert [g["label"] for g in two] == ["baseline", "RR λ=0.1"]


def test_runs_of_several_methods_are_labelled_by_method():
    """Each method's recipe (lr, its own flags) is part of its name; only what differs within a method is named.
    The name is the one summary.json records (method_label), else the method as the args name it."""
    simcse = [fake_run("s", 1, method="simcse", dup_rate=None, method_label="SimCSE"),
              fake_run("s-rr", 1, 0.1, method="simcse", dup_rate=None, method_label="SimCSE")]
    esim = [fake_run("e", 1, method="esimcse", dup_rate=0.32, method_label="ESimCSE"),
            fake_run("e-rr", 1, 0.1, method="esimcse", dup_rate=0.32, method_label="ESimCSE"),
            fake_run("e-rr-dup", 1, 0.1, method="esimcse", dup_rate=0.1, method_label="ESimCSE")]
    info = [fake_run("i", 1, method="infocse", learning_rate=7e-6, method_label="InfoCSE")]
    labels = [g["label"] for g in group_runs(simcse + esim + info)]
    assert labels == ["SimCSE", "SimCSE + RR λ=0.1", "ESimCSE, dup_rate=0.32", "ESimCSE + RR λ=0.1, dup_rate=0.32",
                      "ESimCSE + RR λ=0.1, dup_rate=0.1", "InfoCSE"]
    assert [g["label"] for g in group_runs(esim[:2])] == ["ESimCSE", "ESimCSE + RR λ=0.1"]  # one method, not SimCSE
    assert [g["label"] for g in group_runs(simcse)] == ["baseline", "RR λ=0.1"]  # SimCSE alone: as before
    older = [dict(r, method_label=None) for r in simcse + esim[:2]]  # summaries without method_label
    assert [g["label"] for g in group_runs(older)] == ["simcse", "simcse + RR λ=0.1", "esimcse", "esimcse + RR λ=0.1"]


def test_rr_flags_are_the_rank_reduction_objects_flags():
    assert RR_FLAGS == ("rank_reduction", "rr_on", "rr_solver", "rr_start", "rr_schedule", "rr_decay_steps",
                        "rr_patience", "rr_watch", "rr_gain", "rr_anneal_lr")


def test_the_baseline_of_an_rr_group_differs_from_it_in_the_rr_settings_alone():
    runs = [fake_run("tiny", 1, model_name_or_path="tiny"), fake_run("b", 1), fake_run("b-watch", 1, rr_watch="every"),
            fake_run("r", 1, 0.1, rr_schedule="target", rr_patience=3), fake_run("r-lr", 1, 0.1, learning_rate=1e-4)]
    for order in (runs, runs[::-1]):  # the order of --runs changes nothing
        by_name = {g["runs"][0]["name"]: g for g in group_runs(order)}
        baselines = [g for g in by_name.values() if g["kind"] == "baseline"]
        # b-watch differs in rr_watch too, and agrees less; tiny is another model
        assert counterpart(by_name["r"], baselines, RR_FLAGS, "baseline", "the RR settings") == (by_name["b"], None)
        assert counterpart(by_name["r-lr"], baselines, RR_FLAGS, "baseline", "the RR settings") == \
            (None, "no baseline group differs from it in the RR settings alone")
    tie = {g["runs"][0]["name"]: g for g in group_runs([fake_run("b1", 1, rr_watch="every"),
                                                        fake_run("b2", 1, rr_patience=5), fake_run("r", 1, 0.1)])}
    base, why = counterpart(tie["r"], [tie["b1"], tie["b2"]], RR_FLAGS, "baseline", "the RR settings")
    assert base is None and why.startswith("several baseline groups differ from it in the RR settings alone: ")


def test_runs_without_args_are_their_own_group():
    runs = [fake_run("b1", 1), {"name": "lost", "dir": "x/lost", "seed": None, "status": "unfinished", "args": None}]
    groups = group_runs(runs)
    assert [g["label"] for g in groups] == ["baseline", "lost"]


def test_mean_std_is_the_sample_std_of_finite_values():
    assert mean_std([1, 2, 3, None, math.nan]) == {"mean": 2.0, "std": 1.0, "n": 3, "values": [1.0, 2.0, 3.0]}
    assert mean_std([4])["std"] is None and mean_std([])["mean"] is None


def test_group_stats_over_seeds():
    runs = [fake_run("b1", 1, status="early_stopped"), fake_run("b2", 2), fake_run("b3", 3, status="unfinished")]
    group = group_runs(runs)[0]
    rows = {"b1": series([1, 3, 2, 1], [70, 72, 75, 74]), "b2": series([1, 2, 4, 3], [71, 76, 73, 72]),
            "b3": series([5, 4, 3, 2], [60, 61, 62, 63])}
    results = {n: {"phases": phase_analysis(r, best_step=None), "sts_test": t,
                   "compute": {"steps": 30 + i, "train_seconds": 60.0 + i, "best_train_seconds": 10.0 * i}}
               for i, ((n, r), t) in enumerate(zip(rows.items(), (70.0, 72.0, None)))}
    stats = group_stats(group, results, "effective_rank")
    assert stats["best_stsb_dev"]["values"] == [75, 76, 63]
    assert stats["best_step"]["values"] == [20, 10, 30]
    assert stats["peak_step"]["values"] == [10, 20] and stats["interior_peaks"] == 2  # b3 peaks at step 0
    assert stats["peak_effective_rank"]["values"] == [3, 4, 5]
    assert stats["sts_test_avg"] == {"mean": 71.0, "std": pytest.approx(math.sqrt(2)), "n": 2, "values": [70.0, 72.0]}
    assert stats["unfinished"] == ["b3"] and stats["seeds"] == [1, 2, 3]  # an early stop is a finished run
    assert stats["steps"]["values"] == [30, 31, 32] and stats["train_seconds"]["mean"] == 61.0
    assert stats["best_seconds"]["values"] == [0.0, 10.0, 20.0]


def test_band_over_the_steps_every_run_has():
    one = series([1.0, 2.0, 3.0], [0, 0, 0])
    two = series([3.0, 4.0, 9.0, None], [0, 0, 0, 0], steps=[0, 10, 15, 20])
    b = band([one, two], "effective_rank")
    assert b["steps"] == [0, 10] and b["mean"] == [2.0, 3.0] and b["std"] == pytest.approx([math.sqrt(2)] * 2)
    assert b["min"] == [1.0, 2.0] and b["max"] == [3.0, 4.0]
    assert band([one], "effective_rank")["std"] == [0.0, 0.0, 0.0]
    assert band([], "effective_rank")["steps"] == []


# ----------------------------------------------------------------------------- run folders


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f)


def fake_run_dir(root, summary=True, step0=True, **args):
    run = root / "run"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"event": "eval", "step": 0, "stsb_dev": 50, "effective_rank": 3}\n'
                                       '{"event": "train", "step": 5, "loss": 1}\n')
    args = {"model_name_or_path": "start-model", "pooler_type": "cls", "mlp_only_train": True, "seed": 3, **args}
    for step in ([0] if step0 else []) + [10, 20]:
        write_json(str(run / "checkpoints" / f"step-{step:06d}" / "checkpoint.json"), {"step": step, "args": args})
    os.makedirs(run / "checkpoints" / "step-000030.tmp")  # half-written: ignored
    write_json(str(run / "best" / "best_metrics.json"), {"step": 20, "stsb_dev": 60})
    write_json(str(run / "peak" / "peak_step.json"), {"step": 15})
    if summary:
        write_json(str(run / "summary.json"), {"status": "finished", "args": args, "eval_pooler": "cls_before_pooler",
                                               "rank": {"offline_peak": {"step": 10}}})
    write_json(str(run / "sts_test.json"), {"avg": 71.5})
    return run


def test_load_run_lists_exports_best_peak_and_the_starting_model(tmp_path):
    run = load_run(str(fake_run_dir(tmp_path, step0=False)))
    assert run["status"] == "finished" and run["seed"] == 3 and run["best_step"] == 20 and run["sts_test"] == 71.5
    assert [r["step"] for r in run["log"]] == [0]  # eval and rank records only
    assert [(c["step"], c["source"]) for c in run["checkpoints"]] == [
        (0, "starting model"), (10, "checkpoints/step-000010"), (15, "peak"), (20, "checkpoints/step-000020")]
    assert run["checkpoints"][0]["path"] == "start-model" and run["checkpoints"][0]["pooler"] == "cls_before_pooler"


def test_weights_fingerprint_is_the_weight_bytes_not_the_folder(tmp_path):
    for name, weights in (("a", b"same"), ("b", b"same"), ("c", b"other")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_bytes(weights)
        (tmp_path / name / "config.json").write_text(name)  # not weights: does not count
    a, b, c = (weights_fingerprint(str(tmp_path / n)) for n in "abc")
    assert a == b != c
    (tmp_path / "b" / "pytorch_model.bin").write_bytes(b"more")
    assert weights_fingerprint(str(tmp_path / "b")) != a
    (tmp_path / "empty").mkdir()
    assert weights_fingerprint(str(tmp_path / "empty")) != weights_fingerprint(str(tmp_path / "a"))
    assert weights_fingerprint("sentence-transformers/all-MiniLM-L6-v2") == "name:sentence-transformers/all-MiniLM-L6-v2"


def test_unfinished_run_takes_its_args_from_a_checkpoint(tmp_path):
    run = load_run(str(fake_run_dir(tmp_path, summary=False, pooler_type="avg")))
    assert run["status"] == "unfinished" and run["args"]["pooler_type"] == "avg" and run["eval_pooler"] == "avg"
    assert run["checkpoints"][0]["source"] == "checkpoints/step-000000"
    assert run["compute"] == {"steps": 5, "train_seconds": None, "best_step": 20, "best_train_seconds": None,
                              "source": "the training log"}  # as far as it got


def test_compute_from_the_summary_else_from_the_log(tmp_path):
    run_dir = fake_run_dir(tmp_path)
    summary = json.load(open(run_dir / "summary.json"))
    compute = {"steps": 175, "train_seconds": 520.0, "eval_seconds": 42.0, "best_step": 100,
               "best_train_seconds": 311.9}
    write_json(str(run_dir / "summary.json"), {**summary, "status": "early_stopped", "compute": compute,
                                               "method_label": "ESimCSE"})
    run = load_run(str(run_dir))
    assert run["status"] == "early_stopped" and run["method_label"] == "ESimCSE"
    assert run["compute"] == {"steps": 175, "train_seconds": 520.0, "best_step": 100, "best_train_seconds": 311.9,
                              "source": "summary.json"}
    # an older summary: steps and train_seconds, the best's seconds from the log's elapsed_s
    write_json(str(run_dir / "summary.json"), {**summary, "steps": 30, "train_seconds": 90.0})
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"event": "eval", "step": 20, "stsb_dev": 60, "effective_rank": 4, "elapsed_s": 61.5}\n')
    assert load_run(str(run_dir))["compute"] == {"steps": 30, "train_seconds": 90.0, "best_step": 20,
                                                 "best_train_seconds": 61.5,
                                                 "source": "summary.json and the training log"}


def test_runs_with_one_folder_name_are_told_apart_and_a_folder_given_twice_is_refused(tmp_path):
    a, b = fake_run_dir(tmp_path / "a"), fake_run_dir(tmp_path / "b")
    assert [r["name"] for r in load_runs([str(a), str(b)])] == [os.path.normpath(a), os.path.normpath(b)]
    with pytest.raises(ValueError, match="the same run folder is given twice"):
        load_runs([str(a), str(a)])


def test_step_0_with_an_evaluation_mlp_is_not_guessed(tmp_path):
    run = load_run(str(fake_run_dir(tmp_path, step0=False, mlp_only_train=False)))
    assert run["checkpoints"][0]["step"] == 10
    assert any("freshly initialised MLP" in n for n in run["notes"])
    assert not load_run(str(fake_run_dir(tmp_path / "2")))["notes"]
    run = {"dir": str(tmp_path / "empty"), "args": None, "eval_pooler": None, "notes": []}
    assert list_checkpoints(run) == [] and len(run["notes"]) == 2


def test_unreadable_json_files_are_notes_not_errors(tmp_path):
    run_dir = fake_run_dir(tmp_path)
    summary = run_dir / "summary.json"
    summary.write_text(summary.read_text()[:20])  # cut short by a kill or a full disk
    (run_dir / "best" / "best_metrics.json").write_text("[20]")
    run = load_run(str(run_dir))
    assert run["status"] == "unfinished" and run["best_step"] is None and run["args"]["seed"] == 3  # a checkpoint's
    assert any(n.startswith(f"{summary} is not valid JSON") for n in run["notes"])
    assert any("best_metrics.json holds a JSON list" in n for n in run["notes"])


def test_a_bad_middle_line_of_metrics_is_a_note_and_a_cut_last_line_is_skipped(tmp_path):
    run_dir = fake_run_dir(tmp_path)
    metrics = run_dir / "metrics.jsonl"
    metrics.write_text(metrics.read_text() + '{"event": "eval", "st')  # a kill mid-line: skipped silently
    assert [r["step"] for r in load_run(str(run_dir))["log"]] == [0]
    assert not load_run(str(run_dir))["notes"]
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "garbage", *lines[1:]]) + "\n")
    run = load_run(str(run_dir))
    assert run["log"] == [] and run["status"] == "finished"
    [note] = run["notes"]
    assert "line 2 is not JSON" in note and "training log is left out" in note


def test_a_folder_without_metrics_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a train.py output folder"):
        load_run(str(tmp_path))


# ----------------------------------------------------------------------------- tables, report, plots


def test_csv_columns_order_precision_and_missing_values(tmp_path):
    rows = [{"run": "a", "step": 0, "stsb_dev": 1 / 3, "probing_Tense": 80.0, "sts_test_STS12": 1.0,
             "effective_rank": math.nan, "checkpoint": "p"},
            {"run": "a", "step": 10, "stsb_dev": 2.0, "sts_test_avg": 5.0, "alignment": None}]
    assert metric_columns(rows) == ["effective_rank", "alignment", "stsb_dev", "sts_test_avg", "sts_test_STS12",
                                    "probing_Tense"]
    header = write_csv(str(tmp_path / "c.csv"), rows)
    assert header[:8] == ["run", "group", "seed", "step", "phase", "is_peak", "is_best", "source"]
    assert header[-1] == "checkpoint"
    read = list(csv.DictReader(open(tmp_path / "c.csv")))
    assert float(read[0]["stsb_dev"]) == 1 / 3 and read[0]["effective_rank"] == "" and read[1]["probing_Tense"] == ""


def tiny_results(rows_by_run, runs):
    groups = group_runs(runs)
    label = {r["name"]: g["label"] for g in groups for r in g["runs"]}
    res = {r["name"]: {"name": r["name"], "status": r["status"], "seed": r["seed"], "group": label[r["name"]],
                       "phases": phase_analysis(r["log"], best_step=None), "sts_test": None,
                       "compute": {"steps": 40, "train_seconds": 80.0 + r["seed"], "best_step": 20,
                                   "best_train_seconds": 40.0, "source": "summary.json"}, "notes": []} for r in runs}
    return {"settings": {"phase_metric": "effective_rank", "probe_split": "dev", "probe_sentences": 10,
                         "sts_test_source": "none"},
            "runs": list(res.values()), "groups": [group_stats(g, res, "effective_rank") for g in groups],
            "bands": {g["label"]: {m: band([rows_by_run[r["name"]] for r in g["runs"]], m)
                                   for m in ("effective_rank", "stsb_dev")} for g in groups},
            "notes": []}


def synthetic_study():
    """Four runs whose training logs were swept at every evaluation (rows equal to the log)."""
    runs = [fake_run(f"{v}{s}", s, w) for v, w in (("b", 0.0), ("r", 0.1)) for s in (1, 2)]
    rows_by_run = {}
    for i, run in enumerate(runs):
        run["log"] = series([1, 4 + i, 3, 2, 2], [50, 55, 60 + i, 58, 57], alignment=[0.2, 0.3, 0.35, 0.3, 0.28],
                            uniformity=[-1, -2, -2.5, -2.6, -2.7])
        rows_by_run[run["name"]] = [dict(r, run=run["name"], seed=run["seed"]) for r in run["log"]]
    return runs, rows_by_run


def test_markdown_report_holds_groups_runs_phases_and_the_plot_note():
    runs, rows_by_run = synthetic_study()
    results = tiny_results(rows_by_run, runs)
    text = markdown(results, rows_by_run, [], "plots skipped: matplotlib is not installed")
    assert "## Groups (mean ± std over seeds)" in text and "| baseline | 2 | 1, 2 |" in text
    assert "| RR λ=0.1 | 2 | 1, 2 |" in text
    assert "### b1" in text and "Rank peak at step 10" in text and "Phase 2: step 10 → 20 (2 evaluations)" in text
    assert "too few points (n=2 < 4)" in text and "plots skipped: matplotlib is not installed" in text
    assert "| 60.50 ± 0.71 (n=2) |" in text  # best STS-B dev of b1, b2: 60, 61
    assert "## Summary per method" in text and "| simcse | baseline | 2 | 60.50 ± 0.71 (n=2) |" in text
    assert "| 40 ± 0 (n=2) | 82 ± 1 (n=2) |" in text  # steps and seconds trained (81, 82)
    assert "trained 40 steps in 81 s, the best at step 20 after 40 s (summary.json)" in text


def test_the_summary_per_method_gives_rr_against_its_baseline_with_the_verdicts():
    from utils.findings import judge_by_method

    runs, rows_by_run = synthetic_study()
    results = tiny_results(rows_by_run, runs)
    for run in runs:
        run.update(best_step=20, sts_test=None, compute=next(r["compute"] for r in results["runs"]
                                                             if r["name"] == run["name"]))
    results["findings"], results["findings_by_method"] = judge_by_method(runs, group_runs(runs))
    text = markdown(results, rows_by_run, [], None)
    assert ("| simcse | RR λ=0.1 | 2 | 62.50 ± 0.71 (n=2) | – | 20 ± 0 (n=2) | 40 ± 0 (n=2) | 40 ± 0 (n=2) | "
            "82 ± 1 (n=2) | vs baseline: **not enough runs**: STS-B dev, STS test, steps to the best, seconds to the "
            "best, spread, steps trained (1.00×), seconds trained (1.00×) |") in text


def test_the_summary_lists_each_methods_baseline_first_whatever_the_order_of_the_runs():
    from utils.report import summary_section

    runs, rows_by_run = synthetic_study()
    results = tiny_results(rows_by_run, runs)
    results["groups"].reverse()  # the RR runs given first, as `rr-seed*` sorts after `baseline-seed*` reversed
    rows = [line for line in summary_section(results) if line.startswith("| simcse |")]
    assert [row.split(" | ")[1] for row in rows] == ["baseline", "RR λ=0.1"]


def test_a_methods_baseline_and_rr_share_a_colour_and_rr_is_dashed():
    plt = pytest.importorskip("matplotlib.pyplot")
    from utils.plots import _colours, _dashes

    results = {"groups": [{"label": "simcse", "method": "simcse", "kind": "baseline"},
                          {"label": "simcse + RR", "method": "simcse", "kind": "rr"},
                          {"label": "esimcse", "method": "esimcse", "kind": "baseline"}]}
    colours = _colours(plt, {"simcse": [], "simcse + RR": [], "esimcse": []}, results)
    assert colours["simcse"] == colours["simcse + RR"] != colours["esimcse"]
    assert [_dashes(results, g, colours) for g in colours] == ["-", "--", "-"]
    one = {"groups": results["groups"][:2]}  # one method: a colour per group, all lines solid
    colours = _colours(plt, {"simcse": [], "simcse + RR": []}, one)
    assert colours["simcse"] != colours["simcse + RR"] and _dashes(one, "simcse + RR", colours) == "-"


def test_plots_are_skipped_cleanly_without_matplotlib(tmp_path, monkeypatch):
    from utils.plots import write_plots

    runs, rows_by_run = synthetic_study()
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    written, note = write_plots(str(tmp_path), runs, rows_by_run, tiny_results(rows_by_run, runs), "effective_rank")
    assert written == [] and "matplotlib is not installed" in note and not os.listdir(tmp_path)


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    from utils.plots import write_plots

    runs, rows_by_run = synthetic_study()
    runs[0]["log"] = [{"step": s, "effective_rank": 1 + s / 10} for s in range(0, 41, 5)]
    written, note = write_plots(str(tmp_path), runs, rows_by_run, tiny_results(rows_by_run, runs), "effective_rank")
    assert note is None
    assert written == ["rank_vs_step.png", "align_uniform.png", "stsb_dev_vs_step.png", "groups_overlay.png"]
    for name in written:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 300_000
