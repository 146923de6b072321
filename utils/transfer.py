"""SentEval's transfer tasks as SimCSE reports them: the files, the features, one protocol per task.

| task | files in `<data_dir>/downstream/` | classes | protocol (utils/classifier.py) |
|---|---|---|---|
| MR   | `MR/rt-polarity.{pos,neg}`                        | 2 | `inner_kfold`: k-fold CV, L2 by an inner k-fold |
| CR   | `CR/custrev.{pos,neg}`                            | 2 | `inner_kfold` |
| SUBJ | `SUBJ/subj.{objective,subjective}` (objective = 1) | 2 | `inner_kfold` |
| MPQA | `MPQA/mpqa.{pos,neg}`                             | 2 | `inner_kfold` |
| SST2 | `SST/binary/sentiment-{train,dev,test}`           | 2 | `split`: train, L2 on dev, test |
| TREC | `TREC/{train_5500,TREC_10}.label`                 | 6 | `kfold`: L2 by k-fold on train, test |
| MRPC | `MRPC/msr_paraphrase_{train,test}.txt` (pairs)    | 2 | `kfold` on [abs(u - v), u * v]; accuracy and F1 |

Files are read as SentEval reads them: MR/CR/SUBJ/MPQA and TREC as latin-1 (the others UTF-8); the binary
tasks one sample per `str.splitlines()` line (positive file = 1, negative = 0); SST2 `sentence<TAB>label`;
TREC `COARSE:fine question` (label = COARSE, one of ABBR DESC ENTY HUM LOC NUM); MRPC after its header
(and UTF-8 BOM), columns Quality, #1 ID, #2 ID, #1 String, #2 String. Every sentence becomes
`' '.join(s.split())`: SentEval splits on white space and SimCSE's batcher joins the words with ' '.
The probing tasks (utils/probing.py) are `Task`s too, run by the same `run_task`.
"""

import io
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from utils import classifier
from utils.data import DataError, read_text

TRANSFER_TASKS = ("MR", "CR", "SUBJ", "MPQA", "SST2", "TREC", "MRPC")
BINARY_FILES = {  # task: (folder, file of label 1, file of label 0), as SentEval's binary.py
    "MR": ("MR", "rt-polarity.pos", "rt-polarity.neg"),
    "CR": ("CR", "custrev.pos", "custrev.neg"),
    "SUBJ": ("SUBJ", "subj.objective", "subj.subjective"),
    "MPQA": ("MPQA", "mpqa.pos", "mpqa.neg"),
}
TREC_LABELS = ("ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM")
DOWNLOAD_HINT = ("get SentEval's data with `python -m utils.download senteval --data_dir {data_dir}` "
                 "(or use the ../shared/data folder)")


@dataclass
class Split:
    """Labelled samples: `a` the sentences, `b` the second sentence of each pair (MRPC) or None."""
    a: list
    y: np.ndarray
    b: list | None = None

    def __len__(self):
        return len(self.y)


@dataclass
class Task:
    """A classification task on frozen sentence embeddings.

    `protocol` says which splits exist: "inner_kfold" {"all"}, "kfold" {"train", "test"}, "split"
    {"train", "dev", "test"}. `labels[i]` names class i. `dropped`: examples left out as unscorable (a
    probing task read with a `limit`, utils/probing.py).
    """
    name: str
    protocol: str
    labels: tuple
    splits: dict = field(default_factory=dict)
    dropped: int = 0

    @property
    def sentences(self) -> list:
        """Every unique sentence of the task, in first-seen order."""
        out = {}
        for split in self.splits.values():
            out.update(dict.fromkeys(split.a))
            out.update(dict.fromkeys(split.b or ()))
        return list(out)


def _words(sentence: str) -> str:
    return " ".join(sentence.split())


def _error(data_dir, what: str) -> DataError:
    return DataError(f"{what}\n{DOWNLOAD_HINT.format(data_dir=data_dir)}")


def _read(path: str, data_dir, encoding: str = "utf-8") -> str:
    if encoding == "latin-1":  # every byte is a latin-1 character: only a missing file can fail
        try:
            with open(path, "rb") as f:
                return f.read().decode("latin-1")
        except OSError as err:
            what = "no such file" if isinstance(err, FileNotFoundError) else f"cannot read it ({err.strerror})"
            raise _error(data_dir, f"{path}: {what}") from None
    try:
        return read_text(path)
    except DataError as err:
        raise _error(data_dir, str(err)) from None


def _lines(text: str):
    """(line number, line) as `for line in open(path)` yields them (universal newlines)."""
    return enumerate(io.StringIO(text, newline=None), start=1)


