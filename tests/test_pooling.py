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
