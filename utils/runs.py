"""train.py output folders as analyze_rank.py reads them: a run's arguments, status, compute and training log,
its best checkpoint, and the checkpoints a sweep measures. Plain dicts; no model is loaded.
"""

import hashlib
import json
import os

from utils.run_folder import MetricsLog, export_dirs

# An early stop (train.py --early_stopping_patience) ends a run as planned: it is a finished run.
FINISHED = ("finished", "early_stopped")
COMPUTE_KEYS = ("steps", "train_seconds", "best_step", "best_train_seconds")
WEIGHT_FILES = (".safetensors", ".bin", ".pt")


def _read_json(path, notes: list):
    """The JSON object in `path`; None if there is no such file, or (with a note) if it is not one, e.g.
    cut short by a kill or a full disk: the run is then read as if the file were missing."""
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            obj = json.load(f)
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
        notes.append(f"{path} is not valid JSON ({err}): read as missing")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path} holds a JSON {type(obj).__name__}, not an object: read as missing")
        return None
    return obj


def eval_pooler_of(args: dict) -> str:
    """The pooler train.py evaluates with (utils.model.SimCSEModel.eval_pooler), from the run's args."""
    if args.get("pooler_type", "cls") == "cls" and args.get("mlp_only_train", True):
        return "cls_before_pooler"
    return args.get("pooler_type", "cls")


def method_of(run: dict) -> str:
    """The run's method as its summary labels it ("ESimCSE"), else as its args name it ("esimcse"); "simcse"
    for runs from before train.py had --method."""
    return run.get("method_label") or (run.get("args") or {}).get("method") or "simcse"


def compute_of(summary: dict | None, records: list, best_step) -> dict:
    """{"steps", "train_seconds", "best_step", "best_train_seconds", "source"}: summary.json's "compute"; for a
    run without it (older, or unfinished), its summary's steps and train_seconds, else the training log's last
    step and elapsed_s, and the elapsed_s of the evaluation at the best step."""
    recorded = (summary or {}).get("compute")
    if isinstance(recorded, dict):
        return {**{k: recorded.get(k) for k in COMPUTE_KEYS}, "source": "summary.json"}
    elapsed = {r["step"]: r["elapsed_s"] for r in records
               if isinstance(r.get("elapsed_s"), (int, float)) and "step" in r}
    steps = (summary or {}).get("steps")
    if steps is None:
        steps = max((r["step"] for r in records if "step" in r), default=None)
    seconds = (summary or {}).get("train_seconds")
    if seconds is None and elapsed:
        seconds = max(elapsed.values())
    return {"steps": steps, "train_seconds": seconds, "best_step": best_step,
            "best_train_seconds": elapsed.get(best_step), "source": "summary.json and the training log" if summary
            else "the training log"}


def load_run(run_dir: str) -> dict:
    """What analyze_rank.py needs to know about one train.py output folder.

    Returns {"name", "dir", "status" (summary.json's: "finished", "early_stopped" or "stopped: ..."; "unfinished"
    without it), "args" (summary.json's, else a checkpoint's checkpoint.json; None if neither), "seed",
    "method_label" (summary.json's, or None), "eval_pooler", "best_step" (best/best_metrics.json), "compute"
    (`compute_of`), "sts_test" (the avg of run.sh's sts_test.json of best/, or None), "log" (the eval and rank
    records of metrics.jsonl), "checkpoints" (see `list_checkpoints`), "notes"}.
    A JSON file that cannot be read is taken as missing, and metrics.jsonl with a bad line other than a
    cut last one as empty, each with a note. Raises FileNotFoundError where `run_dir` is no train.py
    output folder.
    """
    if not os.path.isfile(os.path.join(run_dir, "metrics.jsonl")):
        raise FileNotFoundError(f"{run_dir}: not a train.py output folder (no metrics.jsonl)")
    notes = []
    summary = _read_json(os.path.join(run_dir, "summary.json"), notes)
    exports = export_dirs(os.path.join(run_dir, "checkpoints"))
    args = summary["args"] if summary else None
    if args is None and exports:
        args = (_read_json(os.path.join(exports[0][1], "checkpoint.json"), notes) or {}).get("args")
    best = _read_json(os.path.join(run_dir, "best", "best_metrics.json"), notes)
    sts_test = _read_json(os.path.join(run_dir, "sts_test.json"), notes)
    try:  # MetricsLog.read skips a last line cut by a kill (train.py resumes after it) but no other bad line
        records = MetricsLog(os.path.join(run_dir, "metrics.jsonl")).read()
    except ValueError as err:
        notes.append(f"{err}: the training log is left out (no phases for this run)")
        records = []
    best_step = best["step"] if best else None
    run = {
        "name": os.path.basename(os.path.normpath(run_dir)),
        "dir": run_dir,
        "status": summary["status"] if summary else "unfinished",
        "args": args,
        "seed": args.get("seed") if args else None,
        "method_label": (summary or {}).get("method_label"),
        "eval_pooler": summary["eval_pooler"] if summary else eval_pooler_of(args) if args else None,
        "best_step": best_step,
        "compute": compute_of(summary, records, best_step),
        "sts_test": sts_test.get("avg") if sts_test else None,
        "log": [r for r in records if r.get("event") in ("eval", "rank")],
        "notes": notes,
    }
    run["checkpoints"] = list_checkpoints(run, exports)
    return run


