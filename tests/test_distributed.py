"""Two gloo processes with DDP give the loss and gradients of one process on the global batch."""

import torch

from utils.loss import contrastive_loss
from utils.model import SimCSEModel, load_pretrained

SENTENCES = ["a man is playing guitar", "two dogs on the street", "the child is eating food",
             "a red ball in the water", "people riding a bike", "the cat is small",
             "a woman and a horse", "blue water in the park"]


def _model(path, seed=0):
    # float64: with dropout off the positives' cosines are 1 and the negatives' near 1, so float32
    # cancellation alone puts the half-batch and full-batch gradients ~1e-4 apart (relative)
    encoder, tokenizer = load_pretrained(path)
    torch.manual_seed(seed)
    return SimCSEModel(encoder, "cls", mlp_only_train=True).double().train(), tokenizer


def _step(model, tokenizer, sentences, temp=0.05):
    batch = tokenizer(sentences, padding="max_length", max_length=12, truncation=True, return_tensors="pt")
    z1, z2 = model(**{k: torch.cat([v, v]) for k, v in batch.items()}).chunk(2)
    loss = contrastive_loss(z1, z2, temp)
    loss.backward()
    return loss.detach()


def _worker(rank, world, path, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    model, tokenizer = _model(path)
    ddp = DistributedDataParallel(model)
    per = len(SENTENCES) // world
    loss = _step(ddp, tokenizer, SENTENCES[rank * per:(rank + 1) * per])
    dist.all_reduce(loss)
    if rank == 0:
        torch.save((loss.item() / world, {n: p.grad for n, p in model.named_parameters()}), out)


def test_two_processes_equal_one_process_on_the_global_batch(tmp_path):
    from tests.conftest import make_tiny_model, run_gloo

    # dropout off: the two runs must see identical views
    path = str(make_tiny_model(tmp_path / "m", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    model, tokenizer = _model(path)
    loss = _step(model, tokenizer, SENTENCES).item()
    grads = {n: p.grad for n, p in model.named_parameters()}

    out = tmp_path / "rank0.pt"
    run_gloo(_worker, path, str(out))
    dist_loss, dist_grads = torch.load(out)
    assert abs(dist_loss - loss) < 1e-12
    assert grads.keys() == dist_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(dist_grads[name], grad, atol=1e-12, rtol=1e-9, msg=name)
