"""The benchmarks (benchmarks/) run end to end in this process on tiny models and toy data and write the JSON
docs/speed.md describes. Speed itself is never asserted: benchmarks print tables, tests check that they
measure (time and memory of every variant), compare like with like, and fail one part at a time."""

import json
import math
import shutil

import pytest
import torch

from benchmarks import (bench_corpus, bench_encode, bench_memory, bench_methods, bench_rr_solvers, bench_step,
                        bench_transfer, timing)
from utils.methods import METHODS
from utils.transfer import TREC_LABELS

TINY_STEPS = ["--steps", "2", "--warmup_steps", "1", "--batch_size", "4", "--cpu"]


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _has_memory(t: dict):
    """Every measured variant reports its resident memory next to its time (and no CUDA peak on a CPU)."""
    return _positive(t["rss_mb"]) and isinstance(t["rss_growth_mb"], float) and "cuda_peak_mb" not in t


@pytest.fixture(scope="session")
def senteval_with_trec(tmp_path_factory, fake_senteval_sts):
    """The toy SentEval folder with every STS test set and a small TREC."""
    root = tmp_path_factory.mktemp("bench-data") / "data"
    shutil.copytree(fake_senteval_sts, root)
    trec = root / "downstream" / "TREC"
    trec.mkdir()
    for name, n in (("train_5500.label", 60), ("TREC_10.label", 18)):
        (trec / name).write_text("".join(f"{TREC_LABELS[i % 6]}:x question {i} about thing {i % 6} ?\n"
                                         for i in range(n)))
    return root


def test_meter_reports_time_and_the_memory_a_span_allocates():
    meter = timing.Meter(torch.device("cpu"))
    with meter:
        kept = torch.ones(64 * 2**20 // 4)  # 64 MB, written, so resident
    r = meter.result()
    assert _positive(r["seconds"]) and _has_memory(r) and r["rss_growth_mb"] > 32
    del kept


def test_step_against_sentence_transformers_with_and_without_rr(tmp_path, tiny_bert, fake_senteval_sts, capsys):
    out = tmp_path / "step.json"
    r = bench_step.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), *TINY_STEPS,
                         "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert set(r["train"]) == {"default", "unpad", "default + rank-reduction", "unpad + rank-reduction",
                               "sentence-transformers"} and "failed" not in r
    for t in r["train"].values():
        assert t["steps"] == 2 and _has_memory(t)
        assert all(_positive(t[k]) for k in ("ms_per_step", "sentences_per_s", "real_tokens_per_s", "mfu"))
    # every row trained on the same batches: the same real tokens
    assert len({t["real_tokens"] for t in r["train"].values()}) == 1
    assert _positive(r["train_speedup_vs_sentence_transformers"]) and _positive(r["train_speedup_default_flags"])
    assert r["rr_overhead_fraction"] == r["train"][f"{r['fastest_variant']} + rank-reduction"]["rr_overhead_fraction"]
    assert r["train"]["unpad + rank-reduction"]["flags"] == "--unpad_inputs --rank-reduction 0.1"
    table = capsys.readouterr().out
    assert "| train.py --unpad_inputs |" in table and "| sentence-transformers |" in table and "RSS" in table


def test_step_builds_train_pys_objects(tiny_bert, fake_senteval_sts):
    from utils.rank_reduction import RankReduction
    from utils.training import TrainStep

    sentences = timing.sts_test_sentences(fake_senteval_sts)
    train = bench_step.TrainPy(str(tiny_bert), sentences, ["--per_device_train_batch_size", "4", "--cpu",
                                                           "--rank-reduction", "0.5", "--unpad_inputs"], 3)
    assert set(train.steps) == {"", "rr"} and all(isinstance(s, TrainStep) for s in train.steps.values())
    assert isinstance(train.steps["rr"].model.method, RankReduction) and train.model.unpad
    before = [p.detach().clone() for p in train.model.parameters()]
    train.run("rr", 0)
    assert train.rr.weight == 0.5  # λ set for the step, as train.py's loop sets it
    assert any(not torch.equal(a, b) for a, b in zip(before, train.model.parameters()))  # one optimizer step


