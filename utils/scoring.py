"""What a checkpoint scores, one definition for train.py's in-training evaluation and analyze_rank.py's sweep:
the rank metrics, alignment and uniformity of the probe set (utils/rank.py), and the dev score (every
evaluation; recorded as `stsb_dev`) and SICK-R trial (full evaluations) as SimCSE's selection reads them
(utils/sts.py).

The sets: STS-B dev and SICK-R trial from a SentEval data/ folder by default; a user's own scored pairs
(`--dev_file`, utils/scored_pairs.py) take STS-B dev's place. The probe set is SimCSE's alignment/uniformity
probe: every sentence of the dev set (STS-B's `--probe_split`), positive pairs its high-scoring pairs; with
`--probe_file` the rank metrics and uniformity are measured on that file's sentences instead, alignment still
on the dev set's pairs. With the default sets the probe's sentences are STS-B dev's, so each evaluation encodes
them once (utils.encode.EmbeddingCache) for both the rank metrics and the dev score.
"""

import argparse
from typing import NamedTuple

import numpy as np

from utils.rank import probe_metrics
from utils.sts import check_dev_pairs, load_sts_tasks, score_sts


class EvalSets(NamedTuple):
    """dev_tasks: utils.sts tasks keyed by their record name, {"stsb_dev"[, "sickr_dev"]}; probe: (sentences,
    positive pairs as index pairs into them, how many leading sentences the rank metrics and uniformity
    read); names: what they are, for the record."""

    dev_tasks: dict
    probe: tuple
    names: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of a user's own evaluation sets (train.py and analyze_rank.py)."""
    g = parser.add_argument_group("your own evaluation sets (docs/data.md)")
    g.add_argument("--dev_file", default=None,
                   help="scored sentence pairs (CSV/TSV) that select best/ in place of STS-B dev")
    g.add_argument("--dev_columns", nargs=3, default=None, metavar=("SENT1", "SENT2", "SCORE"),
                   help="--dev_file's columns, by header name or 0-based number")
    g.add_argument("--probe_file", default=None,
                   help="sentences, one per line, that the rank metrics and uniformity are measured on")


def check_arguments(args, data_dir: str | None, data_dir_flag: str) -> str | None:
    """What the evaluation-set flags cannot serve, named by flag."""
    if args.dev_columns and not args.dev_file:
        return "argument --dev_columns: names --dev_file's columns; give --dev_file too"
    if not data_dir and not args.dev_file:
        return f"argument {data_dir_flag}: required (SentEval's data/ folder), unless --dev_file gives your own dev set"
    if args.dev_file and args.probe_split != "dev":
        return ("argument --probe_split: picks an STS-B split for the probe set; with --dev_file the probe is its "
                "sentences, or --probe_file's")
    return None


def probe_set(s1: list, s2: list, positive: list, sentences=None) -> tuple[list, list, int]:
    """(sentences, pos_pairs, rank_rows) of a scored set: every unique sentence of its pairs in first-seen order
    (s1 then s2 of each pair), or the given `sentences` first and the positive pairs' others after them;
    pos_pairs the `positive` (a, b) pairs as indices; rank_rows the count the rank metrics read."""
    index = dict.fromkeys(sentences if sentences is not None else [t for pair in zip(s1, s2) for t in pair])
    rank_rows = len(index)
    for a, b in positive:
        index.update(dict.fromkeys((a, b)))
    row = {t: i for i, t in enumerate(index)}
    return list(index), [(row[a], row[b]) for a, b in positive], rank_rows


def stsb_probe(data_dir, split: str = "dev") -> tuple[list[str], list[tuple[int, int]]]:
    """(sentences, pos_pairs) of STS-B `split`, the probe set of SimCSE's alignment/uniformity plots.

    sentences: every unique sentence of the split, in first-seen order reading the file line by line
    (s1 then s2 of each line), normalised as utils.sts reads them. pos_pairs: (i, j) indices into
    sentences of the pairs with gold score > 4, in file order (i == j where both sides are the same).
    """
    from utils.sts import read_stsb

    s1, s2, gold = read_stsb(data_dir, split)
    sentences, pairs, _ = probe_set(s1, s2, [(a, b) for a, b, g in zip(s1, s2, gold) if g > 4])
    return sentences, pairs


