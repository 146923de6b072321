"""bench_gpu.sh, both GPU benchmarks in one run, plumbed end to end on the CPU with a tiny model and tiny
settings (the numbers mean nothing here; the GPU run is in docs/speed.md). Every run gets PYTHON = this
interpreter, so the suite works when run by a python that is not the `python3` on PATH. The data is a toy
SentEval folder with a small TREC: the plumbing is under test, not the speed."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO
from utils.transfer import TREC_LABELS


@pytest.fixture(scope="module")
def data(tmp_path_factory, fake_senteval_sts):
    root = tmp_path_factory.mktemp("bench-data") / "data"
    shutil.copytree(fake_senteval_sts, root)
    trec = root / "downstream" / "TREC"
    trec.mkdir()
    for name, n in (("train_5500.label", 60), ("TREC_10.label", 18)):
        (trec / name).write_text("".join(f"{TREC_LABELS[i % 6]}:x question {i} about thing {i % 6} ?\n"
                                         for i in range(n)))
    return root


def test_runs_both_benchmarks_and_writes_their_results(tmp_path, tiny_bert, data):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(data), MODEL=str(tiny_bert), OUT_DIR=str(out),
               FEATURES_DIR=str(tmp_path / "features"), TRAIN_FILE=str(tmp_path / "absent.txt"),
               BENCH_ARGS="--config minilm-l6 --cpu --steps 1 --warmup_steps 1 --batch_size 4 --variants default "
                          "--skip sentence-transformers rr encode suite eval",
               TRANSFER_ARGS="--tasks TREC --methods batched --mode fasttest")
    proc = subprocess.run(["bash", str(REPO / "bench_gpu.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "utils.bench exit status: 0" in proc.stdout and "bench_transfer.py exit status: 0" in proc.stdout
    bench = json.loads((out / "bench_gpu_bert_base.json").read_text())
    assert bench["train_file"] == "STS test sentences"  # TRAIN_FILE absent: the bench's default
    assert bench["train"]["default"]["ms_per_step"] > 0
    transfer = json.loads((out / "bench_transfer_gpu.json").read_text())
    assert transfer["mode"] == "fasttest" and 0 <= transfer["results"]["batched"]["TREC"]["acc"] <= 100
    assert (tmp_path / "features" / "TREC.npz").is_file()
    assert {"gpu.txt", "bench.log", "transfer.log"} <= {p.name for p in out.iterdir()}


def test_a_failing_benchmark_fails_the_script_after_the_other_ran(tmp_path, tiny_bert, data):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, DATA_DIR=str(data), MODEL=str(tiny_bert), OUT_DIR=str(out),
               FEATURES_DIR=str(tmp_path / "features"), BENCH_ARGS="--steps 0",  # rejected by the bench
               TRANSFER_ARGS="--tasks TREC --methods batched --mode fasttest")
    proc = subprocess.run(["bash", str(REPO / "bench_gpu.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=600)
    assert proc.returncode != 0
    assert "utils.bench exit status: 2" in proc.stdout and "bench_transfer.py exit status: 0" in proc.stdout
    assert "--steps" in (out / "bench.log").read_text()


NO_TORCH = ("bench_gpu.sh: error: {} cannot import torch; install the requirements or set "
            "PYTHON=/path/to/python")


def test_a_python_without_torch_stops_it_at_once_with_one_line(tmp_path):
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON="/bin/false", OUT_DIR=str(out))
    proc = subprocess.run(["bash", str(REPO / "bench_gpu.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=60)
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
    proc = subprocess.run(["bash", str(REPO / "bench_gpu.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [NO_TORCH.format(fake)]
