"""ESimCSE: word repetition, the queue logits, the momentum encoder's EMA and dropout-off pass, its state."""

import argparse
import math
import random

import pytest
import torch

from utils.methods.esimcse import ESimCSE, queue_loss, repeat_words
from utils.model import SimCSEModel, load_pretrained


def _args(**kw):
    return argparse.Namespace(**{"seed": 0, "dup_rate": 0.32, "momentum": 0.995, "queue_size": 6,
                                 "per_device_train_batch_size": 3, "momentum_init": "copy", "queue_reset": "never",
                                 **kw})


def test_repeat_words_doubles_inner_tokens_only():
    ids = torch.tensor([[101] + list(range(1, 21)) + [102], [101, 7, 8, 102] + [0] * 18])
    mask = (ids != 0).long()
    mask[0] = 1
    out, out_mask = repeat_words(ids, mask, 0.32, random.Random(0), pad_id=0)
    first = out[0][out_mask[0].bool()].tolist()
    assert first[0] == 101 and first[-1] == 102
    assert sorted(set(first)) == sorted(set(ids[0].tolist()))  # nothing new, nothing lost
    doubled = len(first) - 22
    assert 0 <= doubled < min(10, int(0.32 * 22))
    for token in set(first[1:-1]):  # a doubled token sits next to its copy
        if first.count(token) == 2:
            at = first.index(token)
            assert first[at + 1] == token
    assert out[1][out_mask[1].bool()].tolist() == [101, 7, 8, 102]  # int(0.32 * 4) = 1: randrange(1) = 0 copies


def test_queue_loss_matches_the_formula_written_out():
    torch.manual_seed(0)
    z1, z2 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    queue = torch.randn(5, 4, dtype=torch.float64)
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    expected = 0.0
    for i in range(3):
        logits = [cos(z1[i], z2[j]) / 0.05 for j in range(3)] + [cos(z1[i], q) / 0.05 for q in queue]
        expected += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    assert queue_loss(z1, z2, queue, 0.05).item() == pytest.approx(expected / 3, rel=1e-10)
    empty = queue_loss(z1, z2, queue[:0], 0.05)  # the first step: no queue yet, plain InfoNCE
    from utils.loss import contrastive_loss
    assert empty.item() == pytest.approx(contrastive_loss(z1, z2, 0.05).item(), rel=1e-12)


def _method(tiny_bert, **kw):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    torch.manual_seed(0)
    model = SimCSEModel(encoder, "cls", mlp_only_train=True).train()
    return model, ESimCSE(_args(**kw), model, tokenizer), tokenizer


def test_forward_uses_the_old_queue_then_enqueues_the_momentum_embeddings(tiny_bert):
    model, method, tokenizer = _method(tiny_bert, queue_size=4)
    batch = dict(tokenizer(["a man is playing guitar", "two dogs", "the cat is small"], padding=True,
                           return_tensors="pt"))
    inputs = method.views(batch, step=0)
    assert int(method.queue_len) == 0
    out = method(model, inputs, 0.05)
    assert int(method.queue_len) == 3
    # step 1's enqueued rows (the newest last): the momentum encoder (after one EMA step, = the online
    # encoder at the start) with dropout off, through the online MLP, on view 1
    with torch.no_grad():
        model.eval()
        view1 = {k: v[:3] for k, v in inputs.items() if k != "queue_reset"}
        expected = model.mlp(model(**view1))
        model.train()
    torch.testing.assert_close(method.queue[-3:], expected)
    assert not method.queue.requires_grad
    # step 2 reads the 3 queued rows (the empty slot masked out), keeps the newest 4 after it
    before = method.queue[-3:].clone()
    second = method(model, method.views(batch, step=1), 0.05)
    assert int(method.queue_len) == 4
    torch.testing.assert_close(method.queue[:1], before[2:])  # 3 old + 3 new: the newest 4 stay
    assert math.isfinite(out.loss.item()) and math.isfinite(second.loss.item())


def test_unfilled_queue_slots_change_nothing():
    torch.manual_seed(0)
    z1, z2, queue = torch.randn(3, 4), torch.randn(3, 4), torch.randn(5, 4)
    valid = torch.tensor([False, False, True, True, True])
    masked = queue_loss(z1, z2, queue, 0.05, valid)
    assert masked.item() == pytest.approx(queue_loss(z1, z2, queue[2:], 0.05).item(), rel=1e-6)