def load_eval_sets(data_dir, probe_split: str = "dev", flag: str = "--eval_data_dir", dev_file=None,
                   dev_columns=None, probe_file=None) -> EvalSets:
    """The evaluation sets, checked (utils.data.DataError names the file and line): the dev score's pairs
    (`dev_file`, else STS-B dev), SICK-R trial where `data_dir` is given, and the probe set (`probe_file`'s
    sentences, else the dev set's; STS-B's `probe_split` by default)."""
    from utils.data import read_sentences
    from utils.scored_pairs import high_pairs, read_scored_pairs
    from utils.sts import read_stsb

    tasks, names = {}, {}
    if dev_file:
        s1, s2, gold = read_scored_pairs(dev_file, dev_columns)
        tasks["stsb_dev"] = {"dev": (s1, s2, np.array(gold))}
        names["dev"] = f"{dev_file} ({len(gold)} pairs)"
        positive, names["pairs"] = high_pairs(s1, s2, gold), f"{dev_file}'s top-scored fifth"
    if data_dir:
        senteval = load_sts_tasks(data_dir, "dev", flag=flag)
        check_dev_pairs(senteval, data_dir)
        tasks.setdefault("stsb_dev", senteval["STSBenchmark"])
        tasks["sickr_dev"] = senteval["SICKRelatedness"]
        names.setdefault("dev", "STS-B dev (SentEval)")
        names["sickr"] = "SICK-R trial (SentEval)"
    if not dev_file:
        s1, s2, gold = read_stsb(data_dir, probe_split)
        positive, names["pairs"] = [(a, b) for a, b, g in zip(s1, s2, gold) if g > 4], f"STS-B {probe_split} above 4"
    probe_sentences = read_sentences(probe_file, "--probe_file") if probe_file else None
    probe = probe_set(s1, s2, positive, probe_sentences)
    names["probe"] = (f"{probe_file}" if probe_file else names["dev"] if dev_file else f"STS-B {probe_split} (SentEval)")
    names["probe"] += f", {probe[2]} sentences"
    return EvalSets(tasks, probe, names)


def score(embed, sets: EvalSets, full: bool = True, energy_tau: float = 0.9, device=None) -> dict:
    """{"stsb_dev", ["sickr_dev"], rank metrics, "alignment", "uniformity"} of one checkpoint.

    embed: sentences -> (N, H) embeddings (an EmbeddingCache: each sentence is encoded once); full: SICK-R
    trial too. Rank metrics are computed on `device` (on a GPU its float64 products replace the host's).
    """
    sentences, pairs, rank_rows = sets.probe
    emb = embed(sentences)
    metrics = probe_metrics(emb.to(device) if device is not None else emb, pairs, tau=energy_tau, rows=rank_rows)
    tasks = sets.dev_tasks if full else {"stsb_dev": sets.dev_tasks["stsb_dev"]}
    scored = {name: task["spearman"] for name, task in score_sts(embed, tasks)["tasks"].items()}
    return {**scored, **metrics}


def evaluate_in_training(method, model, tokenizer, sets: EvalSets, full: bool, args, accelerator) -> dict:
    """`score` of the model being trained, read with the method's dev embedding (what best/ is selected by), on
    the main process; every process gets the numbers."""
    from accelerate.utils import broadcast_object_list

    from utils.encode import EmbeddingCache, default_max_length, encode

    results = [None]
    if accelerator.is_main_process:
        module, template = method.dev_embedding(model)
        max_length = default_max_length(tokenizer, model.encoder.config)
        embed = EmbeddingCache(lambda s: encode(module, tokenizer, s, batch_size=args.eval_batch_size,
                                                max_length=max_length, device=accelerator.device, template=template))
        results = [score(embed, sets, full, args.energy_tau, accelerator.device)]
    broadcast_object_list(results)
    return results[0]
