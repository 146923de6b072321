"""What a checkpoint scores, one definition for train.py's in-training evaluation and analyze_rank.py's sweep:
the rank metrics, alignment and uniformity of the probe set (utils/rank.py), and STS-B dev (every
evaluation) and SICK-R trial (full evaluations) as SimCSE's selection reads them (utils/sts.py).

The probe set is SimCSE's alignment/uniformity probe: every sentence of an STS-B split, positive pairs the
pairs with a gold score above 4. With the dev split (the default) its sentences are STS-B dev's, so each
evaluation encodes them once (utils.encode.EmbeddingCache) for both the rank metrics and STS-B dev.
"""

from typing import NamedTuple

from utils.rank import probe_metrics
from utils.sts import check_dev_pairs, load_sts_tasks, score_sts


class EvalSets(NamedTuple):
    """dev_tasks: utils.sts tasks {"STSBenchmark", "SICKRelatedness"} (dev splits); probe: (sentences, positive
    pairs as index pairs into them); names: what they are, for the record."""

    dev_tasks: dict
    probe: tuple
    names: dict


def stsb_probe(data_dir, split: str = "dev") -> tuple[list[str], list[tuple[int, int]]]:
    """(sentences, pos_pairs) of STS-B `split`, the probe set of SimCSE's alignment/uniformity plots.

    sentences: every unique sentence of the split, in first-seen order reading the file line by line
    (s1 then s2 of each line), normalised as utils.sts reads them. pos_pairs: (i, j) indices into
    sentences of the pairs with gold score > 4, in file order (i == j where both sides are the same).
    """
    from utils.sts import read_stsb

    s1, s2, gold = read_stsb(data_dir, split)
    index = {}
    for a, b in zip(s1, s2):
        index.setdefault(a, len(index))
        index.setdefault(b, len(index))
    pos_pairs = [(index[a], index[b]) for a, b, g in zip(s1, s2, gold) if g > 4]
    return list(index), pos_pairs


def load_eval_sets(data_dir, probe_split: str = "dev", flag: str = "--eval_data_dir") -> EvalSets:
    """STS-B dev and SICK-R trial from a SentEval data/ folder, checked (utils.data.DataError names the file),
    and the STS-B `probe_split` probe set."""
    dev_tasks = load_sts_tasks(data_dir, "dev", flag=flag)
    check_dev_pairs(dev_tasks, data_dir)
    names = {"dev": "STS-B dev, SICK-R trial (SentEval)", "probe": f"STS-B {probe_split} (SentEval)"}
    return EvalSets(dev_tasks, stsb_probe(data_dir, probe_split), names)


def score(embed, sets: EvalSets, full: bool = True, energy_tau: float = 0.9, device=None) -> dict:
    """{"stsb_dev", ["sickr_dev"], rank metrics, "alignment", "uniformity"} of one checkpoint.

    embed: sentences -> (N, H) embeddings (an EmbeddingCache: each sentence is encoded once); full: SICK-R
    trial too. Rank metrics are computed on `device` (on a GPU its float64 products replace the host's).
    """
    sentences, pairs = sets.probe
    emb = embed(sentences)
    metrics = probe_metrics(emb.to(device) if device is not None else emb, pairs, tau=energy_tau)
    tasks = sets.dev_tasks if full else {"STSBenchmark": sets.dev_tasks["STSBenchmark"]}
    scores = score_sts(embed, tasks)["tasks"]
    scored = {"stsb_dev": scores["STSBenchmark"]["spearman"]}
    if full:
        scored["sickr_dev"] = scores["SICKRelatedness"]["spearman"]
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
