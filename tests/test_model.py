"""SimCSEModel: train/eval poolers and an export that transformers and sentence-transformers load alike."""

import os

import pytest
import torch

from utils.encode import encode
from utils.model import SimCSEModel, load_pretrained
from utils.pooling import PooledEncoder

SENTENCES = ["a man is playing guitar .", "two dogs on the street", "the child is eating food"]


@pytest.mark.parametrize("kind", ["bert", "roberta"])
@pytest.mark.parametrize("pooler, mlp_only_train, eval_pooler", [
    ("cls", True, "cls_before_pooler"), ("cls", False, "cls"), ("avg", False, "avg"),
])
def test_export_reproduces_the_evaluation_embedding(request, tmp_path, kind, pooler, mlp_only_train, eval_pooler):
    from sentence_transformers import SentenceTransformer

    path = request.getfixturevalue(f"tiny_{kind}")
    encoder, tokenizer = load_pretrained(str(path))
    model = SimCSEModel(encoder, pooler, mlp_only_train)
    with torch.no_grad():  # move the MLP away from its init so a lost MLP would show
        if model.mlp is not None:
            model.mlp.dense.weight.add_(torch.randn_like(model.mlp.dense.weight))
    assert model.eval_pooler == eval_pooler
    expected = encode(model, tokenizer, SENTENCES)

    out = str(tmp_path / "export")
    model.save_pretrained(out, tokenizer, max_seq_length=62)
    reloaded, reloaded_tok = load_pretrained(out)
    assert reloaded.config.sentence_pooler == eval_pooler
    got = encode(PooledEncoder(reloaded, eval_pooler), reloaded_tok, SENTENCES)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    st = SentenceTransformer(out, device="cpu").encode(SENTENCES, convert_to_tensor=True)
    torch.testing.assert_close(st, expected, atol=1e-5, rtol=1e-4)
    # the live model is unchanged by the export (the encoder's pooler stays out of training)
    assert model.encoder.pooler is None


def test_mlp_is_used_in_training_only_with_mlp_only_train(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls", mlp_only_train=True)
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    batch = tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        raw_cls = model.encoder(**batch).last_hidden_state[:, 0]
        torch.testing.assert_close(model.train()(**batch), model.mlp(raw_cls))
        torch.testing.assert_close(model.eval()(**batch), raw_cls)


def test_poolers_without_a_sentence_transformers_equivalent_get_no_modules_json(tiny_bert, tmp_path):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "avg_first_last", mlp_only_train=False)
    model.save_pretrained(str(tmp_path / "e"), tokenizer, 62)
    assert not os.path.exists(tmp_path / "e" / "modules.json")
    assert os.path.exists(tmp_path / "e" / "config.json")


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="could not load the model .*--model_name_or_path"):
        load_pretrained(str(tmp_path / "no-such-model"))
