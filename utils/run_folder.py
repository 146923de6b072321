"""A train.py output folder as one run: its identity and lock, what a resume may change, and everything the
run writes there.

    OUTPUT_DIR/
      run.json            the run's id and the arguments it started with
      .lock               an exclusive flock held for the process's life (dropped by the kernel on any exit)
      metrics.jsonl       one JSON object per train / eval / rank record
      summary.json        written at the end
      best/               the best STS-B dev checkpoint (+ best_metrics.json, and README.md: its model card)
      peak/               the model at the rank peak (--save_peak_checkpoint)
      checkpoints/step-NNNNNN/   encoder exports for analyze_rank.py (--save_steps)
      state/step_NNNNNNN/        full training states (--checkpointing_steps), each marked with the run id

Every save is written aside and renamed into place (utils/files.py), so a kill leaves the previous complete
version. A state is resumed only into the run that saved it; flags that change the training must be the
saved ones, flags that only change what is logged, evaluated or saved may differ and are recorded.
"""

import copy
import errno
import fcntl
import functools
import json
import os
import platform
import re
import shutil
import sys
import uuid

from utils.files import atomic_dir, json_safe, publish_dir, recover_dir, write_json_atomic
from utils.rr_schedule import STALL_SCHEDULES

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
STATE_DIR = re.compile(r"^step_(\d+)$")
EXPORT_DIR = re.compile(r"^step-(\d+)$")

# Flags a resumed run may change: they decide what is logged, evaluated and saved, not the updates ...
RESUME_MAY_CHANGE = {
    "logging_steps", "eval_steps", "eval_batch_size", "rank_eval_steps", "rank_eval_until", "save_steps",
    "save_steps_until", "checkpointing_steps", "checkpoints_total_limit", "save_peak_checkpoint", "report_to",
    "probe_split", "probe_file", "energy_tau", "phase_patience", "phase_margin", "early_stopping_patience",
    "push_to_hub", "hub_private",
}
# ... unless training reads the evaluations: the plateau and target schedules and the early stop read STS-B
# dev (with --rr_watch every, the rank evaluations' too), --rr_start peak the declared rank peak (fed by every
# evaluation). Then their cadence and the detector's settings steer the training.


def _reads(args: dict) -> set:
    stall = args.get("rr_schedule") in STALL_SCHEDULES or (args.get("early_stopping_patience") or 0) > 0
    dense = stall and args.get("rr_watch") == "every"
    peak = args.get("rr_start") == "peak"
    reads = set()
    if stall or peak:
        reads.add("eval_steps")
    if dense or peak:
        reads |= {"rank_eval_steps", "rank_eval_until", "probe_split", "probe_file"}
    if peak:
        reads |= {"phase_patience", "phase_margin", "phase_metric", "energy_tau"}
    return reads


def _steers(key: str, reads: set) -> bool:
    """Whether a flag steers the training (a resume must keep it), given the flags training reads."""
    return key not in RESUME_MAY_CHANGE or key in reads


def training_flags(args: dict) -> dict:
    """The run's flags that steer its training (those a resume must keep), with their values."""
    reads = _reads(args)
    return {k: v for k, v in args.items() if k not in ("output_dir", "resume_from_checkpoint") and _steers(k, reads)}


class RunFolderError(ValueError):
    """The output folder or a saved state cannot be used as asked; the message says why and what to do."""


# ----------------------------------------------------------------------------- folder names


def _step_dirs(root: str, pattern: re.Pattern) -> list[tuple[int, str]]:
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = pattern.match(name)
        if match and os.path.isdir(os.path.join(root, name)):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return sorted(found)


def state_dirs(state_root: str) -> list[tuple[int, str]]:
    """Complete training-state folders `state_root/step_NNNNNNN`, sorted by step."""
    return _step_dirs(state_root, STATE_DIR)


def state_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def export_dirs(root: str) -> list[tuple[int, str]]:
    """Complete encoder exports `root/step-NNNNNN` (train.py --save_steps), sorted by step; half-written
    `.tmp` / `.old` folders do not match."""
    return _step_dirs(root, EXPORT_DIR)


def export_dir_name(step: int) -> str:
    return f"step-{step:06d}"


# ----------------------------------------------------------------------------- the run's identity