def read_binary(data_dir, name: str) -> Task:
    """MR, CR, SUBJ or MPQA: one sample per line of two files; all of it goes to k-fold CV."""
    folder, pos, neg = BINARY_FILES[name]
    samples = []
    for filename in (pos, neg):
        path = os.path.join(data_dir, "downstream", folder, filename)
        lines = _read(path, data_dir, "latin-1").splitlines()  # SentEval: f.read().splitlines()
        if not lines:
            raise _error(data_dir, f"{path}: the file is empty")
        samples.append([_words(s) for s in lines])
    y = np.array([1] * len(samples[0]) + [0] * len(samples[1]), dtype=np.int64)
    return Task(name, "inner_kfold", ("0", "1"), {"all": Split(samples[0] + samples[1], y)})


def _label(text: str, allowed, path: str, line: int, data_dir) -> int:
    if text not in allowed:
        raise _error(data_dir, f"{path}: line {line}: label {text!r} is not one of {', '.join(allowed)}")
    return allowed.index(text)


def read_sst2(data_dir) -> Task:
    """SST/binary/sentiment-{train,dev,test}: `sentence<TAB>label` per line, label 0 or 1."""
    splits = {}
    for split in ("train", "dev", "test"):
        path = os.path.join(data_dir, "downstream", "SST", "binary", f"sentiment-{split}")
        a, y = [], []
        for i, line in _lines(_read(path, data_dir)):
            cols = line.strip().split("\t")
            if len(cols) < 2:
                raise _error(data_dir, f"{path}: line {i}: expected `sentence<TAB>label`, found no tab")
            y.append(_label(cols[1], ("0", "1"), path, i, data_dir))
            a.append(_words(cols[0]))
        if not y:
            raise _error(data_dir, f"{path}: the file is empty")
        splits[split] = Split(a, np.array(y, dtype=np.int64))
    return Task("SST2", "split", ("0", "1"), splits)


def read_trec(data_dir) -> Task:
    """TREC/{train_5500,TREC_10}.label, latin-1: `COARSE:fine question words ...`."""
    splits = {}
    for split, filename in (("train", "train_5500.label"), ("test", "TREC_10.label")):
        path = os.path.join(data_dir, "downstream", "TREC", filename)
        a, y = [], []
        for i, line in _lines(_read(path, data_dir, "latin-1")):
            target, colon, rest = line.strip().partition(":")
            fine, space, question = rest.partition(" ")
            if not colon or not space:
                raise _error(data_dir, f"{path}: line {i}: expected `COARSE:fine question`, got {line.strip()!r}")
            y.append(_label(target, TREC_LABELS, path, i, data_dir))
            a.append(_words(question))
        if not y:
            raise _error(data_dir, f"{path}: the file is empty")
        splits[split] = Split(a, np.array(y, dtype=np.int64))
    return Task("TREC", "kfold", TREC_LABELS, splits)


def read_mrpc(data_dir) -> Task:
    """MRPC/msr_paraphrase_{train,test}.txt: a header (after a UTF-8 BOM), then Quality, #1 ID, #2 ID,
    #1 String, #2 String per line."""
    splits = {}
    for split in ("train", "test"):
        path = os.path.join(data_dir, "downstream", "MRPC", f"msr_paraphrase_{split}.txt")
        a, b, y = [], [], []
        for i, line in _lines(_read(path, data_dir).lstrip("\ufeff")):
            cols = line.strip().split("\t")
            if i == 1:
                if cols[0] != "Quality":
                    raise _error(data_dir, f"{path}: line 1: expected the header `Quality<TAB>#1 ID<TAB>...`, "
                                           f"got {line.strip()[:60]!r}")
                continue
            if len(cols) < 5:
                raise _error(data_dir, f"{path}: line {i}: expected 5 tab-separated fields, got {len(cols)}")
            y.append(_label(cols[0], ("0", "1"), path, i, data_dir))
            a.append(_words(cols[3]))
            b.append(_words(cols[4]))
        if not y:
            raise _error(data_dir, f"{path}: no sentence pairs after the header")
        splits[split] = Split(a, np.array(y, dtype=np.int64), b)
    return Task("MRPC", "kfold", ("0", "1"), splits)


def read_transfer_task(data_dir, name: str) -> Task:
    if name in BINARY_FILES:
        return read_binary(data_dir, name)
    readers = {"SST2": read_sst2, "TREC": read_trec, "MRPC": read_mrpc}
    if name not in readers:
        raise ValueError(f"unknown transfer task {name!r}; choose from {', '.join(TRANSFER_TASKS)}")
    return readers[name](data_dir)


def load_transfer_tasks(data_dir, names=TRANSFER_TASKS) -> dict:
    """{name: Task}, every file read and checked (before any model is loaded)."""
    if not os.path.isdir(os.path.join(data_dir, "downstream")):
        raise _error(data_dir, f"{os.path.join(data_dir, 'downstream')}: no such folder (--data_dir is "
                               "SentEval's data/ folder, the one holding downstream/)")
    return {name: read_transfer_task(data_dir, name) for name in names}


