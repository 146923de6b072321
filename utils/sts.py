"""STS evaluation as SimCSE reports it: SentEval's files and SentEval's scoring, without SentEval.

For a sentence pair (s1, s2) the system score is cos(f(s1), f(s2)), f the sentence embedding. A task's
score is 100 x Spearman's rho between system and gold scores:

- STS12-STS16, SimCSE's "all" setting (SentEval's `results[task]['all']['spearman']['all']`): ONE rho
  over the concatenated scores of every subset of the year, not the mean of per-subset rhos.
- STSBenchmark and SICKRelatedness: rho on one split. SimCSE scores SICK-R like STS (cosine, no trained
  regressor), as its SentEval fork's `SICKRelatednessEval(STSEval)` does.

Modes, as in SimCSE's `evaluation.py`:
- test: STS12, STS13, STS14, STS15, STS16, STSBenchmark (test), SICKRelatedness (test); avg of the 7.
- dev:  STSBenchmark (dev), SICKRelatedness (dev = SICK_trial.txt); avg of the 2 (what training watches).

Files are read as SentEval reads them: UTF-8; STS12-16 with `read().splitlines()`, a pair whose gold line
is empty is dropped (SentEval's `not_empty_idx`); STS-B and SICK line by line with
`line.strip().split('\t')`, SICK's header skipped. Each sentence becomes `' '.join(s.split())`: SentEval
splits on white space and SimCSE's batcher joins the words with ' ' before tokenizing.
"""

import io
import os

import numpy as np
import torch
from scipy.stats import spearmanr

from utils.data import DataError, read_text

# SentEval's subsets; STS13 has no SMT (LDC licence), even where STS.gs.SMT.txt is present.
STS_YEARS = {
    "STS12": ["MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"],
    "STS13": ["FNWN", "headlines", "OnWN"],
    "STS14": ["deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"],
    "STS15": ["answers-forums", "answers-students", "belief", "headlines", "images"],
    "STS16": ["answer-answer", "headlines", "plagiarism", "postediting", "question-question"],
}
MODE_TASKS = {
    "test": [*STS_YEARS, "STSBenchmark", "SICKRelatedness"],
    "dev": ["STSBenchmark", "SICKRelatedness"],
}
SICK_FILES = {"train": "SICK_train.txt", "dev": "SICK_trial.txt", "test": "SICK_test_annotated.txt"}


def _data_error(data_dir, what: str):
    return DataError(
        f"{what}\nget SentEval's data with `python -m utils.download senteval --data_dir {data_dir}` "
        "(or use the ../shared/data folder)"
    )


def _read_text(path: str, data_dir) -> str:
    try:
        return read_text(path)
    except DataError as err:
        raise _data_error(data_dir, str(err)) from None


def _score(text: str, path: str, line: int, data_dir) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not np.isfinite(value):
        raise _data_error(data_dir, f"{path}: line {line}: score {text!r} is not a finite number")
    return value


def _words(sentence: str) -> str:
    return " ".join(sentence.split())


def read_sts_year(data_dir, task: str) -> dict:
    """{subset: (s1 list, s2 list, gold float array)} for one of STS12..STS16, unlabelled pairs dropped."""
    folder = os.path.join(data_dir, "downstream", "STS", f"{task}-en-test")
    subsets = {}
    for name in STS_YEARS[task]:
        in_path = os.path.join(folder, f"STS.input.{name}.txt")
        gs_path = os.path.join(folder, f"STS.gs.{name}.txt")
        pairs = _read_text(in_path, data_dir).splitlines()
        golds = _read_text(gs_path, data_dir).splitlines()
        if len(pairs) != len(golds):
            raise _data_error(data_dir, f"{in_path} has {len(pairs)} lines but {gs_path} has {len(golds)}")
        s1, s2, gold = [], [], []
        for i, (pair, g) in enumerate(zip(pairs, golds), start=1):
            cols = pair.split("\t")  # SentEval checks every line, labelled or not
            if len(cols) != 2:
                raise _data_error(data_dir, f"{in_path}: line {i}: expected 2 tab-separated sentences, "
                                            f"got {len(cols)} fields")
            if g == "":
                continue
            s1.append(_words(cols[0]))
            s2.append(_words(cols[1]))
            gold.append(_score(g, gs_path, i, data_dir))
        subsets[name] = (s1, s2, np.array(gold))
    return subsets


def _read_columns(path: str, data_dir, s1_col: int, s2_col: int, score_col: int, header: bool):
    """SentEval's STS-B / SICK reader: `for line in open(path): line.strip().split('\\t')`."""
    need = max(s1_col, s2_col, score_col) + 1
    s1, s2, gold = [], [], []
    # newline=None: the universal newlines of iterating over open(), not str.splitlines()
    for i, line in enumerate(io.StringIO(_read_text(path, data_dir), newline=None), start=1):
        if header and i == 1:
            continue
        cols = line.strip().split("\t")
        if len(cols) < need:
            raise _data_error(data_dir, f"{path}: line {i}: expected at least {need} tab-separated fields, "
                                        f"got {len(cols)}")
        s1.append(_words(cols[s1_col]))
        s2.append(_words(cols[s2_col]))
        gold.append(_score(cols[score_col], path, i, data_dir))
    return s1, s2, np.array(gold)


def task_file(data_dir, task: str, split: str) -> str:
    """The file of STSBenchmark's or SICKRelatedness's `split` in a SentEval data/ folder."""
    if task == "STSBenchmark":
        return os.path.join(data_dir, "downstream", "STS", "STSBenchmark", f"sts-{split}.csv")
    return os.path.join(data_dir, "downstream", "SICK", SICK_FILES[split])


