"""analyze_rank.py end to end: two tiny train.py runs (seeds 1 and 2) with --save_steps, swept for real; a tiny
PromptBERT run read with both its embeddings."""

import csv
import json
import shutil

import pytest
from scipy.stats import kendalltau, spearmanr

import analyze_rank
from tests.conftest import WORDS, add_fake_sts_years, run_in_process, train_in_process, write_fake_senteval
from utils.phase import offline_peak
from utils.sweep import Sweep

TRAIN_ARGS = ("--pooler_type", "avg", "--max_train_steps", "8", "--eval_steps", "4", "--rank_eval_steps", "2",
              "--rank_eval_until", "8", "--save_steps", "2")


def write_fake_probing(folder):
    """SentEval's Tense task format (split<TAB>label<TAB>sentence), labelled by a word in the sentence."""
    import random

    rng = random.Random(4)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for split, n in (("tr", 40), ("va", 12), ("te", 12)):
        for i in range(n):
            verb = "was" if i % 2 else "is"
            lines.append(f"{split}\t{'PAST' if verb == 'was' else 'PRES'}\tthe {rng.choice(WORDS)} {verb} "
                         f"{' '.join(rng.choice(WORDS) for _ in range(4))}")
    (folder / "past_present.txt").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory, tiny_bert, corpus):
    root = tmp_path_factory.mktemp("study")
    data = write_fake_senteval(root / "data")
    add_fake_sts_years(data)
    runs = [root / "runs" / f"baseline-seed{seed}" for seed in (1, 2)]
    for seed, out in zip((1, 2), runs):
        train_in_process(tiny_bert, corpus, data, out, *TRAIN_ARGS, "--seed", str(seed))
    out = root / "analysis"
    argv = ["--runs", *runs, "--data_dir", data, "--sts_test", "--probing_dir", write_fake_probing(root / "probing"),
            "--probing_at", "boundaries", "--probing_limit", "30", "--device", "cpu"]
    proc = run_in_process(analyze_rank.main, [*argv, "--out", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    strict = lambda c: pytest.fail(f"summary.json holds {c}")  # noqa: E731
    summary = json.load(open(out / "summary.json"), parse_constant=strict)
    rows = list(csv.DictReader(open(out / "checkpoints.csv")))
    return {"runs": runs, "out": out, "argv": argv, "stdout": proc.stdout, "summary": summary, "rows": rows}


def rows_of(study, run):
    return [r for r in study["rows"] if r["run"] == run]


def test_every_checkpoint_is_one_row_with_every_metric(study):
    assert [r["run"] for r in study["rows"]] == ["baseline-seed1"] * 5 + ["baseline-seed2"] * 5
    for name in ("baseline-seed1", "baseline-seed2"):
        assert [int(r["step"]) for r in rows_of(study, name)] == [0, 2, 4, 6, 8]
    header = list(study["rows"][0])
    assert header[:8] == ["run", "group", "seed", "step", "phase", "is_peak", "is_best", "source"]
    for col in ("effective_rank", "vne", "eig_effective_rank", "energy_rank", "alignment", "uniformity", "stsb_dev",
                "sickr_dev", "sts_test_avg", "sts_test_STS12", "sts_test_SICKRelatedness", "probing_Tense",
                "probing_avg"):
        assert col in header, col
    assert all(r[c] != "" for r in study["rows"] for c in header if not c.startswith("probing_"))
    assert study["summary"]["columns"] == header


def test_checkpoint_metrics_equal_the_training_log(study):
    for run in study["runs"]:
        log = {r["step"]: r for r in map(json.loads, open(run / "metrics.jsonl")) if r["event"] in ("eval", "rank")}
        assert sorted(log) == [0, 2, 4, 6, 8]
        for row in rows_of(study, run.name):
            logged = log[int(row["step"])]
            for key in ("effective_rank", "vne", "energy_rank", "alignment", "uniformity", "stsb_dev", "sickr_dev"):
                if key in logged:
                    assert float(row[key]) == pytest.approx(logged[key], abs=1e-6), (row["step"], key)


def test_peak_phases_and_correlations_recompute_from_the_csv(study):
    for run in study["summary"]["runs"]:
        rows = rows_of(study, run["name"])
        steps, rank = [int(r["step"]) for r in rows], [float(r["effective_rank"]) for r in rows]
        peak = offline_peak(steps, rank)
        ph = run["phases"]
        assert ph["peak"]["step"] == peak["step"] and ph["peak"]["where"] == peak["where"]
        assert [int(r["step"]) for r in rows if r["is_peak"] == "1"] == [peak["step"]]
        best = json.load(open(f"{run['dir']}/best/best_metrics.json"))["step"]
        assert ph["best"]["step"] == best and [int(r["step"]) for r in rows if r["is_best"] == "1"] == [best]
        for key, labels in (("phase1", {"1", "peak"}), ("phase2", {"peak", "2"})):
            inside = [r for r in rows if r["phase"] in labels]
            if "absent" in ph[key]:
                continue
            assert ph[key]["n"] == len(inside)
            x, y = [float(r["effective_rank"]) for r in inside], [float(r["stsb_dev"]) for r in inside]
            c = ph[key]["correlation"]
            if len(inside) >= 4 and c["note"] is None:
                assert c["spearman"] == pytest.approx(spearmanr(x, y).statistic)
                assert c["kendall"] == pytest.approx(kendalltau(x, y).statistic)
            assert ph[key]["delta"]["stsb_dev"] == pytest.approx(y[-1] - y[0])


def test_probing_at_the_phase_boundaries_and_sts_test_at_the_best(study):
    for run in study["summary"]["runs"]:
        rows = rows_of(study, run["name"])
        ph = run["phases"]
        probed = {int(r["step"]) for r in rows if r["probing_Tense"] != ""}
        assert probed == {0, ph["peak"]["step"], ph["best"]["step"]}
        assert all(0 <= float(r["probing_Tense"]) <= 100 for r in rows if r["probing_Tense"])
        best_row = next(r for r in rows if r["is_best"] == "1")
        assert run["sts_test"] == pytest.approx(float(best_row["sts_test_avg"]))


def test_same_weights_are_measured_once_and_probing_is_limited(study):
    # both seeds export the same starting weights at step 0: seed 2's sweep row and its step-0 probing reuse seed 1's
    notes = study["summary"]["notes"]
    assert any(n.startswith("2 measurement(s) of a checkpoint whose weights an earlier one already had") for n in notes)
    assert "probing on at most 30 examples per split (--probing_limit)" in notes
    first, second = (next(r for r in rows_of(study, name) if r["step"] == "0")
                     for name in ("baseline-seed1", "baseline-seed2"))
    measured = [c for c in first if c not in ("run", "seed", "group", "phase", "is_peak", "is_best", "checkpoint")]
    assert {c: second[c] for c in measured} == {c: first[c] for c in measured}
    assert first["checkpoint"] != second["checkpoint"]


def test_a_second_analysis_into_the_same_folder_reads_what_the_first_measured(study, tmp_path, monkeypatch):
    out = tmp_path / "analysis"
    shutil.copytree(study["out"], out)
    stored = (out / "measurements.jsonl").read_text().splitlines()
    probed = [r for r in study["rows"] if r["probing_Tense"] != ""]
    assert len(stored) == len(study["rows"]) + len(probed) - 2  # seed 2's step 0: seed 1's weights, scored and probed
    monkeypatch.setattr(Sweep, "_scores", lambda *a: pytest.fail("measured again"))
    monkeypatch.setattr(Sweep, "_probing", lambda *a: pytest.fail("probed again"))
    proc = run_in_process(analyze_rank.main, [*study["argv"], "--out", out])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list(csv.DictReader(open(out / "checkpoints.csv"))) == study["rows"]
    notes = json.load(open(out / "summary.json"))["notes"]
    assert any(n.startswith(f"{len(stored)} measurement(s) read from {out / 'measurements.jsonl'}") for n in notes), notes
    assert (out / "measurements.jsonl").read_text().splitlines() == stored


def test_stored_measurements_of_other_settings_are_not_read_and_a_cut_line_is_passed_over(tmp_path, tiny_bert,
                                                                                          fake_senteval, monkeypatch):
    run, out = fake_run(tmp_path, tiny_bert), tmp_path / "out"
    argv = ["--runs", str(run), "--data_dir", str(fake_senteval), "--out", str(out), "--device", "cpu"]
    analyze_rank.main(argv)
    store = out / "measurements.jsonl"
    first = [json.loads(line)["key"] for line in store.read_text().splitlines()]
    assert 0 < len(first) < 3  # the two exports hold the same weights: measured once
    with open(store, "a") as f:
        f.write('{"key": "an analysis stopped mid-li')
    analyze_rank.main([*argv, "--energy_tau", "0.5"])  # another setting: measured again, on a line of its own
    lines = store.read_text().splitlines()
    assert lines[len(first)] == '{"key": "an analysis stopped mid-li'
    second = [json.loads(line)["key"] for line in lines[len(first) + 1:]]
    assert len(second) == len(first) and not set(first) & set(second)
    monkeypatch.setattr(Sweep, "_scores", lambda *a: pytest.fail("measured again"))
    analyze_rank.main(argv)
    assert [int(r["step"]) for r in csv.DictReader(open(out / "checkpoints.csv"))] == [0, 2, 4]


def test_one_group_over_both_seeds_and_the_report(study):
    summary = study["summary"]
    [group] = summary["groups"]
    assert group["label"] == "baseline" and group["seeds"] == [1, 2] and group["unfinished"] == []
    bests = [float(r["stsb_dev"]) for r in study["rows"] if r["is_best"] == "1"]
    assert group["best_stsb_dev"]["mean"] == pytest.approx(sum(bests) / 2)
    assert group["best_stsb_dev"]["std"] == pytest.approx(abs(bests[0] - bests[1]) / 2 ** 0.5)
    report = (study["out"] / "report.md").read_text()
    assert report in study["stdout"]
    assert "## Groups (mean ± std over seeds)" in report and "### baseline-seed2" in report
    # two seeds of one group: every finding says it has too few runs, none passes or fails
    findings = summary["findings"]["findings"]
    assert [f["id"] for f in findings] == [1, 2, 3, 4, 5]
    assert all(f["verdict"] == "not enough runs" and f["why"] for f in findings)
    assert "## Findings" in report and report.index("## Findings") < report.index("## Groups")
    if summary["plots"]:
        assert all((study["out"] / p).stat().st_size > 5_000 for p in summary["plots"])
        assert "![rank_vs_step](rank_vs_step.png)" in report
    else:
        assert "plots skipped" in report


def test_not_a_run_folder_is_refused_before_any_model_is_loaded(tmp_path, fake_senteval, capsys):
    with pytest.raises(SystemExit) as exit_info:
        analyze_rank.main(["--runs", str(tmp_path), "--data_dir", str(fake_senteval), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "not a train.py output folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def fake_run(root, tiny_bert, steps=(2, 4)):
    """A run folder as train.py --save_steps leaves it mid-run: metrics.jsonl and exports, no summary."""
    import shutil

    run = root / "run-seed1"
    args = {"model_name_or_path": str(tiny_bert), "pooler_type": "avg", "mlp_only_train": False, "seed": 1}
    for step in steps:
        export = run / "checkpoints" / f"step-{step:06d}"
        shutil.copytree(tiny_bert, export)
        (export / "checkpoint.json").write_text(json.dumps({"step": step, "args": args}))
    (run / "metrics.jsonl").write_text("".join(json.dumps({"event": "eval", "step": s, "stsb_dev": 50.0 + s}) + "\n"
                                               for s in (0, *steps)))
    return run


def test_a_corrupt_checkpoint_is_skipped_with_a_note(tmp_path, tiny_bert, fake_senteval):
    run = fake_run(tmp_path, tiny_bert)
    weights = run / "checkpoints" / "step-000004" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:500])  # a copy cut short
    analyze_rank.main(["--runs", str(run), "--data_dir", str(fake_senteval), "--out", str(tmp_path / "out"),
                       "--device", "cpu"])
    [summary_run] = json.load(open(tmp_path / "out" / "summary.json"))["runs"]
    assert any(n.startswith(f"step 4 (checkpoints/step-000004) skipped: {weights} (--runs) cannot be read")
               for n in summary_run["notes"]), summary_run["notes"]
    assert [int(r["step"]) for r in csv.DictReader(open(tmp_path / "out" / "checkpoints.csv"))] == [0, 2]


@pytest.mark.parametrize("argv, needle", [
    (["--out", "{file}"], "--out {file} is a file"),
    (["--out", "{file}/sub"], "--out {file}/sub: {file} is a file"),
    (["--device", "gpu"], "argument --device: not a device: 'gpu'"),
])
def test_bad_out_or_device_fails_before_any_model_is_loaded(tmp_path, fake_senteval, capsys, argv, needle):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("")
    file = tmp_path / "report.md"
    file.write_text("kept")
    argv = [a.format(file=file) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        analyze_rank.main(["--runs", str(run), "--data_dir", str(fake_senteval), "--out", str(tmp_path / "out"), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and needle.format(file=file) in err and "Traceback" not in err
    assert file.read_text() == "kept" and not (tmp_path / "out").exists()


LOGGED = ("effective_rank", "vne", "eig_effective_rank", "energy_rank", "alignment", "uniformity", "stsb_dev",
          "sickr_dev")


def test_promptbert_checkpoints_give_the_logged_numbers_and_evaluate_pys_sts_test(tmp_path, tiny_bert, corpus,
                                                                                  fake_senteval_sts):
    """PromptBERT reads a checkpoint two ways: the sweep's logged metrics are of the dev embedding (training's),
    its STS test of the test embedding (evaluate.py's). An export from before config.sentence_embedding had a
    "dev" entry, and the starting model, are read the same way (the legacy rule, from the run's args)."""
    import evaluate

    run = tmp_path / "promptbert"
    train_in_process(tiny_bert, corpus, fake_senteval_sts, run, "--method", "promptbert", "--max_train_steps", "4",
                     "--eval_steps", "2", "--rank_eval_steps", "1", "--rank_eval_until", "4", "--save_steps", "2")
    legacy = tmp_path / "legacy"  # the same run as an older train.py left it: no "dev" entry, no step-0 export
    shutil.copytree(run, legacy)
    shutil.rmtree(legacy / "checkpoints" / "step-000000")
    for config in [*legacy.glob("checkpoints/*/config.json"), legacy / "best" / "config.json"]:
        record = json.loads(config.read_text())
        assert record["sentence_embedding"].pop("dev") == {"period": False, "denoise": True}
        config.write_text(json.dumps(record))
    out = tmp_path / "analysis"
    proc = run_in_process(analyze_rank.main, ["--runs", run, legacy, "--data_dir", fake_senteval_sts, "--out", out,
                                              "--sts_test", "--device", "cpu"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out / "checkpoints.csv")))
    log = {r["step"]: r for r in map(json.loads, open(run / "metrics.jsonl")) if r["event"] in ("eval", "rank")}
    best = json.load(open(run / "best" / "best_metrics.json"))
    legacy_start = "best" if best["step"] == 0 else "starting model"  # best/ stands for step 0 where it is step 0
    assert [(r["run"], r["step"], r["source"]) for r in rows] == [
        ("promptbert", "0", "checkpoints/step-000000"), ("promptbert", "2", "checkpoints/step-000002"),
        ("promptbert", "4", "checkpoints/step-000004"), ("legacy", "0", legacy_start),
        ("legacy", "2", "checkpoints/step-000002"), ("legacy", "4", "checkpoints/step-000004")]
    for row in rows:
        for key in LOGGED:
            if key in log[int(row["step"])]:
                logged = log[int(row["step"])][key]
                assert float(row[key]) == pytest.approx(logged, abs=1e-6), (row["run"], row["step"], key)
        if row["is_best"] == "1":
            assert int(row["step"]) == best["step"]
            assert float(row["stsb_dev"]) == pytest.approx(best["stsb_dev"], abs=1e-6)
            assert float(row["sickr_dev"]) == pytest.approx(best["sickr_dev"], abs=1e-6)
    test = evaluate.main(["--model_name_or_path", str(run / "best"), "--mode", "test", "--data_dir",
                          str(fake_senteval_sts), "--device", "cpu"])
    assert test["period"] and not test["denoise"]
    for result in json.load(open(out / "summary.json"))["runs"]:
        assert result["sts_test"] == pytest.approx(test["avg"], abs=1e-9)
        assert any("template-denoised" in e for e in result["embeddings"]["dev"])
        assert any("'.' added where missing" in e for e in result["embeddings"]["test"])
    report = (out / "report.md").read_text()
    assert "- dev embedding (rank metrics, alignment, uniformity, STS-B dev, SICK-R dev: what training logged): " \
        "pooler mask, template" in report


def test_an_early_stop_is_a_finished_run():
    args = analyze_rank.parse_args(["--runs", "r", "--data_dir", "d"])
    runs = [{"name": n, "status": s} for n, s in (("a", "finished"), ("b", "early_stopped"), ("c", "unfinished"))]
    notes = analyze_rank.analysis_notes(args, runs, type("Sweep", (), {"reused": [], "stored": []}), None)
    assert [n for n in notes if ": " in n and n.split(":")[0] in "abc"] == [
        "c: unfinished (its checkpoints so far are analysed)"]