def new_run(output_dir: str, args: dict) -> str:
    """Write `run.json` for a run that starts now; returns its id."""
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
    a resume must keep and those it may change (RESUME_MAY_CHANGE unless training reads them, and a longer
    --max_train_steps)."""
    refused, allowed = {}, {}
    reads = _reads(current) | _reads(saved)
    for key in sorted(set(saved) | set(current)):
        # a flag newer than the saved run (its default is what that run had), or how the run was reached
        if key not in saved or key in ("output_dir", "resume_from_checkpoint"):
            continue
        old, new = saved.get(key), current.get(key)
        if old == new:
            continue
        longer = key == "max_train_steps" and old is not None and new is not None and new > old
        (allowed if not _steers(key, reads) or longer else refused)[key] = (old, new)
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
    if spec != "latest":
        return [spec]
    found = state_dirs(state_root)
    if not found:
        raise RunFolderError(f"--resume_from_checkpoint latest: no saved state under {state_root}")
    return [path for _, path in reversed(found)]


# ----------------------------------------------------------------------------- the record


class MetricsLog:
    """Append-only JSON-lines log, flushed per record so a killed run keeps everything it logged."""

    def __init__(self, path: str):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")

    def read(self) -> list[dict]:
        """The records; a last line cut short by a kill is skipped (it would fail to parse)."""
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            lines = [line for line in f if line.strip()]
        records = []
        for i, line in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i != len(lines) - 1 or line.endswith("\n"):
                    raise ValueError(f"{self.path} line {i + 1} is not JSON: {line[:80]!r}") from None
        return records

    def truncate_after(self, step: int) -> int:
        """On resume: keep the records up to `step`; later ones (from the killed run, which the resumed
        run will write again) move to `metrics.discarded.jsonl` rather than being deleted."""
        if not os.path.exists(self.path):
            return 0
        records = self.read()
        keep = [r for r in records if r.get("step", 0) <= step]
        later = [r for r in records if r.get("step", 0) > step]
        with open(self.path) as f:
            complete = f.read().endswith("\n")
        if later or not complete:
            with open(self.path.replace(".jsonl", ".discarded.jsonl"), "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in later)
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in keep)
            os.replace(tmp, self.path)
        return len(later)


class PeakCheckpoint:
    """Exports the model at the rank peak to `peak/` (train.py --save_peak_checkpoint).

    The detector learns that an evaluation was the running peak `window // 2` evaluations later, so the
    weights of the last few evaluations are kept on the CPU; the running peak's weights are exported to
    `peak.candidate/` each time the peak moves (on disk: a resumed run still has them), and that folder
    becomes `peak/` when the detector declares the peak.
    """

    def __init__(self, out_dir: str, keep: int, card=None):
        self.card = card  # RunFolder.card, which writes the export's README.md (None: no card)
        self.candidate_dir = os.path.join(out_dir, "peak.candidate")
        self.peak_dir = os.path.join(out_dir, "peak")
        self.keep = keep
        self.snapshots = {}  # step -> CPU state dict
        self._shadow = None
        self.note = None

    def remember(self, step: int, model) -> None:
        """Keep a CPU copy of `model`'s weights at this evaluation (and only the last `keep`)."""
        self.snapshots[step] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        for old in sorted(self.snapshots)[: -self.keep]:
            del self.snapshots[old]

    def on_event(self, event: dict, model, tokenizer, max_seq_length: int) -> None:
        """Act on a `PeakDetector.update` result: export a new running peak, publish a declared one."""
        step = event["moved_to"]
        if step is not None:
            if step not in self.snapshots:  # only after a resume right at the peak
                self.note = f"the weights of step {step} were not kept (the run resumed after it)"
            else:
                if self._shadow is None:
                    self._shadow = copy.deepcopy(model).cpu()
                self._shadow.load_state_dict(self.snapshots[step])
                with atomic_dir(self.candidate_dir) as tmp:
                    self._shadow.save_pretrained(tmp, tokenizer, max_seq_length)
                    with open(os.path.join(tmp, "peak_step.json"), "w") as f:
                        json.dump({"step": step}, f)
                    if self.card:
                        self.card(tmp, "peak", {"step": step}, self.peak_dir)
                self.note = None
        if event["declared"] and os.path.isdir(self.candidate_dir):
            publish_dir(self.candidate_dir, self.peak_dir)


# ----------------------------------------------------------------------------- the folder


