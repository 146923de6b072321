"""SentEval's probing tasks (Conneau et al., 2018): what a sentence embedding encodes, read out by a
logistic regression trained on tr, its L2 picked on va, accuracy reported on te (the `split` protocol).

Each task is one file, one example per line: `split<TAB>label<TAB>sentence`, split in {tr, va, te}.
Labels are numbered in sorted order of the training labels (as SentEval does); a va/te label never seen
in tr is an error. Whichever of the ten files are present in the folder are run, in SentEval's order.

`../shared/data/probing/` holds seven of the ten tasks rebuilt from other real text (its BUILD.md says
how): fewer sentences, a different corpus and parser, so their numbers compare encoders with each other,
never with published SentEval probing numbers.

`limit` keeps the first N examples of each split (the files are shuffled within a split, so that is a
random sample): a sweep over many checkpoints then costs a fraction of the full files (encoding all of
../shared/data/probing, 104k sentences, dominates a checkpoint's cost). The accuracies get noisier (a
1,000-example test split has a standard error of ~1.5 points at 50 %), and dev/test examples whose
label the kept training examples never show are dropped (counted in `Task.dropped`).
"""

import io
import os

import numpy as np

from utils.data import DataError, read_text
from utils.transfer import Split, Task

PROBING_TASKS = {  # SentEval's task name: file
    "Length": "sentence_length.txt",
    "WordContent": "word_content.txt",
    "Depth": "tree_depth.txt",
    "TopConstituents": "top_constituents.txt",
    "BigramShift": "bigram_shift.txt",
    "Tense": "past_present.txt",
    "SubjNumber": "subj_number.txt",
    "ObjNumber": "obj_number.txt",
    "OddManOut": "odd_man_out.txt",
    "CoordinationInversion": "coordination_inversion.txt",
}
SPLITS = {"tr": "train", "va": "dev", "te": "test"}
SPLIT_TAGS = {split: tag for tag, split in SPLITS.items()}
PROBING_HINT = ("SentEval's probing files come with SentEval (`data/probing/`, fetched by its "
                "`data/downstream/get_transfer_data.bash`); rebuilt ones are in ../shared/data/probing")


def read_probing_task(path: str, name: str = None, limit: int | None = None) -> Task:
    """One probing file -> a `split` Task with splits train/dev/test (the first `limit` of each, if set)."""
    name = name or os.path.basename(path)
    try:
        text = read_text(path)
    except DataError as err:
        raise DataError(f"{err}\n{PROBING_HINT}") from None
    rows = {"train": ([], []), "dev": ([], []), "test": ([], [])}
    for i, line in enumerate(io.StringIO(text.lstrip("\ufeff"), newline=None), start=1):
        if not line.strip():
            continue
        cols = line.rstrip().split("\t")
        if len(cols) < 3 or cols[0] not in SPLITS:
            raise DataError(f"{path}: line {i}: expected `tr|va|te<TAB>label<TAB>sentence`, "
                            f"got {line.rstrip()[:60]!r}")
        sentences, labels = rows[SPLITS[cols[0]]]
        labels.append(cols[1])
        sentences.append(" ".join(cols[-1].split()))
    for split, (sentences, labels) in rows.items():
        if not labels:
            raise DataError(f"{path}: no {split} examples (lines starting with {SPLIT_TAGS[split]})")
    if limit is not None:
        rows = {split: (sentences[:limit], labels[:limit]) for split, (sentences, labels) in rows.items()}
    names = tuple(sorted(set(rows["train"][1])))
    dropped = 0
    for split, (sentences, labels) in list(rows.items()):
        unseen = sorted(set(labels) - set(names))
        if unseen and limit is None:
            raise DataError(f"{path}: {split} labels {unseen[:5]} never occur in the training (tr) examples")
        if unseen:  # a sample of the training split may miss rare labels: those examples cannot be scored
            keep = [i for i, label in enumerate(labels) if label in names]
            dropped += len(labels) - len(keep)
            rows[split] = ([sentences[i] for i in keep], [labels[i] for i in keep])
    index = {label: i for i, label in enumerate(names)}
    splits = {split: Split(sentences, np.array([index[label] for label in labels], dtype=np.int64))
              for split, (sentences, labels) in rows.items()}
    return Task(name, "split", names, splits, dropped)


def load_probing_tasks(probing_dir, limit: int | None = None) -> dict:
    """{task name: Task} for every SentEval probing file found in `probing_dir` (at least one); `limit`: at
    most that many examples of each split (see the module's docstring)."""
    if not os.path.isdir(probing_dir):
        raise DataError(f"--probing_dir {probing_dir}: no such folder\n{PROBING_HINT}")
    found = {name: os.path.join(probing_dir, file) for name, file in PROBING_TASKS.items()
             if os.path.isfile(os.path.join(probing_dir, file))}
    if not found:
        raise DataError(f"--probing_dir {probing_dir}: none of SentEval's probing files is there "
                        f"({', '.join(PROBING_TASKS.values())})\n{PROBING_HINT}")
    return {name: read_probing_task(path, name, limit) for name, path in found.items()}
