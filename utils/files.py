"""Crash-safe writes: a file or folder is written aside, then renamed into place.

A folder is written under `<path>.tmp`, then published: the old `<path>` (if any) is renamed to
`<path>.old`, the new one renamed to `<path>`, and `<path>.old` removed. A kill at any moment leaves
either the old or the new complete folder; `recover_dir` (run at start-up) puts `<path>.old` back if the
kill fell between the two renames and removes half-written `.tmp` folders. JSON is written strict (NaN and
inf become null) through a temporary file and a rename.
"""

import contextlib
import json
import math
import os
import shutil


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_dir(tmp: str, path: str) -> None:
    """Atomically replace `path` by the complete folder `tmp`."""
    old = path + ".old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(path):
        os.rename(path, old)
    os.rename(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(path: str) -> None:
    """Undo what a kill during `publish_dir` or `atomic_dir` left behind."""
    old, tmp = path + ".old", path + ".tmp"
    if not os.path.exists(path) and os.path.isdir(old):
        os.rename(old, path)
    for stale in (old, tmp):
        if os.path.exists(stale):
            shutil.rmtree(stale)


@contextlib.contextmanager
def atomic_dir(path: str):
    """`with atomic_dir(p) as tmp:` write into tmp; on success tmp replaces p, on error p is untouched."""
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    publish_dir(tmp, path)


def json_safe(obj):
    """NaN / inf -> None, recursively: strict JSON (jq, JavaScript) rejects them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_text_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str, obj, **dump_kwargs) -> None:
    """Write strict JSON to `path` through a temporary file and a rename: never a half-written file."""
    write_text_atomic(path, json.dumps(json_safe(obj), allow_nan=False, **dump_kwargs))