def load_runs(run_dirs) -> list[dict]:
    """`load_run` of each folder; two runs with the same folder name (from two studies) are told apart by path.
    Raises FileNotFoundError (not a run folder) or ValueError (the same folder given twice)."""
    runs = [load_run(run_dir) for run_dir in run_dirs]
    names = [r["name"] for r in runs]
    for run in runs:
        if names.count(run["name"]) > 1:
            run["name"] = os.path.normpath(run["dir"])
    if len({r["name"] for r in runs}) < len(runs):
        raise ValueError("the same run folder is given twice")
    return runs


EVAL_SET_FLAGS = ("dev_file", "dev_columns", "probe_file")


def recorded_eval_sets(runs: list) -> dict:
    """{flag: value} of the evaluation-set flags the runs trained with (train.py's --dev_file, --dev_columns,
    --probe_file), so that their checkpoints are measured on the sets that selected them. ValueError where
    runs differ: their scores would not compare."""
    recorded = {}
    for run in runs:
        used = tuple((run["args"] or {}).get(flag) for flag in EVAL_SET_FLAGS)
        recorded.setdefault(used, []).append(run["name"])
    if len(recorded) > 1:
        sets = "; ".join(f"{', '.join(names)}: {dict(zip(EVAL_SET_FLAGS, used))}" for used, names in recorded.items())
        raise ValueError(f"the runs were evaluated on different sets ({sets}); analyse each set's runs apart, or "
                         "give --dev_file / --probe_file to measure them all on one")
    return dict(zip(EVAL_SET_FLAGS, next(iter(recorded)))) if recorded else {}


def list_checkpoints(run: dict, exports=None) -> list[dict]:
    """[{"step", "path", "pooler", "source"}] sorted by step, one per step: checkpoints/step-NNNNNN/
    (train.py --save_steps), best/ and peak/ where their step has no export (same weights otherwise), and
    step 0 from the starting model (args.model_name_or_path with the eval pooler) where no export has it.
    `pooler` None means: the checkpoint's own config. Adds to run["notes"]."""
    run_dir = run["dir"]
    if exports is None:
        exports = export_dirs(os.path.join(run_dir, "checkpoints"))
    found = {step: {"step": step, "path": path, "pooler": None, "source": os.path.relpath(path, run_dir)}
             for step, path in exports}
    for folder, marker in (("best", "best_metrics.json"), ("peak", "peak_step.json")):
        info = _read_json(os.path.join(run_dir, folder, marker), run["notes"])
        if info is not None and info["step"] not in found:
            found[info["step"]] = {"step": info["step"], "path": os.path.join(run_dir, folder), "pooler": None,
                                   "source": folder}
    args = run["args"]
    if 0 not in found:
        if not args:
            run["notes"].append("no step-0 checkpoint and no run arguments: the starting model is not swept")
        elif args.get("pooler_type") == "cls" and not args.get("mlp_only_train", True):
            run["notes"].append("no step-0 checkpoint: the starting model evaluates through a freshly "
                                "initialised MLP that only a --save_steps export keeps, so step 0 is not swept")
        else:
            found[0] = {"step": 0, "path": args["model_name_or_path"], "pooler": run["eval_pooler"],
                        "source": "starting model"}
    if not exports:
        run["notes"].append("no checkpoints/ exports (train.py --save_steps): only the starting, best and "
                            "peak checkpoints are swept")
    return [found[step] for step in sorted(found)]


def weights_fingerprint(path: str) -> str:
    """A digest of a checkpoint's weights: sha256 over its weight files (names and bytes), so checkpoints
    that hold the same weights (every run's step-0 export of one starting model, a best/ copied from an
    export) are measured once. A hub name, or a folder without weight files, is its own fingerprint."""
    if not os.path.isdir(path):
        return f"name:{path}"
    files = sorted(f for f in os.listdir(path) if f.endswith(WEIGHT_FILES))
    if not files:
        return f"folder:{os.path.abspath(path)}"
    digest = hashlib.sha256()
    for name in files:
        digest.update(name.encode() + b"\0")
        with open(os.path.join(path, name), "rb") as f:
            while chunk := f.read(1 << 22):
                digest.update(chunk)
    return digest.hexdigest()