def test_step_random_init_config_without_rr_or_peer(tiny_bert, fake_senteval_sts):
    # the tiny model's tokenizer stands in for bert-base-uncased (no hub here)
    r = bench_step.main(["--config", "minilm-l6", "--tokenizer", str(tiny_bert), "--data_dir", str(fake_senteval_sts),
                         "--steps", "1", "--warmup_steps", "1", "--batch_size", "4", "--cpu", "--variants", "default",
                         "--rank_reduction", "0", "--no-sentence_transformers"])
    assert r["model"] == "minilm-l6 (random init)" and list(r["train"]) == ["default"]
    assert "train_speedup_vs_sentence_transformers" not in r and "rr_overhead_fraction" not in r


def test_methods_times_every_registered_method_against_simcse(tmp_path, tiny_bert, fake_senteval_sts, capsys):
    out = tmp_path / "methods.json"
    # ESimCSE's queue (160 rows) must fill: 10 warm-up steps of 16 sentences
    r = bench_methods.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), "--steps", "1",
                            "--warmup_steps", "10", "--batch_size", "16", "--cpu", "--variant", "unpad",
                            "--json", str(out)])
    assert list(r["methods"]) == list(METHODS) and list(METHODS)[0] == "simcse"  # the registry, SimCSE first
    assert "failed" not in r and json.loads(out.read_text()) == json.loads(json.dumps(r))
    assert r["methods"]["simcse"]["vs_simcse"] == 1.0 and r["variant_flags"] == "--unpad_inputs"
    for t in r["methods"].values():
        for row in (t, t["rank_reduction"]):
            assert _positive(row["ms_per_step"]) and _positive(row["vs_simcse"]) and _has_memory(row)
    table = capsys.readouterr().out
    assert all(f"| {m.label} |" in table and f"| {m.label} + RR λ = 0.1 |" in table for m in METHODS.values())


def test_methods_a_method_that_cannot_run_is_recorded_and_the_others_run(tiny_bert, fake_senteval_sts):
    r = bench_methods.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), *TINY_STEPS,
                            "--methods", "esimcse", "mixcse", "--rank_reduction", "0"])
    assert list(r["methods"]) == ["simcse", "mixcse"] and "rank_reduction" not in r["methods"]["mixcse"]
    assert r["failed"]["train.py --method esimcse"].startswith("ValueError: argument --queue_size")


def test_encode_suite_and_in_training_eval(tmp_path, tiny_bert, fake_senteval_sts, capsys):
    out = tmp_path / "encode.json"
    r = bench_encode.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), *TINY_STEPS,
                           "--encode_limit", "30", "--eval_steps", "10", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and "failed" not in r
    e = r["encode"]
    assert e["sentences"] == 30 and _positive(r["encode_speedup_vs_sentence_transformers"])
    for name in ("evaluate.py", "sentence-transformers"):
        assert _positive(e[name]["sentences_per_s"]) and _has_memory(e[name])
    assert _positive(r["sts_test_suite"]["seconds"]) and _has_memory(r["sts_test_suite"])
    ev = r["in_training_eval"]
    assert ev["eval_steps"] == 10 and ev["rank_eval_steps"] == 10 and _positive(ev["step"]["ms_per_step"])
    assert 0 < ev["fraction_of_training_time"] < 1 and 0 < ev["rank_eval_fraction_while_dense"] < 1
    assert _has_memory(ev["full"]) and _has_memory(ev["rank_only"])
    assert "| in-training evaluation (STS-B dev, SICK-R trial, rank probe) |" in capsys.readouterr().out


