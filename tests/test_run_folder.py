"""utils.run_folder: run identity, the folder lock, and which flags a resume may change."""

import os
import signal
import subprocess
import sys
import time

import pytest

from utils.run_folder import (FolderLock, RunFolderError, check_state, compare_args, mark_state, new_run, read_run,
                              resumable_states)

ARGS = {"learning_rate": 3e-5, "seed": 1, "logging_steps": 10, "eval_steps": 125, "max_train_steps": 100,
        "rr_schedule": "constant", "rr_start": "0", "rank_eval_steps": 10}


def test_training_flags_are_refused_and_cadence_flags_allowed():
    refused, allowed = compare_args(ARGS, {**ARGS, "learning_rate": 1e-5, "seed": 2, "logging_steps": 1,
                                           "eval_steps": 5, "max_train_steps": 200})
    assert refused == {"learning_rate": (3e-5, 1e-5), "seed": (1, 2)}
    assert allowed == {"logging_steps": (10, 1), "eval_steps": (125, 5), "max_train_steps": (100, 200)}
    assert compare_args(ARGS, {**ARGS, "max_train_steps": 50})[0] == {"max_train_steps": (100, 50)}  # shorter
    assert compare_args(ARGS, {**ARGS, "new_flag": 1}) == ({}, {})  # a flag the saved run did not know


def test_evaluation_cadence_is_a_training_flag_where_training_reads_the_evaluations():
    plateau = {**ARGS, "rr_schedule": "plateau"}
    assert compare_args(plateau, {**plateau, "eval_steps": 5})[0] == {"eval_steps": (125, 5)}
    peak = {**ARGS, "rr_start": "peak"}
    assert compare_args(peak, {**peak, "rank_eval_steps": 5})[0] == {"rank_eval_steps": (10, 5)}
    # the rank evaluations' STS-B dev drives the schedule only with --rr_watch every
    assert compare_args(plateau, {**plateau, "rank_eval_steps": 5})[0] == {}
    dense = {**plateau, "rr_watch": "every", "rank_eval_until": 60}
    assert compare_args(dense, {**dense, "rank_eval_steps": 5, "rank_eval_until": 9})[0] == {
        "rank_eval_steps": (10, 5), "rank_eval_until": (60, 9)}
    constant = {**dense, "rr_schedule": "constant"}  # nothing reads STS-B dev
    assert compare_args(constant, {**constant, "rank_eval_steps": 5, "eval_steps": 5})[0] == {}
    # the peak detector is fed by every evaluation, the full ones too: their cadence moves the declared peak
    assert compare_args(peak, {**peak, "eval_steps": 5})[0] == {"eval_steps": (125, 5)}
    # an early stop counts STS-B dev evaluations
    stopping = {**ARGS, "early_stopping_patience": 3}
    assert compare_args(stopping, {**stopping, "eval_steps": 5})[0] == {"eval_steps": (125, 5)}
    assert compare_args(stopping, {**stopping, "early_stopping_patience": 5}) == ({}, {"early_stopping_patience": (3, 5)})


def _state(folder, run_id=None, step=2):
    folder.mkdir(parents=True)
    for name in ("model.safetensors", "optimizer.bin", "random_states_0.pkl"):
        (folder / name).write_bytes(b"x")
    if run_id:
        mark_state(str(folder), run_id, step)
    return folder


def test_a_state_resumes_only_into_its_own_run(tmp_path):
    run, other = tmp_path / "run", tmp_path / "other"
    run.mkdir()
    other.mkdir()
    run_id, other_id = new_run(str(run), ARGS), new_run(str(other), ARGS)
    assert read_run(str(run)) == {"run_id": run_id, "args": ARGS}
    own = _state(run / "state" / "step_0000002", run_id)
    check_state(str(own), str(run), run_id)
    foreign = _state(other / "state" / "step_0000002", other_id)
    with pytest.raises(RunFolderError, match="saved by another run"):
        check_state(str(foreign), str(run), run_id)
    legacy = _state(run / "state" / "step_0000004")  # no run.json: from the run's own state/ only
    check_state(str(legacy), str(run), run_id)
    with pytest.raises(RunFolderError, match="not saved by the run"):
        check_state(str(_state(other / "state" / "step_0000004")), str(run), run_id)
    best = run / "best"
    best.mkdir()
    (best / "model.safetensors").write_bytes(b"x")
    with pytest.raises(RunFolderError, match="not a training state"):
        check_state(str(best), str(run), run_id)
    with pytest.raises(RunFolderError, match="no such folder"):
        check_state(str(run / "nowhere"), str(run), run_id)
    assert resumable_states("latest", str(run / "state")) == [str(legacy), str(own)]  # newest first
    with pytest.raises(RunFolderError, match="no saved state"):
        resumable_states("latest", str(tmp_path / "none"))


def test_a_broken_run_record_is_said(tmp_path):
    (tmp_path / "run.json").write_text('{"run_id": ')
    with pytest.raises(RunFolderError, match="not a valid run record"):
        read_run(str(tmp_path))
    assert read_run(str(tmp_path / "absent")) is None


def test_the_lock_excludes_a_second_holder_and_dies_with_its_process(tmp_path):
    lock = FolderLock(str(tmp_path))
    with pytest.raises(RunFolderError, match=f"in use by another train.py process \\(pid {os.getpid()}\\)"):
        FolderLock(str(tmp_path))
    lock.release()
    FolderLock(str(tmp_path)).release()

    code = f"import sys, time; sys.path.insert(0, {os.getcwd()!r}); from utils.run_folder import FolderLock; " \
           f"FolderLock({str(tmp_path)!r}); print('locked', flush=True); time.sleep(60)"
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(RunFolderError, match=f"pid {holder.pid}"):
        FolderLock(str(tmp_path))
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.time() + 10
    while True:  # the kernel drops a killed process's lock: nothing is left stuck
        try:
            FolderLock(str(tmp_path)).release()
            break
        except RunFolderError:
            assert time.time() < deadline
            time.sleep(0.05)
