"""SimCSEModel: train/eval poolers and an export that transformers and sentence-transformers load alike."""

import json
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
    with open(os.path.join(out, "config_sentence_transformers.json")) as f:  # what sentence-transformers writes too
        assert json.load(f)["similarity_fn_name"] == "cosine"
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


@pytest.mark.parametrize("pooler", ["avg_first_last", "avg_top2", "mask"])
def test_an_embedding_sentence_transformers_cannot_express_fails_to_load_there_saying_so(tiny_bert, tmp_path, pooler):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls" if pooler == "mask" else pooler, mlp_only_train=True)
    if pooler == "mask":  # PromptBERT's export: the [MASK] state of a template
        model.sentence_embedding = {"pooler": "mask", "template": "{sentence} means {mask}", "period": True}
    model.save_pretrained(str(tmp_path / "e"), tokenizer, 62)
    with pytest.raises(ImportError, match="NotExpressible__read_this_checkpoint_with_evaluate_py"):
        SentenceTransformer(str(tmp_path / "e"), device="cpu")  # not a silent mean-pooling
    assert not (tmp_path / "e" / "config_sentence_transformers.json").exists()
    assert AutoModel.from_pretrained(str(tmp_path / "e")).config.sentence_pooler == pooler


def test_missing_model_is_one_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="could not load the model .*--model_name_or_path"):
        load_pretrained(str(tmp_path / "no-such-model"))


def copy_model(src, dst, files=None):
    import shutil

    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and (files is None or f.name in files):
            shutil.copy(f, dst / f.name)
    return dst


def test_folder_without_tokenizer_files_is_refused_before_the_weights_are_read(tiny_bert, tmp_path):
    from utils.model import ModelLoadError

    folder = copy_model(tiny_bert, tmp_path / "no-tokenizer", {"config.json", "model.safetensors"})
    (folder / "model.safetensors").write_bytes(b"not read")  # the tokenizer check comes first
    with pytest.raises(ModelLoadError) as err:
        load_pretrained(str(folder))
    reason = err.value.reason
    assert str(folder) in reason and "--model_name_or_path" in reason and "tokenizer has 5 tokens" in reason
    assert "\n" not in reason and str(err.value) == f"error: {reason}"


def test_real_and_tiny_tokenizers_fit_their_models(minilm, tiny_bert, tiny_roberta):
    from transformers import AutoConfig, AutoTokenizer

    from utils.model import check_tokenizer_fits

    for path in (minilm, tiny_bert, tiny_roberta):
        check_tokenizer_fits(AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path), str(path))


def test_tokenizer_with_ids_beyond_the_embeddings_is_refused(tiny_bert):
    from transformers import AutoConfig, AutoTokenizer

    from utils.model import ModelLoadError, check_tokenizer_fits

    config, tokenizer = AutoConfig.from_pretrained(tiny_bert), AutoTokenizer.from_pretrained(tiny_bert)
    tokenizer.add_tokens(["newword"])
    with pytest.raises(ModelLoadError, match=f"{len(tokenizer)} tokens but the model embeds {config.vocab_size}"):
        check_tokenizer_fits(tokenizer, config, str(tiny_bert))


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_safetensors_is_one_clear_error_naming_the_file(tiny_bert, tmp_path, damage):
    from utils.model import ModelLoadError

    folder = copy_model(tiny_bert, tmp_path / "corrupt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"\x01" * 100)
    with pytest.raises(ModelLoadError) as err:
        load_pretrained(str(folder), flag="--runs")
    assert f"{weights} (--runs) cannot be read" in err.value.reason and "\n" not in err.value.reason