def test_encode_compares_the_same_embedding(minilm, fake_senteval_sts):
    """evaluate.py's encoder and sentence-transformers' read the same vectors of the real encoder (fp16 on disk,
    both loaded in float32), so the encode timing compares like with like."""
    sentences = timing.sts_test_sentences(fake_senteval_sts)[:12]
    args = bench_encode.parse_args(["--data_dir", "x", "--eval_batch_size", "4"])
    ours, max_length = bench_encode.evaluate_py_encoder(str(minilm), args, torch.device("cpu"))
    st = timing.st_model(str(minilm), "cls", max_length, torch.device("cpu"))
    theirs = st.encode(sentences, batch_size=4, convert_to_tensor=True, show_progress_bar=False)
    torch.testing.assert_close(ours(sentences), theirs.cpu(), atol=1e-4, rtol=1e-4)


def test_rr_solvers_time_every_solver_and_size(tmp_path, capsys):
    out = tmp_path / "rr.json"
    r = bench_rr_solvers.main(["--batch_sizes", "8", "16", "--dims", "8", "--repeats", "1", "--cpu",
                               "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and "eigh" not in r  # the eigh placement: GPU only
    assert {(t["solver"], t["batch"], t["dim"]) for t in r["penalty"]} == {
        (s, b, 8) for s in ("eigh", "quadrature") for b in (8, 16)}
    assert all(_positive(t["ms"]) and _has_memory(t) for t in r["penalty"])
    assert "| 16 x 8 | quadrature |" in capsys.readouterr().out


def test_transfer_times_both_fitters_on_cached_features(tmp_path, tiny_bert, senteval_with_trec, capsys):
    out, cache = tmp_path / "transfer.json", tmp_path / "features"
    argv = ["--model_name_or_path", str(tiny_bert), "--data_dir", str(senteval_with_trec), "--cache_dir", str(cache),
            "--tasks", "TREC", "--mode", "fasttest", "--cpu", "--json", str(out)]
    r = bench_transfer.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(r)) and r["mode"] == "fasttest"
    for method in ("batched", "sklearn"):
        t = r["results"][method]["TREC"]
        assert 0 <= t["acc"] <= 100 and _positive(t["seconds"]) and _has_memory(t)
    assert "sentences embedded" in capsys.readouterr().out and (cache / "TREC.npz").is_file()
    bench_transfer.main(argv)
    assert "sentences embedded" not in capsys.readouterr().out  # the features came from the cache
    with pytest.raises(SystemExit) as err:  # another pooler's features are not these
        bench_transfer.main([*argv, "--pooler", "cls"])
    assert "use another --cache_dir" in str(err.value)


def test_memory_reads_every_variant_in_its_own_process(tmp_path, tiny_bert, fake_senteval_sts, capsys):
    out = tmp_path / "memory.json"
    r = bench_memory.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), "--batch_size", "4",
                           "--cpu", "--at", "2", "3", "--json", str(out)])
    assert json.loads(out.read_text()) == r and r["at"] == [2, 3] and not r.get("failed")
    assert list(r["variants"]) == ["default", "unpad", "unpad-exact"]
    for v in r["variants"].values():
        assert len(v["rss_mb"]) == 2 and all(map(_positive, v["rss_mb"] + v["ms_per_step"]))
        stages = list(v["stages_mb"].values())
        assert list(v["stages_mb"]) == ["imports", "model_and_optimizer", "first_step"] and all(map(_positive, stages))
        assert stages[0] < stages[1]  # the model's weights and the optimizer count after the imports
    table = capsys.readouterr().out
    assert "| unpad-exact |" in table and "RSS at step 3, MB" in table and "first step" in table


