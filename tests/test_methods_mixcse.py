"""MixCSE's loss against the formula written out, its stop-gradients, and its flag check."""

import argparse
import math

import pytest
import torch

from utils.methods.mixcse import MixCSE, mixcse_loss


def _cos(a, b):
    return float(a @ b / (a.norm() * b.norm()))


def _written_out(z1, z2, temp, lam):
    """METHODS.md's MixCSE: [S | A | Bk] with the mixes' own-positive entries set to a zero logit."""
    n = z1.shape[0]
    total = 0.0
    for i in range(n):
        s = [_cos(z1[i], z2[j]) / temp for j in range(n)]
        a = [0.0 if j == (i - 1) % n else _cos(z1[i], lam * z2[j] + (1 - lam) * z2[(j + 1) % n]) / temp
             for j in range(n)]
        m1 = lam * z1[i] + (1 - lam) * z1[(i + 1) % n]
        b = [0.0 if j == (i + 1) % n else _cos(m1, z2[j]) / temp for j in range(n)]
        logits = s + a + b
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    return total / n


@pytest.mark.parametrize("lam", [0.2, 0.6, 1.0])
def test_loss_matches_the_formula_written_out(lam):
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64)
    assert mixcse_loss(z1, z2, 0.05, lam).item() == pytest.approx(_written_out(z1, z2, 0.05, lam), rel=1e-10)


def test_the_mixes_are_stop_gradient():
    """Gradients reach z1 through S and A only, z2 through S and Bk only: the same as the loss with the mixes
    fed in as constants."""
    torch.manual_seed(1)
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    lam, temp = 0.2, 0.05
    mixcse_loss(z1, z2, temp, lam).backward()

    a1, a2 = z1.detach().clone().requires_grad_(), z2.detach().clone().requires_grad_()
    m2 = (lam * z2 + (1 - lam) * z2.roll(-1, 0)).detach()
    m1 = (lam * z1 + (1 - lam) * z1.roll(-1, 0)).detach()
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    n = 4
    keep_a = 1 - torch.eye(n, dtype=torch.float64).roll(-1, 1)  # zero at (i, i-1)
    keep_b = 1 - torch.eye(n, dtype=torch.float64).roll(1, 1)  # zero at (i, i+1)
    logits = torch.cat([unit(a1) @ unit(a2).T, (unit(a1) @ unit(m2).T) * keep_a,
                        (unit(m1) @ unit(a2).T) * keep_b], 1) / temp
    torch.nn.functional.cross_entropy(logits, torch.arange(n)).backward()
    torch.testing.assert_close(z1.grad, a1.grad)
    torch.testing.assert_close(z2.grad, a2.grad)


def test_mix_lambda_outside_zero_one_is_refused():
    assert "--mix_lambda" in MixCSE.check_args(argparse.Namespace(mix_lambda=1.5))
    assert MixCSE.check_args(argparse.Namespace(mix_lambda=0.2)) is None
