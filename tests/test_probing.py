"""utils/probing.py: SentEval's `split<TAB>label<TAB>sentence` probing files."""

import numpy as np
import pytest

from utils.data import DataError
from utils.probing import PROBING_TASKS, load_probing_tasks, read_probing_task


def write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_splits_and_sorted_label_ids(tmp_path):
    path = write(tmp_path / "tree_depth.txt", ["tr\t10\tA  deep one .", "tr\t5\tFlat .", "tr\t7\tMid one .",
                                                "va\t5\tFlat too .", "te\t10\tDeep again ."])
    task = read_probing_task(path, "Depth")
    assert task.protocol == "split" and task.labels == ("10", "5", "7")  # SentEval: sorted(np.unique(train y))
    assert task.splits["train"].a == ["A deep one .", "Flat .", "Mid one ."]
    assert task.splits["train"].y.tolist() == [0, 1, 2] and task.splits["test"].y.tolist() == [0]
    assert [len(s) for s in task.splits.values()] == [3, 1, 1]


def test_label_unseen_in_training_is_an_error(tmp_path):
    path = write(tmp_path / "past_present.txt", ["tr\tPAST\tI went .", "va\tPRES\tI go .", "te\tPAST\tHe ran ."])
    with pytest.raises(DataError, match=r"past_present.txt: dev labels \['PRES'\] never occur"):
        read_probing_task(path)


def test_limit_keeps_the_first_examples_of_each_split_and_drops_unscorable_labels(tmp_path):
    lines = [f"tr\t{label}\ttrain {i} ." for i, label in enumerate("AABBC")]
    lines += [f"va\t{label}\tdev {i} ." for i, label in enumerate("ACAB")] + ["te\tC\ttest 0 .", "te\tB\ttest 1 ."]
    path = write(tmp_path / "tree_depth.txt", lines)
    with pytest.raises(DataError, match=r"tree_depth.txt: dev labels \['C'\] never occur"):
        read_probing_task(write(tmp_path / "cut" / "tree_depth.txt", lines[:4] + lines[5:]))
    task = read_probing_task(path, limit=3)  # train A A B: C is unseen, its dev/test rows cannot be scored
    assert task.labels == ("A", "B")
    assert task.splits["train"].a == ["train 0 .", "train 1 .", "train 2 ."]
    assert task.splits["dev"].a == ["dev 0 .", "dev 2 ."] and task.splits["dev"].y.tolist() == [0, 0]
    assert task.splits["test"].a == ["test 1 ."] and task.dropped == 2
    whole = read_probing_task(path, limit=100)
    assert [len(s) for s in whole.splits.values()] == [5, 4, 2] and whole.dropped == 0


def test_malformed_line_names_file_and_line(tmp_path):
    path = write(tmp_path / "subj_number.txt", ["tr\tNN\tThe dog runs .", "train\tNNS\tDogs run ."])
    with pytest.raises(DataError, match=r"subj_number.txt: line 2: expected `tr\|va\|te<TAB>label<TAB>sentence`"):
        read_probing_task(path)


def test_folder_runs_the_files_present(tmp_path):
    rows = ["tr\tO\ta b .", "tr\tI\tb a .", "va\tO\tc d .", "te\tI\td c ."]
    write(tmp_path / "bigram_shift.txt", rows)
    write(tmp_path / "sentence_length.txt", [r.replace("\tO\t", "\t0\t").replace("\tI\t", "\t1\t") for r in rows])
    tasks = load_probing_tasks(tmp_path)
    assert list(tasks) == ["Length", "BigramShift"]  # SentEval's order, whatever the file order
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="none of SentEval's probing files"):
        load_probing_tasks(tmp_path / "empty")
    with pytest.raises(DataError, match="--probing_dir .*: no such folder"):
        load_probing_tasks(tmp_path / "missing")


def test_shared_probing_files(shared_data):
    tasks = load_probing_tasks(shared_data / "probing")
    assert set(tasks) == {"Length", "WordContent", "Depth", "BigramShift", "Tense", "SubjNumber", "ObjNumber"}
    sizes = {name: [len(s) for s in t.splits.values()] for name, t in tasks.items()}
    assert sizes["Length"] == [13752, 1722, 1722] and sizes["Tense"] == [2924, 342, 352]
    assert len(tasks["WordContent"].labels) == 1000 and len(tasks["Depth"].labels) == 8
    assert np.bincount(tasks["Length"].splits["test"].y).tolist() == [287] * 6
    assert set(PROBING_TASKS.values()) >= {"past_present.txt", "odd_man_out.txt"}
