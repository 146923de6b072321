"""Crash-safe output folders: write aside, then rename into place.

A folder is written under `<path>.tmp`, then published: the old `<path>` (if any) is renamed to
`<path>.old`, the new one renamed to `<path>`, and `<path>.old` removed. A kill at any moment leaves
either the old or the new complete folder; `recover_dir` (run at start-up) puts `<path>.old` back if the
kill fell between the two renames and removes half-written `.tmp` folders.
"""

import contextlib
import os
import re
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


STEP_DIR = re.compile(r"^step_(\d+)$")
EXPORT_DIR = re.compile(r"^step-(\d+)$")


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
    return _step_dirs(state_root, STEP_DIR)


def state_dir_name(step: int) -> str:
    return f"step_{step:07d}"


def export_dirs(root: str) -> list[tuple[int, str]]:
    """Complete encoder exports `root/step-NNNNNN` (train.py --save_steps), sorted by step; half-written
    `.tmp` / `.old` folders do not match."""
    return _step_dirs(root, EXPORT_DIR)


def export_dir_name(step: int) -> str:
    return f"step-{step:06d}"
