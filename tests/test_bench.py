"""utils.bench runs end to end on tiny models and writes the JSON docs/speed.md describes (speed itself is
not asserted: benchmarks print tables, tests check that they measure)."""

import json
import math

import pytest

from utils import bench


def _positive(x):
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_bench_on_a_checkpoint_writes_every_measurement(tmp_path, tiny_bert, shared_data):
    out = tmp_path / "bench.json"
    r = bench.main(["--model", str(tiny_bert), "--data_dir", str(shared_data), "--steps", "2", "--warmup_steps", "1",
                    "--batch_size", "4", "--encode_limit", "30", "--eval_steps", "10", "--cpu", "--json", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(r))
    for key in ("train_speedup_vs_sentence_transformers", "encode_speedup_vs_sentence_transformers"):
        assert _positive(r[key])
    assert isinstance(r["rr_overhead_fraction"], float) and r["rr_overhead_fraction"] > -1
    assert all(_positive(ms) for solver in ("eigh", "quadrature") for ms in r["rr_solver_ms"][solver].values())
    assert set(r["train"]) == {"default", "unpad", "sentence-transformers", "default + rank-reduction",
                               "unpad + rank-reduction"}
    assert r["rr_overhead_fraction"] == r["train"][f"{r['fastest_variant']} + rank-reduction"]["rr_overhead_fraction"]
    for t in r["train"].values():
        assert t["steps"] == 2 and all(_positive(t[k]) for k in ("ms_per_step", "sentences_per_s", "real_tokens_per_s", "mfu"))
    # every method trained on the same batches: the same real tokens
    assert r["train"]["default"]["real_tokens"] == r["train"]["unpad"]["real_tokens"]
    assert r["encode"]["sentences"] == 30
    assert _positive(r["sts_test_suite_seconds"])
    ev = r["in_training_eval"]
    assert _positive(ev["full_seconds"]) and 0 < ev["fraction_of_training_time"] < 1
    table = bench.format_table(r)
    assert "sentence-transformers" in table and "--unpad_inputs" in table


def test_bench_random_init_config(tmp_path, tiny_bert, shared_data):
    # the tiny model's tokenizer stands in for bert-base-uncased (no hub here)
    r = bench.main(["--config", "minilm-l6", "--tokenizer", str(tiny_bert), "--data_dir", str(shared_data),
                    "--steps", "1", "--warmup_steps", "1", "--batch_size", "4", "--cpu", "--variants", "default",
                    "--skip", "sentence-transformers", "rr", "encode", "suite", "eval"])
    assert r["model"] == "minilm-l6 (random init)"
    assert list(r["train"]) == ["default"] and _positive(r["train"]["default"]["ms_per_step"])
    assert "train_speedup_vs_sentence_transformers" not in r


def test_bench_methods_times_every_method_against_simcse(tmp_path, tiny_bert, shared_data):
    r = bench.main(["--model", str(tiny_bert), "--data_dir", str(shared_data), "--steps", "1", "--warmup_steps", "1",
                    "--batch_size", "4", "--cpu", "--variants", "unpad", "--methods", "mixcse", "esimcse",
                    "promptbert", "infocse", "--skip", "sentence-transformers"])
    assert list(r["methods"]) == ["simcse", "mixcse", "esimcse", "promptbert", "infocse"]  # SimCSE, the reference, first
    assert r["methods"]["simcse"]["vs_simcse"] == 1.0 and "failed" not in r
    for t in r["methods"].values():
        assert all(_positive(t[k]) for k in ("ms_per_step", "rr_ms_per_step", "vs_simcse", "rr_vs_simcse"))
    table = bench.format_methods_table(r)
    assert "| ESimCSE |" in table and "--unpad_inputs" in table


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--batch_size", "1"), ("--warmup_steps", "0"),
                                         ("--rank_reduction", "0")])
def test_bench_rejects_bad_numbers(flag, value, capsys):
    with pytest.raises(SystemExit):
        bench.parse_args(["--data_dir", "x", flag, value])
    assert flag in capsys.readouterr().err


def test_bench_names_a_missing_data_dir(tmp_path):
    with pytest.raises(SystemExit) as err:
        bench.main(["--data_dir", str(tmp_path / "nope"), "--cpu"])
    assert "nope" in str(err.value)


def test_bench_names_a_missing_peer_package_before_measuring(monkeypatch, shared_data):
    monkeypatch.setitem(__import__("sys").modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(SystemExit) as err:
        bench.main(["--data_dir", str(shared_data), "--cpu"])
    assert "datasets" in str(err.value) and "--skip sentence-transformers" in str(err.value)


def test_a_failed_measurement_is_recorded_and_the_others_run(tmp_path, tiny_bert, shared_data, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("no kernel image is available\nsecond line")

    monkeypatch.setattr(bench, "time_encode", broken)
    out = tmp_path / "bench.json"
    r = bench.main(["--config", "minilm-l6", "--tokenizer", str(tiny_bert), "--data_dir", str(shared_data),
                    "--steps", "1", "--warmup_steps", "1", "--batch_size", "4", "--cpu", "--variants", "default",
                    "--skip", "sentence-transformers", "rr", "eval", "suite", "--encode_limit", "8",
                    "--json", str(out)])  # the STS suite is skipped: a full test-set encode, minutes on one thread
    assert r["failed"] == {"encode": "RuntimeError: no kernel image is available"}
    assert "encode" not in r and _positive(r["train"]["default"]["ms_per_step"])  # training was still measured
    assert json.loads(out.read_text())["failed"] == r["failed"]
    assert "FAILED: encode: RuntimeError: no kernel image is available" in capsys.readouterr().out


def test_bench_exits_when_no_variant_runs(tiny_bert, shared_data, monkeypatch):
    monkeypatch.setattr(bench, "time_train_py", lambda *a, **k: 1 / 0)
    with pytest.raises(SystemExit) as err:
        bench.main(["--config", "minilm-l6", "--tokenizer", str(tiny_bert), "--data_dir", str(shared_data),
                    "--cpu", "--variants", "default", "--skip", "sentence-transformers"])
    assert "no variant" in str(err.value)
