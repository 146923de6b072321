"""run.sh, the study in one command, on a tiny model and a toy SentEval folder: three runs per seed (baseline,
constant RR, RR schedule), their STS test scores, the analysis, a second call that trains nothing again, and
its one-line refusals."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO

SETTINGS = dict(SEEDS="1", MAX_STEPS="4", EVAL_STEPS="2", SAVE_STEPS="2", BATCH_SIZE="8", MAX_LEN="16",
                LR="1e-3", CHECKPOINT_STEPS="2", TRAIN_ARGS="--unpad_inputs --rank_eval_steps 2",
                RR_SCHEDULE_ARGS="--rr_patience 1")


def _study(tmp_path, model, corpus, data, **overrides):
    # the interpreter running the tests, whatever `python` on PATH is
    env = dict(os.environ, **SETTINGS, PYTHON=sys.executable, MODEL=str(model), TRAIN_FILE=str(corpus),
               DATA_DIR=str(data), OUT=str(tmp_path / "study"))
    env.update(overrides)
    return subprocess.run(["bash", str(REPO / "run.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)


def test_study_trains_scores_analyses_and_resumes(tmp_path, tiny_bert, corpus, fake_senteval_sts):
    proc = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "study" / "runs"
    for name, weight, schedule in (("baseline-seed1", 0.0, "constant"), ("rr-seed1", 0.1, "constant"),
                                   ("rr-schedule-seed1", 0.1, "target")):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 4
        assert summary["rank_reduction"]["weight"] == weight
        assert summary["rank_reduction"]["schedule"] == schedule
        assert summary["args"]["max_grad_norm"] == 1.0
        assert summary["args"]["unpad_inputs"] is True and summary["args"]["rank_eval_steps"] == 2  # TRAIN_ARGS
        assert "STSBenchmark" in json.loads((runs / name / "sts_test.json").read_text())["tasks"]
    assert json.loads((runs / "rr-schedule-seed1" / "summary.json").read_text())["args"]["rr_patience"] == 1
    assert (tmp_path / "study" / "analysis" / "report.md").is_file()
    assert "RR_SCHEDULE=target" in (tmp_path / "study" / "study.settings").read_text()

    again = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is finished already; not training again") == 3

    # the same OUT with another recipe is refused by name, before anything runs; the runs stay as they were
    before = (runs / "rr-seed1" / "metrics.jsonl").read_bytes()
    changed = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts, LR="2e-3", RR_WEIGHT="0.5")
    assert changed.returncode == 2 and "LR" in changed.stderr and "RR_WEIGHT" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    assert (runs / "rr-seed1" / "metrics.jsonl").read_bytes() == before


def test_a_run_killed_before_its_first_state_is_moved_out_of_the_runs_folder(tmp_path, tiny_bert, corpus,
                                                                             fake_senteval_sts):
    # a MixCSE study (its folders carry the method's name), so one run also checks METHODS and its recipe
    half = tmp_path / "study" / "runs" / "mixcse-baseline-seed1"
    half.mkdir(parents=True)
    (half / "metrics.jsonl").write_text('{"step": 0}\n')
    proc = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts, VARIANTS="baseline", METHODS="mixcse",
                  TRAIN_ARGS_mixcse="--mix_lambda 0.3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert os.listdir(tmp_path / "study" / "runs") == ["mixcse-baseline-seed1"]
    mix = json.loads((half / "summary.json").read_text())["args"]
    # MixCSE's recipe (the MLP kept at evaluation), with the study's explicit LR and BATCH_SIZE over the recipe's
    assert mix["method"] == "mixcse" and mix["mlp_only_train"] is False
    assert mix["learning_rate"] == 1e-3 and mix["per_device_train_batch_size"] == 8
    assert mix["mix_lambda"] == 0.3  # TRAIN_ARGS_mixcse: that method's own flags
    assert "TRAIN_ARGS_mixcse=--mix_lambda 0.3" in (tmp_path / "study" / "study.settings").read_text()
    aside = os.listdir(tmp_path / "study" / "interrupted")
    assert len(aside) == 1 and aside[0].startswith("mixcse-baseline-seed1-")
    assert (tmp_path / "study" / "interrupted" / aside[0] / "metrics.jsonl").read_text() == '{"step": 0}\n'


@pytest.mark.parametrize("overrides, message", [
    ({"PYTHON": "/bin/false"}, "cannot import torch"),
    ({"TRAIN_FILE": "/nowhere/train.txt"}, "TRAIN_FILE /nowhere/train.txt: no such file"),
    ({"DATA_DIR": "/nowhere"}, "DATA_DIR /nowhere has no downstream/"),
    ({"MODEL": "/nowhere/model"}, "MODEL /nowhere/model cannot be loaded"),
    ({"VARIANTS": "baseline rrr"}, "unknown variant 'rrr'"),
    ({"METHODS": "simcse sbert"}, "METHODS: unknown method 'sbert'"),
    # the default training text is downloaded; a proxy on a closed local port makes that fail at once
    ({"TRAIN_FILE": "data/wiki1m_for_simcse.txt", "https_proxy": "http://127.0.0.1:9",
      "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "", "NO_PROXY": ""},
     "could not download the training text ("),
])
def test_bad_settings_fail_with_one_line(tmp_path, tiny_bert, corpus, fake_senteval_sts, overrides, message):
    if overrides.get("TRAIN_FILE", "").startswith("data/") and (REPO / overrides["TRAIN_FILE"]).exists():
        pytest.skip("data/wiki1m_for_simcse.txt exists here: nothing to download")
    proc = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts, **overrides)
    assert proc.returncode == 2
    assert message in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "study" / "runs").exists()


def test_a_run_another_process_trains_is_never_touched_and_repeated_seeds_count_once(tmp_path, tiny_bert, corpus,
                                                                                   fake_senteval_sts):
    import fcntl

    live = tmp_path / "study" / "runs" / "baseline-seed1"
    live.mkdir(parents=True)
    (live / "metrics.jsonl").write_text('{"step": 0}\n')  # no saved state yet: it would have been moved aside
    with open(live / ".lock", "w") as lock:
        lock.write("4242")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as train.py holds it while it trains
        proc = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts, SEEDS="1 1", VARIANTS="baseline")
    assert proc.returncode == 2
    assert "SEEDS has a repeated value; using each once: 1" in proc.stdout
    assert proc.stderr.strip().splitlines() == [
        f"run.sh: error: {live} is being trained by another process (pid 4242); stopping without touching it: run "
        "this study again once that process has ended"]
    assert (live / "metrics.jsonl").read_text() == '{"step": 0}\n' and not (tmp_path / "study" / "interrupted").exists()


def test_a_study_whose_runs_never_start_says_so_in_one_line(tmp_path, tiny_bert, corpus, fake_senteval_sts):
    proc = _study(tmp_path, tiny_bert, corpus, fake_senteval_sts, VARIANTS="baseline", TRAIN_ARGS="--dup_rate 0.5")
    assert proc.returncode == 1
    assert "argument --dup_rate: belongs to --method esimcse" in proc.stderr
    assert "run.sh: error: no run of this study has started training, so there is nothing to analyse" in proc.stderr
    assert "usage:" not in proc.stderr.replace("usage: train.py", "")
