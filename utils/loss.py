"""SimCSE's contrastive objective (InfoNCE with in-batch negatives).

For a batch of B sentences encoded twice (two dropout views z1, z2) the loss of row i is

    l_i = -log( exp(cos(z1_i, z2_i) / tau) / sum_j exp(cos(z1_i, z2_j) / tau) ),

the cross-entropy of the row of cosine similarities / tau against label i; the loss is the mean over
rows. Under multi-process training the columns j run over the global batch (gathered with gradients).
"""

import torch
import torch.nn.functional as F

from utils.distributed import gather_with_grad, world


def similarity(z1: torch.Tensor, z2: torch.Tensor, temp: float) -> torch.Tensor:
    """(B, H), (M, H) -> (B, M) cosine similarities / temp, in float32 at least whatever the autocast dtype.

    Half precision would round cosines near 1 (the positives) to a few distinct values, and τ = 0.05
    multiplies that error by 20.
    """
    dtype = torch.promote_types(z1.dtype, torch.float32)
    with torch.autocast(device_type=z1.device.type, enabled=False):  # else the matmul drops back to half
        z1 = F.normalize(z1.to(dtype), dim=-1)
        z2 = F.normalize(z2.to(dtype), dim=-1)
        return z1 @ z2.T / temp


def contrastive_loss(z1: torch.Tensor, z2: torch.Tensor, temp: float) -> torch.Tensor:
    """Mean InfoNCE of this process's rows z1 against the positives and negatives z2 of all processes."""
    rank, _ = world()
    z2_all = gather_with_grad(z2)
    logits = similarity(z1, z2_all, temp)
    labels = torch.arange(z1.shape[0], device=z1.device) + rank * z1.shape[0]
    return F.cross_entropy(logits, labels)
