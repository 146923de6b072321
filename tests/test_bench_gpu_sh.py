"""benchmarks/bench_gpu.sh, the GPU benchmarks in one run, plumbed end to end on the CPU with a tiny model and
tiny settings (the numbers mean nothing here; the GPU run is in docs/speed.md). Every run gets PYTHON = this
interpreter, so the suite works when run by a python that is not the `python3` on PATH, and runs from a
folder outside the repository, with relative paths, as a user's may."""

import json
import os
import subprocess
import sys

from tests.conftest import REPO
from tests.test_bench import senteval_with_trec  # noqa: F401 - the toy SentEval folder with TREC

SCRIPT = REPO / "benchmarks" / "bench_gpu.sh"
PARTS = ("step", "rr_solvers", "encode", "transfer")


def tiny_env(tmp_path, tiny_bert, data, **extra) -> dict:
    """Each part on the CPU at the smallest settings; the tiny model's tokenizer serves the random-init shape."""
    steps = "--cpu --steps 1 --warmup_steps 1 --batch_size 4 --config minilm-l6 --variant default"
    return dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(data), MODEL=str(tiny_bert), OUT_DIR="out",
                FEATURES_DIR=str(tmp_path / "features"), TRAIN_FILE=str(tmp_path / "absent.txt"),
                STEP_ARGS=steps.replace("--variant", "--variants") + " --rank_reduction 0 --no-sentence_transformers",
                RR_ARGS="--cpu --batch_sizes 8 --dims 8 --repeats 1",
                ENCODE_ARGS=f"{steps} --encode_limit 8 --skip suite eval",
                TRANSFER_ARGS="--tasks TREC --methods batched --mode fasttest --cpu", **extra)


def run(tmp_path, env, timeout=600):
    return subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=timeout)


def test_runs_every_benchmark_and_writes_their_results(tmp_path, tiny_bert, senteval_with_trec):  # noqa: F811
    proc = run(tmp_path, tiny_env(tmp_path, tiny_bert, senteval_with_trec))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "out"  # OUT_DIR relative to the caller's folder
    for part in PARTS:
        assert f"{part} exit status: 0" in proc.stdout
        assert "failed" not in json.loads((out / f"{part}.json").read_text())
    step = json.loads((out / "step.json").read_text())
    assert step["train_file"] == "STS test sentences"  # TRAIN_FILE absent: the benchmark's default
    assert step["model"] == "minilm-l6 (random init)" and step["train"]["default"]["ms_per_step"] > 0
    assert {t["dim"] for t in json.loads((out / "rr_solvers.json").read_text())["penalty"]} == {8}  # RR_ARGS wins
    assert json.loads((out / "encode.json").read_text())["encode"]["sentences"] == 8
    transfer = json.loads((out / "transfer.json").read_text())
    assert transfer["mode"] == "fasttest" and 0 <= transfer["results"]["batched"]["TREC"]["acc"] <= 100
    assert (tmp_path / "features" / "TREC.npz").is_file()
    assert {"gpu.txt", *(f"{part}.log" for part in PARTS)} <= {p.name for p in out.iterdir()}


def test_failing_parts_fail_the_script_after_the_others_ran(tmp_path, tiny_bert, senteval_with_trec):  # noqa: F811
    env = tiny_env(tmp_path, tiny_bert, senteval_with_trec)  # three parts rejected by their scripts, the last runs
    env.update(STEP_ARGS="--steps 0", RR_ARGS="--repeats 0", ENCODE_ARGS="--eval_steps 0")
    proc = run(tmp_path, env)
    assert proc.returncode == 1
    assert [f"{part} exit status: {status}" in proc.stdout for part, status in zip(PARTS, (2, 2, 2, 0))] == [True] * 4
    assert "--steps" in (tmp_path / "out" / "step.log").read_text()
    assert proc.stderr.splitlines()[-1] == "bench_gpu.sh: failed: step rr_solvers encode"


NO_TORCH = ("bench_gpu.sh: error: {} cannot import torch; install the requirements or set "
            "PYTHON=/path/to/python")


def test_a_python_without_torch_stops_it_at_once_with_one_line(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON="/bin/false", OUT_DIR=str(out))
    proc = run(tmp_path, env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [NO_TORCH.format("/bin/false")] and proc.stdout == ""
    assert not out.exists()  # checked before anything is written


def test_the_default_interpreter_is_the_python3_on_path(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "python3"  # a python3 without torch, first on PATH
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    env.update(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OUT_DIR=str(tmp_path / "out"))
    proc = run(tmp_path, env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [NO_TORCH.format(fake)]
