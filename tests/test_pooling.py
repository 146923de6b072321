import pytest
import torch
from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions as Out

from utils.pooling import PooledEncoder, pool


def outputs(hidden_states, pooler_output=None):
    return Out(last_hidden_state=hidden_states[-1], pooler_output=pooler_output, hidden_states=hidden_states)


def test_poolers_follow_simcse_definitions():
    torch.manual_seed(0)
    layers = tuple(torch.randn(2, 4, 3) for _ in range(4))  # embeddings + 3 layers
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = outputs(layers, pooler_output=torch.randn(2, 3))
    assert torch.equal(pool("cls", mask, out), out.pooler_output)
    assert torch.equal(pool("cls_before_pooler", mask, out), layers[-1][:, 0])
    torch.testing.assert_close(pool("avg", mask, out)[1], layers[-1][1, :2].mean(0))
    torch.testing.assert_close(pool("avg_first_last", mask, out)[1], ((layers[1] + layers[-1]) / 2)[1, :2].mean(0))
    torch.testing.assert_close(pool("avg_top2", mask, out)[0], ((layers[-2] + layers[-1]) / 2)[0].mean(0))


def test_cls_without_a_pooler_layer_and_unknown_names_fail_clearly():
    out = outputs((torch.zeros(1, 2, 3),))
    with pytest.raises(ValueError, match="cls_before_pooler"):
        pool("cls", torch.ones(1, 2), out)
    with pytest.raises(ValueError, match="unknown pooler"):
        PooledEncoder(torch.nn.Identity(), "max")


def test_mask_pooler_reads_the_state_at_the_one_mask_token():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 4)
    ids = torch.tensor([[1, 9, 2, 0, 0], [1, 2, 3, 9, 2], [9, 1, 2, 3, 2]])  # mask token id 9
    mask = (ids != 0).long()
    got = pool("mask", mask, outputs((hidden,)), ids, 9)
    assert torch.equal(got, torch.stack([hidden[0, 1], hidden[1, 3], hidden[2, 0]]))


@pytest.mark.parametrize("row, count", [([1, 2, 3, 2], 0), ([1, 9, 9, 2], 2)])
def test_mask_pooler_refuses_rows_without_exactly_one_mask(row, count):
    ids = torch.tensor([[1, 9, 2, 0], row])
    with pytest.raises(ValueError, match=f"exactly one mask token \\(id 9\\) per row; row 1 has {count}"):
        pool("mask", torch.ones(2, 4), outputs((torch.zeros(2, 4, 3),)), ids, 9)
    with pytest.raises(ValueError, match="mask token id"):
        pool("mask", torch.ones(2, 4), outputs((torch.zeros(2, 4, 3),)))


def test_pooled_encoder_mask_needs_the_tokenizer_mask_id(tiny_bert):
    from utils.model import load_pretrained

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    with pytest.raises(ValueError, match="has none"):
        PooledEncoder(encoder, "mask")
    model = PooledEncoder(encoder, "mask", mask_token_id=tokenizer.mask_token_id).eval()
    batch = tokenizer(["a man [MASK] riding", "two [MASK]"], padding=True, return_tensors="pt")
    with torch.no_grad():
        got = model(**batch)
        hidden = encoder(**batch).last_hidden_state
    torch.testing.assert_close(got, torch.stack([hidden[0, 3], hidden[1, 2]]))
    assert PooledEncoder(encoder, "avg").mask_token_id is None  # the other poolers, as before