# ----------------------------------------------------------------------------- embeddings and features
def features(task: Task, embed) -> dict:
    """{split: (X float32 (n, F), y int64 (n,))}; ONE `embed` call for all the task's sentences.

    Single sentences: X = u. Pairs (MRPC): X = [abs(u - v), u * v], SentEval's features.
    """
    sentences = task.sentences
    emb = torch.as_tensor(embed(sentences), dtype=torch.float32)
    if emb.shape[0] != len(sentences):
        raise ValueError(f"embed() returned {emb.shape[0]} rows for {len(sentences)} sentences")
    row = {s: i for i, s in enumerate(sentences)}
    out = {}
    for name, split in task.splits.items():
        u = emb[[row[s] for s in split.a]]
        if split.b is not None:
            v = emb[[row[s] for s in split.b]]
            u = torch.cat([(u - v).abs(), u * v], dim=1)
        out[name] = (u.numpy(), split.y)
    return out


def run_task(task: Task, embed, config, seed: int = 1111, device=None, fit=None) -> dict:
    """Embed `task` once and run its protocol: SentEval's result keys plus details.

    {"acc", "devacc" (x100, rounded to 2 decimals as SentEval does), "ndev", "ntest", "n_classes", "l2"
    (the chosen penalty; one per outer fold for inner_kfold), "n_models", "embed_seconds",
    "classifier_seconds", and "f1" for MRPC}.
    """
    start = time.time()
    data = features(task, embed)
    middle = time.time()
    result = run_protocol(task, data, config, seed=seed, device=device, fit=fit)
    result.update(embed_seconds=round(middle - start, 2), classifier_seconds=round(time.time() - middle, 2))
    return result


def run_protocol(task: Task, data: dict, config, seed: int = 1111, device=None, fit=None) -> dict:
    """`task`'s protocol on its features `data` ({split: (X, y)}, see `features`); see `run_task`."""
    kw = dict(n_classes=len(task.labels), config=config, seed=seed, device=device,
              fit=fit or classifier.train_batched)
    if task.protocol == "inner_kfold":
        X, y = data["all"]
        result = classifier.inner_kfold(X, y, **kw)
        result.update(ndev=len(y), ntest=len(y))
    elif task.protocol == "kfold":
        result = classifier.kfold(*data["train"], *data["test"], **kw)
        result.update(ndev=len(data["train"][1]), ntest=len(data["test"][1]))
    elif task.protocol == "split":
        result = classifier.split(*data["train"], *data["dev"], *data["test"], **kw)
        result.update(ndev=len(data["dev"][1]), ntest=len(data["test"][1]))
    else:
        raise ValueError(f"unknown protocol {task.protocol!r}")
    predictions = result.pop("predictions", None)
    if task.name == "MRPC":
        result["f1"] = round(100 * f1_score(data["test"][1], predictions), 2)
    result["n_classes"] = len(task.labels)
    return result


def run_tasks(tasks: dict, embed, config, seed: int = 1111, device=None, key: str = "acc", fit=None,
              log=print) -> dict:
    """`run_task` on every task, one progress line each: {"tasks": {name: result}, "scores": {name:
    result[key]}, "avg": plain mean of the scores}."""
    out = {"tasks": {}, "scores": {}}
    for name, task in tasks.items():
        result = run_task(task, embed, config, seed=seed, device=device, fit=fit)
        out["tasks"][name], out["scores"][name] = result, result[key]
        l2 = result["l2"] if isinstance(result["l2"], float) else "/".join(f"{v:g}" for v in result["l2"])
        log(f"{name}: acc {result['acc']:.2f}, dev {result['devacc']:.2f}, L2 {l2} | {len(task.sentences)} "
            f"sentences embedded in {result['embed_seconds']:.1f} s, {result['n_models']} classifiers "
            f"trained in {result['classifier_seconds']:.1f} s")
    out["avg"] = float(np.mean(list(out["scores"].values())))
    return out


def f1_score(y_true, y_pred) -> float:
    """Binary F1 of class 1 (sklearn's default `f1_score`), 0 when there is no true or predicted 1."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    tp = int(np.sum((y_true == 1) & (y_pred == 1)))
    denominator = int(np.sum(y_true == 1) + np.sum(y_pred == 1))
    return 2 * tp / denominator if denominator else 0.0


def format_table(scores: dict, avg: bool = True) -> str:
    """SimCSE's printed table: task names, then scores with 2 decimals (then Avg., their plain mean)."""
    names, values = list(scores), [f"{v:.2f}" for v in scores.values()]
    if avg and scores:
        names.append("Avg.")
        values.append(f"{np.mean(list(scores.values())):.2f}")
    widths = [max(len(n), len(s)) for n, s in zip(names, values)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    row = lambda cells: "| " + " | ".join(c.center(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([rule, row(names), rule, row(values), rule])
