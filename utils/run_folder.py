"""A train.py output folder as one run: its identity, its lock, and what a resume may change.

- `run.json` (written when the run starts): a run id and the arguments it started with. Every saved
  training state carries the same id (`state/step_N/run.json`), so a state is resumed only into the run
  that saved it, and a folder that is not a saved state at all is told apart before anything is loaded.
- `.lock`: an exclusive `flock` held for the life of the process (the kernel drops it when the process
  dies, even by SIGKILL), so two train.py processes never write into one folder at once.
- `compare_args`: a resume continues the same training; flags that change it (learning rate, batch,
  seed, temperature, RR, ...) must be the saved ones, flags that only change what is logged, evaluated or
  saved may differ and are recorded.
"""

import fcntl
import json
import os
import uuid

from utils.rr_schedule import STALL_SCHEDULES

RUN_FILE = "run.json"
LOCK_FILE = ".lock"

# Flags a resumed run may change: they decide what is logged, evaluated and saved, not the updates.
RESUME_MAY_CHANGE = {
    "logging_steps", "eval_steps", "eval_batch_size", "rank_eval_steps",
    "rank_eval_until", "save_steps", "save_steps_until", "checkpointing_steps", "checkpoints_total_limit",
    "save_peak_checkpoint", "report_to", "probe_split", "energy_tau", "phase_patience", "phase_margin",
    "early_stopping_patience",
}
# ... unless training reads the evaluations: the plateau and target schedules read STS-B dev (with --rr_watch
# every, the rank evaluations' too), --rr_start peak the declared rank peak, so then their cadence and detector
# settings are training arguments too. Each flag: the settings under which training reads it (any one of them,
# every flag of it matching).
READS_DEV = {"rr_schedule": STALL_SCHEDULES}
READS_DENSE_DEV = {**READS_DEV, "rr_watch": ("every",)}
PEAK = {"rr_start": ("peak",)}
EVAL_DRIVES_TRAINING = {"eval_steps": (READS_DEV,), "rank_eval_steps": (PEAK, READS_DENSE_DEV),
                        "rank_eval_until": (PEAK, READS_DENSE_DEV), "probe_split": (PEAK, READS_DENSE_DEV),
                        "phase_patience": (PEAK,), "phase_margin": (PEAK,), "phase_metric": (PEAK,),
                        "energy_tau": (PEAK,)}


class RunFolderError(ValueError):
    """The output folder or a saved state cannot be used as asked; the message says why and what to do."""


def new_run(output_dir: str, args: dict) -> str:
    """Write `run.json` for a run that starts now; returns its id."""
    from utils.run_log import write_json_atomic

    run_id = uuid.uuid4().hex
    write_json_atomic(os.path.join(output_dir, RUN_FILE), {"run_id": run_id, "args": args}, indent=2)
    return run_id


def read_run(output_dir: str) -> dict | None:
    """The folder's run.json ({"run_id", "args"}), or None where there is none (a run started before run.json
    existed, or no run)."""
    path = os.path.join(output_dir, RUN_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            run = json.load(f)
        if not isinstance(run, dict) or "run_id" not in run:
            raise ValueError("no run_id")
    except ValueError as err:
        raise RunFolderError(f"{path} is not a valid run record ({err})") from None
    return run


def mark_state(state_dir: str, run_id: str, step: int) -> None:
    with open(os.path.join(state_dir, RUN_FILE), "w") as f:
        json.dump({"run_id": run_id, "step": step}, f)


def check_state(state_dir: str, output_dir: str, run_id: str | None) -> None:
    """Raise RunFolderError unless `state_dir` is a training state saved by the run in `output_dir`.

    A state without run.json (saved before run.json existed) is accepted only from the run's own
    state/ folder."""
    if not os.path.isdir(state_dir):
        raise RunFolderError(f"--resume_from_checkpoint {state_dir}: no such folder")
    marker = os.path.join(state_dir, RUN_FILE)
    has_weights = any(os.path.exists(os.path.join(state_dir, f)) for f in ("model.safetensors", "pytorch_model.bin"))
    if not has_weights or not any(name.startswith("random_states") for name in os.listdir(state_dir)):
        raise RunFolderError(
            f"--resume_from_checkpoint {state_dir} is not a training state saved by train.py (a "
            "state/step_NNNNNNN folder of --checkpointing_steps; best/ and checkpoints/ hold weights only)")
    own = os.path.realpath(os.path.dirname(os.path.abspath(state_dir))) == \
        os.path.realpath(os.path.join(output_dir, "state"))
    if not os.path.isfile(marker):
        if not own:
            raise RunFolderError(f"--resume_from_checkpoint {state_dir} was not saved by the run in "
                                 f"--output_dir {output_dir}; a state is resumed only into its own run")
        return
    with open(marker) as f:
        saved_id = json.load(f).get("run_id")
    if run_id is None or saved_id != run_id:
        raise RunFolderError(
            f"--resume_from_checkpoint {state_dir} was saved by another run than the one in --output_dir "
            f"{output_dir}; a state is resumed only into its own run (resume that run's folder instead)")


def compare_args(saved: dict, current: dict) -> tuple[dict, dict]:
    """(refused, allowed): {flag: (saved value, current value)} of the flags that differ, split into those
    a resume must keep and those it may change (RESUME_MAY_CHANGE, and a longer --max_train_steps)."""
    refused, allowed = {}, {}
    for key in sorted(set(saved) | set(current)):
        # a flag newer than the saved run (its default is what that run had), or how the run was reached
        if key not in saved or key in ("output_dir", "resume_from_checkpoint"):
            continue
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        reads_it = any(all(current.get(flag) in values for flag, values in when.items())
                       for when in EVAL_DRIVES_TRAINING.get(key, ()))
        longer = key == "max_train_steps" and old is not None and new is not None and new > old
        (allowed if (key in RESUME_MAY_CHANGE and not reads_it) or longer else refused)[key] = (old, new)
    return refused, allowed


class FolderLock:
    """An exclusive, non-blocking flock on OUTPUT_DIR/.lock for this process's life (released by the kernel
    when the process ends however it ends)."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(self._fd)
            raise RunFolderError(f"--output_dir {output_dir} is in use by another train.py process (pid {holder}); "
                                 "wait for it to end or choose another --output_dir") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def resumable_states(spec: str, state_root: str) -> list[str]:
    """The states --resume_from_checkpoint SPEC may load, in the order to try: for `latest`, every saved state
    newest first (a newest one that does not load falls back to the next); else SPEC alone."""
    from utils.checkpoint import state_dirs

    if spec != "latest":
        return [spec]
    found = state_dirs(state_root)
    if not found:
        raise RunFolderError(f"--resume_from_checkpoint latest: no saved state under {state_root}")
    return [path for _, path in reversed(found)]
