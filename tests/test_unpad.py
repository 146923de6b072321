"""utils.unpad: the padding-free forward equals the encoder's own forward on the real tokens."""

import pytest
import torch

from tests.conftest import make_tiny_model
from utils.model import SimCSEModel, load_pretrained
from utils.unpad import unpadded_forward, unsupported_reason

SENTENCES = ["a man is playing guitar on the street with two dogs", "the cat", "a red ball in the water",
             "people riding a bike in the park and a woman eating food", "blue"]


@pytest.fixture(scope="module", params=["bert", "roberta"])
def no_dropout(request, tmp_path_factory):
    path = make_tiny_model(tmp_path_factory.mktemp(request.param), request.param, hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)
    return load_pretrained(str(path))


def _batch(tokenizer):
    return tokenizer(SENTENCES, padding=True, return_tensors="pt")


def test_outputs_equal_the_encoders_own_forward(no_dropout):
    encoder, tokenizer = no_dropout
    batch = _batch(tokenizer)
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # the batch has padding to skip
    encoder.eval()
    with torch.no_grad():
        ref = encoder(**batch, output_hidden_states=True)
        out = unpadded_forward(encoder, **batch, output_hidden_states=True)
    assert len(out.hidden_states) == len(ref.hidden_states)
    for mine, theirs in zip(out.hidden_states, ref.hidden_states):
        torch.testing.assert_close(mine[mask], theirs[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.last_hidden_state[mask], ref.last_hidden_state[mask], atol=1e-5, rtol=1e-5)
    assert (out.last_hidden_state[~mask] == 0).all()
    torch.testing.assert_close(out.pooler_output, ref.pooler_output, atol=1e-5, rtol=1e-5)


def test_gradients_equal_the_encoders_own(no_dropout):
    encoder, tokenizer = no_dropout
    batch = _batch(tokenizer)
    mask = batch["attention_mask"].bool()
    grads = []
    for forward in (lambda: encoder(**batch), lambda: unpadded_forward(encoder, **batch)):
        encoder.zero_grad()
        forward().last_hidden_state[mask].pow(2).mean().backward()
        grads.append({n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-4, msg=name)


@pytest.mark.parametrize("pooler", ["cls", "avg", "avg_first_last", "avg_top2"])
def test_simcse_model_embeddings_are_unchanged(no_dropout, pooler):
    encoder, tokenizer = no_dropout
    batch = _batch(tokenizer)
    torch.manual_seed(0)
    model = SimCSEModel(encoder, pooler, mlp_only_train=True).train()
    with torch.no_grad():
        ref = model(**batch)
        model.unpad = True
        out = model(**batch)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_dropout_still_makes_two_views(tmp_path):
    encoder, tokenizer = load_pretrained(str(make_tiny_model(tmp_path / "m", "bert")))
    model = SimCSEModel(encoder, "cls", unpad=True).train()
    batch = _batch(tokenizer)
    z1, z2 = model(**{k: torch.cat([v, v]) for k, v in batch.items()}).chunk(2)
    assert not torch.allclose(z1, z2)


def test_unsupported_encoders_are_refused_by_name(tmp_path):
    from transformers import DistilBertConfig, DistilBertModel

    distil = DistilBertModel(DistilBertConfig(vocab_size=50, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    assert "not a BERT-style encoder" in unsupported_reason(distil)
    encoder, _ = load_pretrained(str(make_tiny_model(tmp_path / "m", "bert")))
    assert unsupported_reason(encoder) is None
    encoder.config.position_embedding_type = "relative_key"
    with pytest.raises(ValueError, match="--unpad_inputs.*relative_key"):
        unpadded_forward(encoder, torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.long))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU"))])
def test_bf16_autocast_matches_the_encoders_own_forward(no_dropout, device):
    # under autocast the linear layers give bf16 while LayerNorm outputs stay float32: mixed dtypes inside
    encoder, tokenizer = no_dropout
    batch = {k: v.to(device) for k, v in _batch(tokenizer).items()}
    mask = batch["attention_mask"].bool()
    encoder.to(device).eval()
    try:
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
            ref = encoder(**batch).last_hidden_state.float()
            out = unpadded_forward(encoder, **batch).last_hidden_state.float()
    finally:
        encoder.to("cpu")
    torch.testing.assert_close(out[mask], ref[mask], atol=5e-2, rtol=5e-2)


def test_packed_rows_come_in_a_few_sizes_and_the_spare_rows_are_read_by_no_token():
    from utils.unpad import PACK_MULTIPLE, packed_rows

    sizes = set()
    for real in range(1, 300, 7):
        mask = torch.zeros(16, 32, dtype=torch.long)
        mask.view(-1)[torch.randperm(16 * 32, generator=torch.Generator().manual_seed(real))[:real]] = 1
        rows, n = packed_rows(mask)
        assert n == real and rows.shape[0] % PACK_MULTIPLE == 0 and rows.shape[0] - real < PACK_MULTIPLE
        assert torch.equal(rows[:real], mask.view(-1).nonzero().squeeze(1))  # the real tokens, in order
        assert torch.equal(rows[real:], torch.arange(16 * 32, 16 * 32 + rows.shape[0] - real))  # past the layout
        sizes.add(rows.shape[0])
    assert len(sizes) == 5  # 43 token counts from 1 to 295: 5 shapes (64 ... 320), not 43
    assert packed_rows(mask, multiple=1)[0].shape[0] == n  # multiple 1: exactly the real tokens


def test_the_spare_rows_change_no_output(no_dropout, monkeypatch):
    import utils.unpad

    encoder, tokenizer = no_dropout
    batch = _batch(tokenizer)
    encoder.eval()
    with torch.no_grad():
        bucketed = unpadded_forward(encoder, **batch, output_hidden_states=True)
        monkeypatch.setattr(utils.unpad, "PACK_MULTIPLE", 1)  # the exact token count, as before the buckets
        exact = unpadded_forward(encoder, **batch, output_hidden_states=True)
    for a, b in zip(bucketed.hidden_states, exact.hidden_states):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