def test_the_momentum_encoder_starts_random_and_its_first_update_follows_the_authors_formula(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    torch.manual_seed(0)
    model = SimCSEModel(encoder, "cls", mlp_only_train=True).train()
    method = ESimCSE(_args(momentum_init="random", momentum=0.9), model, tokenizer)
    std = encoder.config.initializer_range
    start = {n: p.detach().clone() for n, p in method.momentum_encoder.named_parameters()}
    online = dict(model.encoder.named_parameters())
    # the encoder's own initializer: normal(0, initializer_range) weights, LayerNorm 1 / 0, not the checkpoint
    query = "encoder.layer.0.attention.self.query.weight"
    assert abs(start[query].std().item() - std) < 0.005 and not torch.allclose(start[query], online[query])
    assert torch.equal(start["embeddings.LayerNorm.weight"], torch.ones_like(start["embeddings.LayerNorm.weight"]))
    assert start.keys() == online.keys()
    batch = dict(tokenizer(["a man is playing guitar", "two dogs", "the cat is small"], padding=True,
                           return_tensors="pt"))
    method(model, method.views(batch, 0), 0.05)
    for name, p in method.momentum_encoder.named_parameters():  # theta_m = m theta_random + (1 - m) theta
        torch.testing.assert_close(p, 0.9 * start[name] + 0.1 * online[name].detach())


def test_the_queue_is_emptied_at_each_epoch_start(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls", mlp_only_train=True).train()
    method = ESimCSE(_args(queue_reset="epoch", queue_size=4), model, tokenizer, steps_per_epoch=2)
    batch = dict(tokenizer(["a man is playing guitar", "two dogs"], padding=True, return_tensors="pt"))
    lengths = []
    for step in range(5):
        inputs = method.views(batch, step)
        assert bool(inputs["queue_reset"]) == (step in (2, 4))
        method(model, inputs, 0.05)
        lengths.append(int(method.queue_len))
    assert lengths == [2, 4, 2, 4, 2]  # epochs start at steps 2 and 4 with an empty queue
    never = ESimCSE(_args(queue_reset="never", queue_size=4), model, tokenizer, steps_per_epoch=2)
    assert not any(bool(never.views(batch, step)["queue_reset"]) for step in range(5))


def test_a_high_dup_rate_on_short_rows_and_a_position_limit_are_kept():
    ids = torch.tensor([[101, 7, 102, 0], [101, 7, 8, 102]])
    mask = (ids != 0).long()
    for seed in range(50):  # dup_rate 1: k may exceed the n - 2 inner tokens; it is capped
        out, out_mask = repeat_words(ids, mask, 1.0, random.Random(seed), pad_id=0)
        assert out_mask.sum(1).tolist()[0] <= 4 and out_mask.sum(1).tolist()[1] <= 6
    long = torch.tensor([[101] + list(range(1, 39)) + [102]])
    out, out_mask = repeat_words(long, torch.ones_like(long), 0.32, random.Random(0), pad_id=0, max_length=42)
    assert out_mask.sum() <= 42  # never longer than the encoder's positions


def test_the_momentum_encoder_is_an_ema_without_gradients(tiny_bert):
    model, method, tokenizer = _method(tiny_bert, momentum=0.9)
    start = [p.detach().clone() for p in method.momentum_encoder.parameters()]
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.add_(1.0)  # the online encoder moved by 1 everywhere
    batch = dict(tokenizer(["a man is playing guitar", "two dogs", "the cat is small"], padding=True,
                           return_tensors="pt"))
    out = method(model, method.views(batch, 0), 0.05)
    out.loss.backward()
    for p0, (p, online) in zip(start, zip(method.momentum_encoder.parameters(), model.encoder.parameters())):
        torch.testing.assert_close(p, 0.9 * p0 + 0.1 * online.detach())
        assert p.grad is None and not p.requires_grad
    assert method.momentum_encoder.training  # its pass ran with dropout off, and its mode is restored


def test_views_repeat_words_in_view_two_only_and_are_the_same_for_the_same_step(tiny_bert):
    model, method, tokenizer = _method(tiny_bert, dup_rate=0.5)
    batch = dict(tokenizer(["a man is playing guitar on the street with a dog"] * 3, padding=True,
                           return_tensors="pt"))
    inputs = method.views(batch, step=5)
    n = batch["input_ids"].shape[1]
    assert torch.equal(inputs["input_ids"][:3, :n], batch["input_ids"])
    assert inputs["attention_mask"][3:].sum() >= batch["attention_mask"].sum()
    again = method.views(batch, step=5)
    assert all(torch.equal(inputs[k], again[k]) for k in inputs)
    other = [method.views(batch, step=s)["attention_mask"][3:].sum(1).tolist() for s in range(6, 12)]
    assert len({tuple(o) for o in other}) > 1  # another step, another draw


def test_bad_flags_are_refused():
    assert "--dup_rate" in ESimCSE.check_args(_args(dup_rate=1.5))
    assert "--momentum" in ESimCSE.check_args(_args(momentum=-0.1))
    assert "--queue_size" in ESimCSE.check_args(_args(queue_size=-1))
    assert ESimCSE.check_args(_args()) is None
    message = ESimCSE.check_run(_args(queue_size=160, per_device_train_batch_size=16), total_steps=5)
    assert "--queue_size" in message and "64" in message
    assert ESimCSE.check_run(_args(queue_size=160, per_device_train_batch_size=64), total_steps=5) is None
