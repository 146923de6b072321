import math

import torch

from utils.loss import contrastive_loss, similarity
from utils.model import SimCSEModel, load_pretrained


def test_loss_matches_the_formula_written_out():
    torch.manual_seed(0)
    z1, z2, temp = torch.randn(6, 5), torch.randn(6, 5), 0.05
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    expected = 0.0
    for i in range(6):
        logits = [cos(z1[i], z2[j]) / temp for j in range(6)]
        expected += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    expected /= 6
    assert abs(contrastive_loss(z1, z2, temp).item() - expected) < 1e-4
    assert similarity(z1.bfloat16(), z2, temp).dtype == torch.float32


def test_one_forward_gives_two_views_that_differ_only_by_dropout(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls", mlp_only_train=True).train()
    batch = tokenizer(["a man is playing", "two dogs on the street"], padding=True, return_tensors="pt")
    doubled = {k: torch.cat([v, v]) for k, v in batch.items()}
    z1, z2 = model(**doubled).chunk(2)
    assert not torch.allclose(z1, z2)  # dropout on: two different views
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    z1, z2 = model(**doubled).chunk(2)
    assert torch.allclose(z1, z2, atol=1e-6)
