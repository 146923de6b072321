"""MTEB tasks scored with a checkpoint's own embedding (evaluate.py --mteb).

mteb is optional (`python3 -m pip install "mteb>=2.26"`) and imported only here, when tasks are asked for.
A task is an MTEB name (`mteb available-tasks` lists them) or a local task, `FILE.py:CLASS`: a subclass of
one of mteb's task types (e.g. `mteb.abstasks.sts.AbsTaskSTS`) whose `load_data` reads local files.

`load_tasks` resolves the names and loads each task's data, so an unknown name or data that cannot be
downloaded fails before the model is loaded. `MtebEncoder` is what mteb's evaluator calls: it hands the
sentences to the same `embed` function the STS and transfer tasks use (the embedding the checkpoint records:
pooler, PromptBERT's template and [MASK] state, max_seq_length), which sentence-transformers cannot express.
"""

import importlib.util
import os
import sys

import numpy as np

from utils.data import DataError

REQUIREMENT = "mteb>=2.26"  # mteb 2's encoder protocol (encode over a DataLoader) and mteb.evaluate
OFFLINE_HINT = ("without network, pre-fill the Hugging Face datasets cache and set HF_DATASETS_OFFLINE=1, or "
                "give a local task FILE.py:CLASS (docs/evaluate.md#mteb)")


def import_mteb():
    """The mteb module; DataError saying what to install where it is missing."""
    try:
        import mteb
    except ImportError:
        raise DataError(f'--mteb needs the mteb package: python3 -m pip install "{REQUIREMENT}"') from None
    return mteb


def local_task(mteb, spec: str):
    """An instance of the task class CLASS defined in FILE.py (spec `FILE.py:CLASS`)."""
    path, _, name = spec.rpartition(":")
    if not os.path.isfile(path):
        raise DataError(f"--mteb {spec}: no such file {path}")
    module_name = f"mteb_local_task_{abs(hash(os.path.abspath(path)))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # a module under its name, as a dataclass or pydantic model in it expects
    module_spec.loader.exec_module(module)
    task_class = getattr(module, name, None)
    if not (isinstance(task_class, type) and issubclass(task_class, mteb.AbsTask)):
        raise DataError(f"--mteb {spec}: {path} defines no mteb task class {name!r} (a subclass of mteb.AbsTask)")
    return task_class()


def find_task(mteb, name: str):
    """The task `name` (an MTEB name or FILE.py:CLASS); DataError saying how to find names."""
    if name.rpartition(":")[0].endswith(".py"):
        return local_task(mteb, name)
    try:
        return mteb.get_task(name)
    except KeyError as err:
        reason = str(err.args[0]).removeprefix("KeyError: ") if err.args else f"no MTEB task {name!r}"
        raise DataError(f"--mteb: {reason} List the task names with `mteb available-tasks` (e.g. --task-types "
                        "STS), or give a local task as FILE.py:CLASS") from None


def with_data(task) -> list:
    """The tasks whose data `task` reads: itself, or those an aggregate task (CQADupstackRetrieval) combines."""
    parts = getattr(task.metadata, "tasks", None)
    return [leaf for part in parts for leaf in with_data(part)] if parts else [task]


def load_tasks(names) -> list:
    """The tasks, each with its data loaded (downloaded, or read from the datasets cache or local files)."""
    mteb = import_mteb()
    tasks = [find_task(mteb, name) for name in names]  # every name checked before any download
    for name, task in zip(names, tasks):
        for part in with_data(task):
            if part.data_loaded:
                continue
            try:
                part.load_data()
            except OSError as err:  # ConnectionError without network; DatasetNotFoundError, a missing file
                reason = " ".join(str(err).split())
                raise DataError(f"--mteb {name}: its data could not be loaded ({reason}); {OFFLINE_HINT}") from None
    return tasks


class MtebEncoder:
    """mteb's encoder protocol over `embed(list[str]) -> (N, H)`: encode() gathers the texts of mteb's
    DataLoader and embeds them in one call; similarities are cosine, as in SimCSE's STS evaluation."""

    def __init__(self, embed, name: str):
        from mteb.models.model_meta import ModelMeta

        self.embed = embed
        # text only, so mteb refuses image or audio tasks up front
        self.mteb_model_meta = ModelMeta.create_empty({"name": name, "modalities": ["text"]})

    def encode(self, inputs, *, task_metadata=None, hf_split=None, hf_subset=None, prompt_type=None, **kwargs):
        return np.asarray(self.embed([text for batch in inputs for text in batch["text"]]))

    def similarity(self, embeddings1, embeddings2):
        from mteb.similarity_functions import cos_sim

        return cos_sim(embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1, embeddings2):
        from mteb.similarity_functions import pairwise_cos_sim

        return pairwise_cos_sim(embeddings1, embeddings2)


def run_tasks(tasks, embed, name: str, batch_size: int, progress: bool = False) -> dict:
    """{task name: {"main_score": its metric's name, "score": mteb's main score (mean over splits and
    subsets), "scores": {split: [per-subset metrics, as mteb reports them]}, "evaluation_time": s}}."""
    import mteb

    # cache=None: mteb's result cache (~/.cache/mteb) would return an older run's scores for the same name
    result = mteb.evaluate(MtebEncoder(embed, name), tasks, cache=None, co2_tracker=False,
                           encode_kwargs={"batch_size": batch_size}, show_progress_bar=progress)
    main_score = {task.metadata.name: task.metadata.main_score for task in tasks}
    return {r.task_name: {"main_score": main_score[r.task_name], "score": float(r.get_score()),
                          "scores": r.scores, "evaluation_time": r.evaluation_time}
            for r in result.task_results}