class RunFolder:
    """Everything a run writes, for one train.py process (every process holds one; the main process writes).

    `check` and `open` refuse what cannot be done (RunFolderError, with the flag named) before anything is
    written: a new run into a folder that holds one, a resume of a folder without a run, a folder in use, a
    state of another run, changed training flags. The save methods are called by every process: they write
    on the main process and wait for the others (accelerate's own state save runs on all of them).
    """

    def __init__(self, output_dir: str, resume: str | None = None, write_card=None):
        self.dir, self.resume = output_dir, resume
        # utils.model_card.write_model_card, given by train.py: the analysis reads run folders without it
        self.write_card = write_card
        self.metrics = MetricsLog(os.path.join(output_dir, "metrics.jsonl"))
        self.best_dir = os.path.join(output_dir, "best")
        self.state_root = os.path.join(output_dir, "state")
        self.summary_path = os.path.join(output_dir, "summary.json")
        self.accelerator, self.lock, self.saved, self.run_id, self.peak = None, None, None, None, None
        self.args = None  # the run's arguments, once it has started
        self.candidates = []

    def check(self) -> None:
        if self.resume is None and os.path.exists(self.metrics.path):
            raise RunFolderError(f"--output_dir {self.dir} already holds a run (metrics.jsonl); resume it with "
                                 "--resume_from_checkpoint latest or choose another --output_dir")
        if self.resume is not None and not os.path.exists(self.metrics.path):
            raise RunFolderError(f"--output_dir {self.dir} holds no run to resume (no metrics.jsonl); a state is "
                                 "resumed only into the run that saved it")

    def open(self, accelerator) -> None:
        """Take the folder (the lock, on the main process), check it again under the lock and, for a resume,
        its saved states."""
        self.accelerator = accelerator
        self.check()
        if accelerator.is_main_process:
            os.makedirs(self.dir, exist_ok=True)
            self.lock = FolderLock(self.dir)  # held until the process ends, or main() returns (see one_run)
            _HELD.append(self.lock)
        self.check()  # again under the lock: another process may have started a run meanwhile
        if self.resume:
            self.saved = read_run(self.dir)
            self.candidates = resumable_states(self.resume, self.state_root)
            for path in self.candidates:
                check_state(path, self.dir, self.saved and self.saved["run_id"])
        if accelerator.is_main_process:
            for folder in ("best", "peak", "peak.candidate"):
                recover_dir(os.path.join(self.dir, folder))

    def check_resume(self, args: dict) -> dict:
        """The flags this resume changes {flag: (saved, now)}; RunFolderError where it changes one that steers
        the training (a resume continues the same training). {} for a new run."""
        if self.saved is None:
            return {}
        refused, changed = compare_args(self.saved["args"], args)
        if refused:
            raise RunFolderError(
                "a resume must keep the run's training arguments; these differ from the saved run's: "
                + ", ".join(f"--{k} {old} (now {new})" for k, (old, new) in refused.items())
                + ". Pass the saved values, or start a new run in another --output_dir")
        return changed

    def load_state(self, note) -> str:
        """Load the newest saved state that loads (`latest`: a cut or corrupted one falls back to the next
        older, said through `note`); returns its path. RunFolderError when none loads."""
        for i, path in enumerate(self.candidates):
            try:
                self.accelerator.load_state(path)
                return path
            except Exception as err:  # a cut or corrupted file: safetensors, pickle, torch.load errors
                problem = f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                if i + 1 == len(self.candidates):
                    raise RunFolderError(f"--resume_from_checkpoint {self.resume}: {problem}"
                                         + ("; no older saved state loads either" if i else "")) from None
                note(f"note: {problem}; resuming from the next older state")
        raise RunFolderError(f"--resume_from_checkpoint {self.resume}: nothing to load")

    def start(self, args: dict, resumed_at: int | None) -> int:
        """Record the run's start (run.json for a new run); a resume moves the records after its step aside.
        Returns how many records were moved."""
        moved = 0
        self.args = args
        if self.accelerator.is_main_process:
            if resumed_at is not None:
                moved = self.metrics.truncate_after(resumed_at)
            self.run_id = self.saved["run_id"] if self.saved else new_run(self.dir, args)
        return moved

    def keep_peak(self, keep: int) -> None:
        """Export the model at the rank peak to peak/ (--save_peak_checkpoint)."""
        self.peak = PeakCheckpoint(self.dir, keep, self.card)

    def log(self, record: dict) -> None:
        """One record in metrics.jsonl, and its numbers to the trackers of --report_to."""
        if self.accelerator.is_main_process:
            self.metrics.write(record)
        if self.accelerator.trackers:
            self.accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))}, step=record["step"])

    def _write(self, path: str, model, tokenizer, max_length: int, name: str, info: dict, kind: str) -> None:
        if self.accelerator.is_main_process:
            with atomic_dir(path) as tmp:
                model.save_pretrained(tmp, tokenizer, max_length)
                write_json_atomic(os.path.join(tmp, name), info, indent=2)
                self.card(tmp, kind, info, path)
        self.accelerator.wait_for_everyone()

    def card(self, export_dir: str, kind: str, record: dict, path: str | None = None, summary: dict | None = None):
        """The export's README.md (`write_card`); its loading code names the Hub repo best/ is pushed to, else
        the export's folder (`path`, where it is written aside first)."""
        if self.write_card is None:
            return
        args = summary["args"] if summary else self.args
        model_id = args.get("push_to_hub") if kind == "best" and args.get("push_to_hub") else path or export_dir
        self.write_card(export_dir, kind, record, args, training_flags(args), versions(), model_id, summary)

    def save_best(self, model, tokenizer, max_length: int, step: int, metrics: dict) -> None:
        """best/: loadable by transformers and sentence-transformers, with best_metrics.json and its card."""
        self._write(self.best_dir, model, tokenizer, max_length, "best_metrics.json", {"step": step, **metrics}, "best")

    def describe_best(self, summary: dict) -> None:
        """best/'s card written again with the run's end: its outcome, rank peak and phases."""
        if self.accelerator.is_main_process and os.path.isdir(self.best_dir):
            with open(os.path.join(self.best_dir, "best_metrics.json")) as f:
                self.card(self.best_dir, "best", json.load(f), summary=summary)

    def export(self, model, tokenizer, max_length: int, step: int, args: dict) -> None:
        """checkpoints/step-NNNNNN/: the encoder exported as best/ is, plus the step and args (analyze_rank.py)."""
        path = os.path.join(self.dir, "checkpoints", export_dir_name(step))
        self._write(path, model, tokenizer, max_length, "checkpoint.json", {"step": step, "args": args}, "checkpoint")

    def on_peak(self, step: int, event: dict, model, tokenizer, max_length: int) -> None:
        if self.peak is not None and self.accelerator.is_main_process:
            self.peak.remember(step, model)
            self.peak.on_event(event, model, tokenizer, max_length)

    def state_path(self, step: int) -> str:
        return os.path.join(self.state_root, state_dir_name(step))

    def save_state(self, step: int, keep: int | None = None) -> str:
        """state/step_NNNNNNN/: accelerate's full training state, marked with the run id; only the newest
        `keep` states are kept."""
        accelerator, path = self.accelerator, self.state_path(step)
        tmp = path + ".tmp"
        if accelerator.is_main_process:
            os.makedirs(self.state_root, exist_ok=True)
            recover_dir(path)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            mark_state(tmp, self.run_id, step)
            publish_dir(tmp, path)
            for _, old in state_dirs(self.state_root)[: -keep] if keep else []:
                shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return path

    def summary_exists(self) -> bool:
        return os.path.exists(self.summary_path)

    def write_summary(self, summary: dict) -> None:
        if self.accelerator.is_main_process:
            write_json_atomic(self.summary_path, summary, indent=2)


def versions() -> dict:
    """Library versions worth recording next to results."""
    import accelerate
    import torch
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "accelerate": accelerate.__version__}


_HELD = []  # the folder locks taken by the main() running in this process


def one_run(main):
    """train.py's main() as one run: a full disk ends it with one line and exit code 2 (every save is written
    aside and renamed into place, so all that was saved before is complete and the run resumes from its last
    state), and the folder's lock is released when main() ends however it ends, also where it is called
    again in the same process."""
    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            print(f"\nerror: no space left on the disk ({err.filename or 'while saving'}); training stopped. Every "
                  "earlier save is complete (saves are written aside, then renamed into place): free space and "
                  "resume with --resume_from_checkpoint latest", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            while _HELD:
                _HELD.pop().release()
    return wrapped
