"""Unsupervised SimCSE (Gao et al., 2021): two dropout views of each sentence, InfoNCE over cos / temp."""

from utils.loss import contrastive_loss
from utils.methods.base import Method, Output


class SimCSE(Method):
    """One forward of the batch stacked twice; row i of view 1 against all of view 2 (gathered)."""

    name, label = "simcse", "SimCSE"

    def forward(self, model, inputs, temp):
        z, pooled = model(**inputs, return_pooled=True)
        z1, z2 = z.chunk(2)
        return Output(contrastive_loss(z1, z2, temp), z, pooled)
