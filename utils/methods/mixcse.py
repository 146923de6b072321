"""MixCSE (Zhang et al., AAAI 2022): SimCSE plus hard negatives mixed from a positive and a neighbour.

With z1, z2 the two views (gathered over processes, N rows) and sim = cos / temp, each row i gets two more
blocks of N logits besides S = sim(z1, z2):
  A[i, j]  = sim(z1_i, m2_j),  m2_j = λ z2_j + (1 - λ) z2_{j+1}  (detached; entry (i, i-1) set to 0)
  Bk[i, j] = sim(m1_i, z2_j),  m1_i = λ z1_i + (1 - λ) z1_{i+1}  (detached; entry (i, i+1) set to 0)
and the loss is the cross-entropy of [S | A | Bk] against label i. The zeroed entries are the mixes that
hold (1 - λ) of i's own positive; they are zero logits (e^0 = 1 stays in the denominator), as in the
authors' code. "j+1" wraps around the global batch, so the mixes are the same however many processes run.
"""

import torch
import torch.nn.functional as F

from utils.cli import number
from utils.distributed import gather_with_grad, world
from utils.loss import similarity
from utils.methods.base import Method, Output


def mixcse_loss(z1: torch.Tensor, z2: torch.Tensor, temp: float, mix_lambda: float) -> torch.Tensor:
    """Mean MixCSE loss of this process's rows z1 (B, H) against the global batch (z1 and z2 gathered)."""
    rank, _ = world()
    z1_all, z2_all = gather_with_grad(z1), gather_with_grad(z2)
    n, b = z2_all.shape[0], z1.shape[0]
    rows = torch.arange(b, device=z1.device) + rank * b  # this process's rows in the global batch
    m2 = (mix_lambda * z2_all + (1 - mix_lambda) * z2_all.roll(-1, dims=0)).detach()
    m1 = (mix_lambda * z1_all + (1 - mix_lambda) * z1_all.roll(-1, dims=0)).detach()[rows]
    columns = torch.arange(n, device=z1.device)
    keep_a = columns[None, :] != ((rows - 1) % n)[:, None]  # m2_{i-1} holds (1 - λ) of z2_i
    keep_b = columns[None, :] != ((rows + 1) % n)[:, None]  # m1_i's positive part z1_{i+1} pairs z2_{i+1}
    logits = torch.cat([similarity(z1, z2_all, temp),
                        similarity(z1, m2, temp) * keep_a,
                        similarity(m1, z2_all, temp) * keep_b], dim=1)
    return F.cross_entropy(logits, rows)


class MixCSE(Method):
    name, label = "mixcse", "MixCSE"
    flags = (("--mix_lambda", dict(type=number(float, 0), default=0.2,
                                   help="share of the positive in each mixed negative (the authors' --lambdas)")),)
    # the authors' run_unsup_example.sh: the MLP also in the dev evaluation that picks the checkpoint
    recipe = {**Method.recipe, "mlp_only_train": False}

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__(args, model, tokenizer, steps_per_epoch)
        self.mix_lambda = args.mix_lambda

    @classmethod
    def check_args(cls, args):
        if not 0 <= args.mix_lambda <= 1:
            return f"argument --mix_lambda: must be in [0, 1], got {args.mix_lambda}"
        return None

    def forward(self, model, inputs, temp):
        z, pooled = model(**inputs, return_pooled=True)
        z1, z2 = z.chunk(2)
        return Output(mixcse_loss(z1, z2, temp, self.mix_lambda), z, pooled)