def read_stsb(data_dir, split: str):
    """(s1, s2, gold) of STSBenchmark/sts-{split}.csv: genre, file, year, id, score, s1, s2."""
    return _read_columns(task_file(data_dir, "STSBenchmark", split), data_dir, 5, 6, 4, header=False)


def read_sick(data_dir, split: str):
    """(s1, s2, gold) of SICK: pair_ID, sentence_A, sentence_B, relatedness_score, ...; 'dev' = trial."""
    return _read_columns(task_file(data_dir, "SICKRelatedness", split), data_dir, 1, 2, 3, header=True)


MIN_PAIRS = 10  # a Spearman over fewer pairs says next to nothing, and over none it is NaN


def check_dev_pairs(tasks: dict, data_dir, min_pairs: int = MIN_PAIRS) -> None:
    """Raise DataError where STS-B dev or SICK-R trial (load_sts_tasks(data_dir, "dev")) holds fewer than
    `min_pairs` scored pairs: training would select its checkpoints on noise, or on NaN."""
    for task, subsets in tasks.items():
        for split, (_, _, gold) in subsets.items():
            if len(gold) < min_pairs:
                raise DataError(f"{task_file(data_dir, task, split)}: {len(gold)} scored pairs; the in-training "
                                f"evaluation needs at least {min_pairs}")


def load_sts_tasks(data_dir, mode: str = "test", flag: str = "--data_dir") -> dict:
    """{task: {subset: (s1, s2, gold)}} for the tasks of `mode`; STS-B / SICK-R have one subset, the split.
    `flag`: the caller's name for `data_dir`, in the message when it lacks downstream/."""
    if mode not in MODE_TASKS:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODE_TASKS)}")
    if not os.path.isdir(os.path.join(data_dir, "downstream")):
        raise _data_error(data_dir, f"{os.path.join(data_dir, 'downstream')}: no such folder ({flag} is "
                                    "SentEval's data/ folder, the one holding downstream/)")
    tasks = {}
    for task in MODE_TASKS[mode]:
        if task in STS_YEARS:
            tasks[task] = read_sts_year(data_dir, task)
        elif task == "STSBenchmark":
            tasks[task] = {mode: read_stsb(data_dir, mode)}
        else:
            tasks[task] = {mode: read_sick(data_dir, mode)}
    return tasks


def spearman_all(sys_scores, gold_scores) -> float:
    """100 x Spearman rho of the concatenated system and gold score arrays (SentEval's 'all')."""
    return 100.0 * float(spearmanr(np.concatenate(sys_scores), np.concatenate(gold_scores)).statistic)


def score_sts(embed, tasks: dict) -> dict:
    """Embed every unique sentence of `tasks` in ONE `embed(list[str]) -> (N, H)` call, then score.

    Returns {"tasks": {task: {"spearman", "n", "subsets": {subset: {"spearman", "n"}}}}, "avg",
    "n_pairs", "n_sentences"}; scores are x100 and unrounded. "avg" is the plain mean over tasks.
    SimCSE averages the numbers it printed with 2 decimals instead, so its Avg. can differ from
    round(avg, 2) by 0.01.
    """
    sentences = list(dict.fromkeys(s for subsets in tasks.values() for a, b, _ in subsets.values() for s in a + b))
    emb = torch.as_tensor(embed(sentences))
    if emb.shape[0] != len(sentences):
        raise ValueError(f"embed() returned {emb.shape[0]} rows for {len(sentences)} sentences")
    # float64 cosine; nan_to_num as SentEval's similarity does (a NaN embedding scores 0, not NaN)
    emb = torch.nan_to_num(emb.double())
    row = {s: i for i, s in enumerate(sentences)}

    result = {"tasks": {}}
    for task, subsets in tasks.items():
        sys_all, gold_all, details = [], [], {}
        for name, (s1, s2, gold) in subsets.items():
            a = emb[[row[s] for s in s1]]
            b = emb[[row[s] for s in s2]]
            sims = torch.nn.functional.cosine_similarity(a, b, dim=1).numpy()
            details[name] = {"spearman": spearman_all([sims], [gold]), "n": len(gold)}
            sys_all.append(sims)
            gold_all.append(gold)
        result["tasks"][task] = {"spearman": spearman_all(sys_all, gold_all),
                                 "n": sum(d["n"] for d in details.values()), "subsets": details}
    # From unrounded scores; SimCSE's Avg. is the mean of its 2-decimal strings (may differ by 0.01).
    result["avg"] = float(np.mean([t["spearman"] for t in result["tasks"].values()]))
    result["n_pairs"] = sum(t["n"] for t in result["tasks"].values())
    result["n_sentences"] = len(sentences)
    return result


def evaluate_sts(embed, data_dir, mode: str = "test") -> dict:
    """Load the tasks of `mode` from a SentEval `data/` folder (read on every call) and score `embed` on
    them (see score_sts)."""
    return score_sts(embed, load_sts_tasks(data_dir, mode))


def format_table(result: dict) -> str:
    """SimCSE's printed table: task names, then scores with 2 decimals, then Avg."""
    names = [*result["tasks"], "Avg."]
    scores = [f"{t['spearman']:.2f}" for t in result["tasks"].values()] + [f"{result['avg']:.2f}"]
    widths = [max(len(n), len(s)) for n, s in zip(names, scores)]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"
    row = lambda cells: "| " + " | ".join(c.center(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([rule, row(names), rule, row(scores), rule])
