"""evaluate.py --mteb: MTEB tasks scored with the checkpoint's own embedding, through a local STS task (a few
sentence pairs in a file here, no network), and its errors."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch
from scipy.stats import spearmanr

from tests.conftest import REPO, make_tiny_model, run_in_process
from tests.test_evaluate import PROMPT, one_error_line
from utils.encode import encode
from utils.model import load_pretrained
from utils.pooling import PooledEncoder

needs_mteb = pytest.mark.skipif(importlib.util.find_spec("mteb") is None,
                                reason="mteb is not installed (python3 -m pip install -r requirements-dev.txt)")

# (sentence1, sentence2, gold score 0-5): distinct scores, some sentences without a final '.' (PromptBERT's rule)
PAIRS = [("a man is playing the guitar", "a man is playing a guitar .", 4.9),
         ("a dog is eating food", "the cat is eating food", 2.1),
         ("two people are riding a horse", "a woman is riding a bike", 1.3),
         ("the child is playing in the park", "a child plays in the park .", 4.4),
         ("a red ball is in the water", "a blue ball is on the street", 1.9),
         ("the woman is eating", "a man is playing", 0.4),
         ("two dogs are playing with a ball", "two dogs play with the ball", 4.6),
         ("a cat is riding a bike", "the small cat is on a bike .", 3.2),
         ("people are on the street", "a horse is in the water", 0.8),
         ("a big dog is eating", "a small dog is eating food", 3.7)]

TASK = '''import csv
from pathlib import Path

from datasets import Dataset, DatasetDict
from mteb.abstasks.sts import AbsTaskSTS
from mteb.abstasks.task_metadata import TaskMetadata


class LocalSTS(AbsTaskSTS):
    metadata = TaskMetadata(
        name="LocalSTS", type="STS", main_score="cosine_spearman", description="pairs.tsv beside this file",
        reference=None, dataset={"path": "local", "revision": "1"}, category="t2t", modalities=["text"],
        eval_splits=["test"], eval_langs=["eng-Latn"], date=None, domains=None, task_subtypes=None, license=None,
        annotations_creators=None, dialect=None, sample_creation=None, bibtex_citation=None)
    min_score, max_score = 0, 5

    def load_data(self, **kwargs):
        with open(Path(__file__).with_name("pairs.tsv"), newline="") as f:
            rows = list(csv.reader(f, delimiter="\\t"))
        columns = {"sentence1": [r[0] for r in rows], "sentence2": [r[1] for r in rows],
                   "score": [float(r[2]) for r in rows]}
        self.dataset = DatasetDict({"test": Dataset.from_dict(columns)})
        self.data_loaded = True
'''


@pytest.fixture(scope="module")
def local_task(tmp_path_factory):
    """FILE.py:CLASS of an STS task that reads PAIRS from a file beside it."""
    folder = tmp_path_factory.mktemp("local-task")
    (folder / "pairs.tsv").write_text("".join(f"{a}\t{b}\t{s}\n" for a, b, s in PAIRS))
    (folder / "local_sts.py").write_text(TASK)
    return f"{folder / 'local_sts.py'}:LocalSTS"


@pytest.fixture(scope="module")
def prompt_export(tmp_path_factory):
    """An export recording PromptBERT's embedding (and a plain pooler beside it); weights drawn wider than
    BERT's init, so that its pairs' cosines differ well beyond float32 rounding."""
    return make_tiny_model(tmp_path_factory.mktemp("prompt") / "best", "bert", initializer_range=0.5,
                           sentence_pooler="cls_before_pooler",
                           sentence_embedding={"pooler": "mask", "template": PROMPT, "period": True})


def run(*args):
    import evaluate

    return run_in_process(evaluate.main, args)


def spearman_of(embed) -> float:
    """SimCSE's STS score of PAIRS, from the embeddings `embed(list[str])` gives: Spearman of cosine vs gold."""
    first, second, gold = zip(*PAIRS)
    cosine = torch.nn.functional.cosine_similarity(embed(list(first)), embed(list(second)))
    return float(spearmanr(gold, cosine.numpy()).statistic)


@needs_mteb
def test_the_score_is_the_spearman_of_our_embedding(tiny_bert, local_task, tmp_path):
    out = tmp_path / "mteb.json"
    # avg: on this random model the cls states of all sentences are nearly one vector (cosines 1 - 1e-6)
    proc = run("--model_name_or_path", tiny_bert, "--pooler", "avg", "--mteb", local_task, "--batch_size", 4,
               "--output_json", out)
    assert proc.returncode == 0, proc.stderr
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    expected = spearman_of(lambda s: encode(PooledEncoder(encoder, "avg"), tokenizer, s))
    record = json.loads(out.read_text())
    assert record["task_set"] is None and "scores" not in record  # --mteb alone: no SentEval STS
    result = record["mteb"]["LocalSTS"]
    assert result["main_score"] == "cosine_spearman"
    assert result["score"] == pytest.approx(expected, abs=1e-6)
    assert result["scores"]["test"][0]["cosine_spearman"] == pytest.approx(expected, abs=1e-6)
    assert "LocalSTS" in proc.stdout and f"{100 * expected:.2f}" in proc.stdout


@needs_mteb
def test_a_promptbert_export_is_read_with_its_template(prompt_export, local_task, tmp_path):
    out = tmp_path / "mteb.json"
    proc = run("--model_name_or_path", prompt_export, "--mteb", local_task, "--output_json", out)
    assert proc.returncode == 0, proc.stderr
    encoder, tokenizer = load_pretrained(str(prompt_export))
    mask = PooledEncoder(encoder, "mask", mask_token_id=tokenizer.mask_token_id)
    expected = spearman_of(lambda s: encode(mask, tokenizer, s, template=PROMPT, period=True))
    plain = spearman_of(lambda s: encode(PooledEncoder(encoder, "cls_before_pooler"), tokenizer, s))
    assert expected != pytest.approx(plain, abs=1e-3)  # so the score below tells the two apart
    assert json.loads(out.read_text())["mteb"]["LocalSTS"]["score"] == pytest.approx(expected, abs=1e-6)


@needs_mteb
def test_an_unknown_task_fails_before_the_model_is_loaded(tmp_path):
    # a missing model: were it loaded first, its error would come instead
    line = one_error_line(run("--model_name_or_path", tmp_path / "no-model", "--mteb", "STSBenchmrk"))
    assert line.startswith("error: --mteb: ") and "'STSBenchmark'" in line and "mteb available-tasks" in line


@needs_mteb
def test_a_task_without_its_data_says_how_to_run_offline(tmp_path):
    # an empty cache and no network: what a machine without the hub sees
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "evaluate.py", "--model_name_or_path", str(tmp_path / "no-model"),
                           "--mteb", "STSBenchmark"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    line = one_error_line(proc)
    assert line.startswith("error: --mteb STSBenchmark: its data could not be loaded")
    assert "HF_DATASETS_OFFLINE=1" in line and "FILE.py:CLASS" in line


def test_without_mteb_installed_it_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "mteb", None)  # `import mteb` raises ImportError, as where it is missing
    line = one_error_line(run("--model_name_or_path", tmp_path / "no-model", "--mteb", "STSBenchmark"))
    assert line == 'error: --mteb needs the mteb package: python3 -m pip install "mteb>=2.26"'