def test_corpus_reads_a_list_and_the_arrow_copy_each_in_its_own_process(tmp_path, capsys):
    out, work = tmp_path / "corpus.json", tmp_path / "work"
    r = bench_corpus.main(["--lines", "3000", "--batches", "5", "--batch_size", "8", "--workdir", str(work),
                           "--json", str(out)])
    assert json.loads(out.read_text()) == r and not r.get("failed") and r["lines"] == 3000
    readers = r["readers"]
    assert list(readers) == ["list", "arrow-first", "arrow-cached"]
    assert readers["arrow-first"]["converted"] is True and readers["arrow-cached"]["converted"] is False
    for v in readers.values():
        assert v["sentences"] == 3000 and _positive(v["read_s"]) and _positive(v["batches_s"])
        assert all(_positive(v[when][key]) for when in ("before", "read", "batches") for key in ("rss_mb", "own_mb"))
        assert v["batches"]["own_mb"] <= v["batches"]["rss_mb"]
    assert _positive(r["corpus"]["file_mb"]) and _positive(r["corpus"]["arrow_mb"])
    assert (work / "corpus.txt").is_file()  # a --workdir is kept
    table = capsys.readouterr().out
    assert "| Arrow, cached copy |" in table and "3,000 lines" in table


@pytest.mark.parametrize("script, flag, value", [
    (bench_step, "--steps", "0"), (bench_step, "--batch_size", "1"), (bench_step, "--warmup_steps", "0"),
    (bench_step, "--rank_reduction", "-1"), (bench_methods, "--methods", "nope"), (bench_encode, "--eval_steps", "0"),
    (bench_rr_solvers, "--batch_sizes", "1"), (bench_rr_solvers, "--repeats", "0"), (bench_transfer, "--tasks", "XX"),
    (bench_memory, "--at", "1"), (bench_memory, "--variants", "nope"), (bench_corpus, "--lines", "0"),
    (bench_corpus, "--readers", "nope")])
def test_bad_numbers_and_names_are_rejected(script, flag, value, capsys):
    required = {bench_rr_solvers: [], bench_corpus: [],
                bench_transfer: ["--model_name_or_path", "m", "--cache_dir", "c"]}
    with pytest.raises(SystemExit):
        script.parse_args([*required.get(script, ["--data_dir", "x"]), flag, value])
    assert f"argument {flag}" in capsys.readouterr().err


@pytest.mark.parametrize("script", [bench_step, bench_methods, bench_encode])
def test_a_missing_data_dir_is_named(script, tmp_path):
    with pytest.raises(SystemExit) as err:
        script.main(["--data_dir", str(tmp_path / "nope"), "--cpu"])
    assert "nope" in str(err.value)


def test_a_missing_peer_package_is_named_before_measuring(monkeypatch, tmp_path):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit) as err:
        bench_step.main(["--data_dir", str(tmp_path / "nope"), "--cpu"])
    assert "datasets" in str(err.value) and "--no-sentence_transformers" in str(err.value)


def test_a_failed_measurement_is_recorded_and_the_others_run(tmp_path, tiny_bert, fake_senteval_sts, monkeypatch,
                                                             capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available\nsecond line")

    monkeypatch.setattr(bench_encode, "time_encode", broken)
    out = tmp_path / "encode.json"
    r = bench_encode.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), *TINY_STEPS,
                           "--skip", "eval", "--json", str(out)])
    assert r["failed"] == {"encode": "RuntimeError: no kernel image is available"}
    assert "encode" not in r and _positive(r["sts_test_suite"]["seconds"])  # the suite was still measured
    assert json.loads(out.read_text())["failed"] == r["failed"]
    assert "FAILED: encode: RuntimeError: no kernel image is available" in capsys.readouterr().out


def test_step_exits_when_no_variant_runs(tmp_path, tiny_bert, fake_senteval_sts, monkeypatch):
    monkeypatch.setattr(bench_step, "TrainPy", lambda *a, **k: 1 / 0)
    out = tmp_path / "step.json"
    with pytest.raises(SystemExit) as err:
        bench_step.main(["--model", str(tiny_bert), "--data_dir", str(fake_senteval_sts), *TINY_STEPS,
                         "--variants", "default", "--json", str(out)])
    assert "no variant" in str(err.value)
    assert json.loads(out.read_text())["failed"] == {"train.py default": "ZeroDivisionError: division by zero"}
