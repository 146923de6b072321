"""analyze_rank.py's checkpoint sweep: every checkpoint of a run scored as training scored it.

Each checkpoint is read with two embeddings (utils/embedding.py), which differ only where a method evaluates
two ways (PromptBERT): the dev embedding, which training logged and selected best/ by, gives what
`utils.scoring.score` computes (rank metrics, alignment, uniformity, STS-B dev, SICK-R trial), so a checkpoint
scores what the training log says; the test embedding, which evaluate.py reports by default, gives the STS
test sets and the probing tasks. Checkpoints holding the same weights, read the same way, are measured once,
and with a `store` (utils/measurements.py) once across analyses into the same folder.
"""

import functools
import json
import os

from utils.embedding import Embedding, checkpoint_embedder, read_embedding
from utils.encode import EmbeddingCache, default_max_length, encode
from utils.measurements import digest
from utils.model import ModelLoadError, load_pretrained
from utils.runs import weights_fingerprint
from utils.scoring import score
from utils.sts import score_sts

EMBEDDING_USE = {"dev": "rank metrics, alignment, uniformity, STS-B dev, SICK-R dev: what training logged",
                 "test": "STS test, probing: what evaluate.py reports"}


def _recorded(config, key):
    return config.get(key) if isinstance(config, dict) else getattr(config, key, None)


def checkpoint_embeddings(config, args: dict | None) -> dict:
    """{"dev": Embedding, "test": Embedding} a checkpoint is read with, from its config (a transformers config or
    config.json's dict; utils.embedding.read_embedding) and its run's args. ValueError names a malformed record."""
    read = {which: read_embedding(config, which)[0] for which in ("dev", "test")}
    spec = _recorded(config, "sentence_embedding")
    if (args or {}).get("method") == "promptbert" and not (isinstance(spec, dict) and "dev" in spec):
        # Legacy rule: PromptBERT exports written before config.sentence_embedding had its "dev" entry record the
        # test embedding only; training logged and selected best/ by template 1's [MASK] state without the '.'
        # rule, template-denoised unless --no-prompt_denoise.
        read["dev"] = Embedding("mask", args["prompt_template1"], False, bool(args.get("prompt_denoise", True)))
    return read


def run_embedding_config(run: dict) -> dict:
    """The config the run's starting model is read with: the first export's config.json that records a
    sentence_embedding (so every step of a run is the same embedding), else the run's evaluation pooler."""
    for checkpoint in run["checkpoints"]:
        if checkpoint["pooler"] is not None:  # the starting model, not an export
            continue
        try:
            with open(os.path.join(checkpoint["path"], "config.json")) as f:
                config = json.load(f)
        except (OSError, ValueError):  # left to that checkpoint's own load, which notes it
            continue
        if isinstance(config, dict) and config.get("sentence_embedding"):
            return config
    return {"sentence_pooler": run["eval_pooler"]}


