import os

import pytest

from utils.files import atomic_dir, publish_dir, recover_dir
from utils.run_folder import state_dir_name, state_dirs


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = str(tmp_path / "best")
    with atomic_dir(target) as tmp:
        open(os.path.join(tmp, "w"), "w").write("v1")
    assert open(os.path.join(target, "w")).read() == "v1"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            open(os.path.join(tmp, "w"), "w").write("half")
            raise RuntimeError("killed mid-save")
    assert open(os.path.join(target, "w")).read() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_recover_after_kill_between_the_two_renames(tmp_path):
    target = str(tmp_path / "best")
    os.makedirs(target + ".old")
    open(os.path.join(target + ".old", "w"), "w").write("v1")
    os.makedirs(target + ".tmp")  # a half-written new version
    recover_dir(target)
    assert open(os.path.join(target, "w")).read() == "v1"
    assert sorted(os.listdir(tmp_path)) == ["best"]


def test_publish_dir_and_state_listing(tmp_path):
    root = tmp_path / "state"
    for step in (20, 3):
        tmp = root / (state_dir_name(step) + ".tmp")
        tmp.mkdir(parents=True)
        publish_dir(str(tmp), str(root / state_dir_name(step)))
    (root / "step_0000099.tmp").mkdir()  # unfinished: not listed
    assert [s for s, _ in state_dirs(str(root))] == [3, 20]
