"""utils/embedding.py: what a checkpoint's config says to read, checked; the module that reads it; and that
a PromptBERT export read with its dev embedding scores what training logged for it."""

import json

import pytest
import torch

from utils.embedding import Embedding, checkpoint_embedder, read_embedding
from utils.pooling import PooledEncoder
from utils.prompt import DenoisedPrompt

T1 = 'This sentence of "{sentence}" means {mask}.'


def test_what_a_config_records_and_the_defaults():
    assert read_embedding({}) == (Embedding("cls"), "SimCSE's default; the checkpoint records no embedding")
    assert read_embedding({"sentence_pooler": "avg"})[0] == Embedding("avg")
    spec = {"pooler": "mask", "template": T1, "period": True, "dev": {"period": False, "denoise": True}}
    config = {"sentence_pooler": "mask", "sentence_embedding": spec}
    assert read_embedding(config, "test")[0] == Embedding("mask", T1, True, False)
    assert read_embedding(config, "dev")[0] == Embedding("mask", T1, False, True)
    older = {"sentence_embedding": {"pooler": "mask", "template": T1, "period": True}}  # no dev entry
    assert read_embedding(older, "dev")[0] == read_embedding(older, "test")[0]
    assert Embedding("mask", T1, False, True).describe() == f"template {T1!r}, template-denoised"
    assert Embedding("avg").describe() == ""


@pytest.mark.parametrize("spec, needle", [
    ({"pooler": "max"}, "needs a 'pooler'"), ("mask", "needs a 'pooler'"),
    ({"pooler": "mask", "template": "{sentence}"}, "exactly one {mask}"),
    ({"pooler": "avg", "template": "x"}, "exactly one {sentence}"),
    ({"pooler": "avg", "template": 3}, "must be a string"),
    ({"pooler": "avg", "period": "yes"}, "period must be true or false"),
    ({"pooler": "avg", "denoise": True}, "denoise needs the mask pooler"),
])
def test_a_malformed_record_is_named(spec, needle):
    with pytest.raises(ValueError, match=needle):
        read_embedding({"sentence_embedding": spec})
    with pytest.raises(ValueError, match="sentence_pooler 'max'"):
        read_embedding({"sentence_pooler": "max"})


def test_the_reading_module_for_each_embedding(tiny_bert):
    from utils.model import load_pretrained

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    assert isinstance(checkpoint_embedder(encoder, tokenizer, Embedding("avg")), PooledEncoder)
    denoised = checkpoint_embedder(encoder, tokenizer, Embedding("mask", T1, False, True))
    assert isinstance(denoised, DenoisedPrompt) and denoised.delta.abs().sum() > 0


def test_a_promptbert_export_read_with_its_dev_embedding_scores_what_training_logged(tmp_path, tiny_bert, corpus,
                                                                                   fake_senteval):
    import evaluate
    from tests.conftest import train_in_process

    out = tmp_path / "run"
    train_in_process(tiny_bert, corpus, fake_senteval, out, "--method", "promptbert", "--max_train_steps", "4",
                     "--eval_steps", "2")
    logged = json.load(open(out / "best" / "best_metrics.json"))
    dev = evaluate.main(["--model_name_or_path", str(out / "best"), "--mode", "dev", "--embedding", "dev",
                         "--data_dir", str(fake_senteval)])
    assert dev["denoise"] and dev["period"] is False
    assert dev["scores"]["STSBenchmark"] == pytest.approx(logged["stsb_dev"], abs=1e-9)
    assert dev["scores"]["SICKRelatedness"] == pytest.approx(logged["sickr_dev"], abs=1e-9)
    test = evaluate.main(["--model_name_or_path", str(out / "best"), "--mode", "dev", "--data_dir", str(fake_senteval)])
    assert test["period"] and not test["denoise"]  # the published test embedding, by default