class Sweep:
    """Measures checkpoints. sets: utils.scoring.EvalSets; test_tasks: the STS test sets (or None);
    probing_tasks: utils.probing tasks (or None); store: a utils.measurements.MeasurementStore (or None).
    `reused` lists the measurements taken from an earlier checkpoint with the same weights, `stored` those
    read from the store."""

    def __init__(self, sets, test_tasks, probing_tasks, energy_tau: float, batch_size: int, device, store=None):
        self.sets, self.test_tasks, self.probing_tasks = sets, test_tasks, probing_tasks
        self.energy_tau, self.batch_size, self.device = energy_tau, batch_size, device
        self.measured, self.reused, self.stored, self.store = {}, [], [], store
        # what each part's values depend on besides the checkpoint: its evaluation data and settings
        self.data_digest = {"scores": digest([sets, test_tasks, energy_tau]),
                            "probing": digest(probing_tasks) if store and probing_tasks else None} if store else {}

    def run(self, runs: list, probe_steps: dict) -> dict:
        """{run name: checkpoint rows}, every checkpoint of every run in one progress bar. probe_steps: {run name:
        the steps probed}. A checkpoint that cannot be loaded is dropped from run["checkpoints"], with a note;
        run["embeddings"] gets the embeddings each number is of."""
        import transformers
        from tqdm.auto import tqdm

        transformers.utils.logging.disable_progress_bar()  # one progress bar: ours, over checkpoints
        rows_by_run = {}
        with tqdm(total=sum(len(r["checkpoints"]) for r in runs), desc="checkpoints", unit="ckpt") as progress:
            for run in runs:
                rows, config = [], run_embedding_config(run)
                run["embeddings"] = {"dev": [], "test": []}
                for checkpoint in list(run["checkpoints"]):
                    progress.set_postfix_str(f"{run['name']} step {checkpoint['step']}")
                    try:
                        measured = self.measure(checkpoint, run, config, checkpoint["step"] in probe_steps[run["name"]])
                    except ModelLoadError as err:  # e.g. a deleted or corrupted export, a hub name offline
                        run["notes"].append(f"step {checkpoint['step']} ({checkpoint['source']}) skipped: {err.reason}")
                        run["checkpoints"].remove(checkpoint)
                        continue
                    finally:
                        progress.update(1)
                    rows.append({"run": run["name"], "seed": run["seed"], "step": checkpoint["step"],
                                 "source": checkpoint["source"], "checkpoint": checkpoint["path"], **measured})
                rows_by_run[run["name"]] = rows
        return rows_by_run

    def measure(self, checkpoint: dict, run: dict, start_config: dict, probing: bool) -> dict:
        """The scores of one checkpoint (and its probing accuracies where `probing`). start_config: what the
        starting model is read with (`run_embedding_config`)."""
        encoder, tokenizer = load_pretrained(checkpoint["path"], flag="--runs")
        try:
            read = checkpoint_embeddings(start_config if checkpoint["pooler"] else encoder.config, run["args"])
        except ValueError as err:
            raise ModelLoadError(f"{checkpoint['path']}/{err}") from None
        for which, embedding in read.items():
            described = ", ".join(filter(None, [f"pooler {embedding.pooler}", embedding.describe()]))
            if described not in run["embeddings"][which]:
                run["embeddings"][which].append(described)
        weights, row, embed = weights_fingerprint(checkpoint["path"]), {}, {}
        for part in ("scores", "probing") if probing and self.probing_tasks else ("scores",):
            key = (weights, read["dev"], read["test"], part)
            stored_key = self.store and digest([*key, default_max_length(tokenizer, encoder.config),
                                                self.data_digest[part]])
            if key in self.measured:
                self.reused.append(checkpoint["path"])
            elif self.store and self.store.get(stored_key) is not None:
                self.measured[key] = self.store.get(stored_key)
                self.stored.append(checkpoint["path"])
            else:
                if not embed:
                    embed = self._embedders(encoder, tokenizer, read, checkpoint["path"])
                self.measured[key] = self._scores(embed) if part == "scores" else self._probing(embed["test"])
                if self.store:
                    self.store.put(stored_key, self.measured[key], checkpoint["path"])
            row.update(self.measured[key])
        return row

    def _embedders(self, encoder, tokenizer, read: dict, path: str) -> dict:
        """{"dev", "test"}: an EmbeddingCache per embedding (one, shared, where they are the same)."""
        max_length = default_max_length(tokenizer, encoder.config)
        embed = {}
        for which, embedding in read.items():
            if which == "test" and embedding == read["dev"]:
                embed["test"] = embed["dev"]
                continue
            try:  # the mask pooler on a tokenizer without a mask token, a template longer than the positions
                module = checkpoint_embedder(encoder.to(self.device), tokenizer, embedding).to(self.device)
            except ValueError as err:
                raise ModelLoadError(f"{path}: {err}") from None
            embed[which] = EmbeddingCache(functools.partial(
                encode, module, tokenizer, batch_size=self.batch_size, max_length=max_length, device=self.device,
                template=embedding.template, period=embedding.period))
        return embed

    def _scores(self, embed: dict) -> dict:
        """utils.scoring.score of the dev embedding (train.py's order: the numbers it logged), then the STS test
        sets of the test embedding."""
        row = score(embed["dev"], self.sets, full=True, energy_tau=self.energy_tau, device=self.device)
        if self.test_tasks:
            test = score_sts(embed["test"], self.test_tasks)
            row["sts_test_avg"] = test["avg"]
            row.update({f"sts_test_{task}": t["spearman"] for task, t in test["tasks"].items()})
        return row

    def _probing(self, embed) -> dict:
        from utils.classifier import CONFIGS
        from utils.transfer import run_tasks

        result = run_tasks(self.probing_tasks, embed, CONFIGS["fasttest"], device=self.device, log=lambda *a: None)
        return {**{f"probing_{task}": acc for task, acc in result["scores"].items()}, "probing_avg": result["avg"]}
