"""utils/rank_reduction.py: the Rank Reduction penalty (its value, gradients, solvers, two processes) and the
RankReduction wrapper (the terms it returns, λ from its schedule, the learning-rate anneal)."""

import argparse
import math

import pytest
import torch

from utils.matrix_entropy import SOLVERS, _EighEntropy
from utils.rank import vne
from utils.rank_reduction import RR_SOLVERS, RankReduction, row_entropy, vne_penalty


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- Rank Reduction penalty


def test_vne_penalty_value_equals_vne():
    for shape in [(16, 32), (64, 8)]:  # B < d and B > d (zero eigenvalues)
        z = _randn(*shape)
        p = vne_penalty(z)
        assert p.dtype == torch.float32 and p.ndim == 0
        assert p.item() == pytest.approx(vne(z), abs=1e-5)
    z = _randn(16, 32, dtype=torch.float64)
    assert vne_penalty(z).dtype == torch.float32
    assert vne_penalty(z.bfloat16()).item() == pytest.approx(vne(z.bfloat16()), abs=1e-5)


def test_vne_penalty_under_autocast_is_float32():
    layer = torch.nn.Linear(12, 24)
    x = _randn(10, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)
        assert z.dtype == torch.bfloat16
        p = vne_penalty(z)
    assert p.dtype == torch.float32
    assert p.item() == pytest.approx(vne(z.float()), abs=1e-5)
    p.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_matrix_entropy_gradcheck():
    A = _randn(6, 6, dtype=torch.float64)
    K = (A @ A.T + 0.5 * torch.eye(6, dtype=torch.float64)).requires_grad_()  # well separated eigenvalues
    assert torch.autograd.gradcheck(lambda K: _EighEntropy.apply((K + K.T) / 2), (K,))
    z = _randn(6, 10, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(row_entropy, (z,))


def test_vne_penalty_gradients_with_repeated_and_zero_eigenvalues():
    # duplicated rows: repeated eigenvalues and zero ones; the function stays smooth, gradients match FD
    z = _randn(5, 8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: row_entropy(torch.cat([z, z, z[:2]])), (z,))
    # B > d: B - d zero eigenvalues
    z = _randn(12, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(row_entropy, (z,))

    # float32 path: finite gradients, and since vne([z; z]) == vne(z) the same gradient w.r.t. z
    z = _randn(8, 16).requires_grad_()
    vne_penalty(torch.cat([z, z])).backward()
    assert torch.isfinite(z.grad).all()
    g_dup = z.grad.clone()
    z.grad = None
    vne_penalty(z).backward()
    torch.testing.assert_close(g_dup, z.grad, atol=1e-5, rtol=1e-4)

    # a zero row: finite, ~0 on that row, the other rows' gradient unchanged
    z0 = torch.cat([z.detach()[:3], torch.zeros(1, 16), z.detach()[3:]]).requires_grad_()
    p = vne_penalty(z0)
    assert p.item() == pytest.approx(vne(z.detach()), abs=1e-5)
    p.backward()
    assert torch.isfinite(z0.grad).all()
    assert z0.grad[3].abs().max() < 1e-5
    torch.testing.assert_close(torch.cat([z0.grad[:3], z0.grad[4:]]), z.grad, atol=1e-5, rtol=1e-4)

    # all rows zero: penalty 0, gradient 0
    zz = torch.zeros(4, 6, requires_grad=True)
    p = vne_penalty(zz)
    p.backward()
    assert p.item() == 0 and torch.isfinite(zz.grad).all()



def test_vne_penalty_eigh_is_the_default_and_unchanged():
    # bit for bit today's computation: eigh of the (B, B) Gram matrix, whatever RR_SOLVERS offers
    z = _randn(2, 24, 16).requires_grad_()
    zn = z / z.norm(dim=-1, keepdim=True)
    expected = _EighEntropy.apply(zn @ zn.transpose(-1, -2) / 24)
    (expected_grad,) = torch.autograd.grad(expected.sum(), z)
    for kwargs in ({}, {"solver": "eigh"}):
        value = vne_penalty(z, **kwargs)
        (grad,) = torch.autograd.grad(value.sum(), z)
        assert torch.equal(value, expected) and torch.equal(grad, expected_grad)
    assert RR_SOLVERS[0] == "eigh" and RR_SOLVERS == SOLVERS


def test_vne_penalty_quadrature_solver():
    z = _randn(2, 40, 12)  # B > d: the d x d Gram matrix
    for gather in (False, True):  # no process group: gather is the identity
        value = vne_penalty(z, gather=gather, solver="quadrature")
        torch.testing.assert_close(value, vne_penalty(z), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="solver"):
        vne_penalty(z, solver="svd")


# ----------------------------------------------------------------------------- two processes


DIN, DOUT, BATCH = 6, 10, 8


def _penalty_setup():
    torch.manual_seed(0)
    layer = torch.nn.Linear(DIN, DOUT)
    x = _randn(BATCH, DIN, seed=3)
    x[6] = x[1]  # a duplicated row across the two processes' halves
    return layer, x


def _worker(rank, world, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    layer, x = _penalty_setup()
    ddp = DistributedDataParallel(layer)
    per = BATCH // world
    p = vne_penalty(ddp(x[rank * per:(rank + 1) * per]), gather=True)
    p.backward()
    values = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(values, p.detach().reshape(1))
    if rank == 0:
        torch.save(([v.item() for v in values], {n: q.grad for n, q in layer.named_parameters()}), out)


def test_two_processes_penalty_equals_one_process_on_the_global_batch(tmp_path):
    from tests.conftest import run_gloo

    layer, x = _penalty_setup()
    p = vne_penalty(layer(x), gather=True)  # no process group: gather is the identity
    p.backward()
    grads = {n: q.grad for n, q in layer.named_parameters()}

    out = tmp_path / "rank0.pt"
    run_gloo(_worker, str(out))
    values, dist_grads = torch.load(out)
    assert values == pytest.approx([p.item()] * 2, abs=1e-6)  # identical on every process
    for name, grad in grads.items():
        torch.testing.assert_close(dist_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch", [64, 200])  # the host eigh (<= HOST_EIGH_MAX) and cuSOLVER's
def test_vne_penalty_on_a_gpu_equals_the_cpu(batch):
    z = torch.randn(batch, 48, dtype=torch.float64)
    z_cpu, z_gpu = z.clone().requires_grad_(), z.float().cuda().requires_grad_()
    value_cpu, value_gpu = vne_penalty(z_cpu), vne_penalty(z_gpu)
    (grad_cpu,), (grad_gpu,) = torch.autograd.grad(value_cpu, z_cpu), torch.autograd.grad(value_gpu, z_gpu)
    assert value_gpu.device.type == "cuda" and value_gpu.dtype == torch.float32
    assert abs(float(value_gpu.detach()) - float(value_cpu.detach())) < 5e-4  # float32 eigensolvers, ~1e-4 apart at B = 200
    torch.testing.assert_close(grad_gpu.double().cpu(), grad_cpu, atol=1e-5, rtol=1e-3)


def test_vne_penalty_of_stacked_views_equals_each_view_alone():
    views = torch.randn(2, 16, 8, dtype=torch.float64)
    views[1, 3] = 0  # a zero row in one view only: each view keeps its own normalisation
    together = views.clone().requires_grad_()
    values = row_entropy(together)
    assert values.shape == (2,)
    values.sum().backward()
    for v in range(2):
        alone = views[v].clone().requires_grad_()
        value = row_entropy(alone)
        value.backward()
        assert float(values[v].detach()) == pytest.approx(float(value.detach()), abs=1e-12)
        torch.testing.assert_close(together.grad[v], alone.grad)
    with pytest.raises(ValueError, match="shape"):
        vne_penalty(torch.randn(5))


# ----------------------------------------------------------------------------- the RankReduction wrapper


class _Method(torch.nn.Module):
    """A stand-in method: z = a linear map of the inputs, loss = the mean of z."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(6, 10)

    def forward(self, model, inputs, temp):
        from utils.methods.base import Output

        z = self.layer(inputs["x"])
        return Output(z.mean(), z, 2 * z)


def _rr_args(**kw):
    return argparse.Namespace(**{"rank_reduction": 0.5, "rr_on": "mlp", "rr_solver": "eigh", "rr_start": "0",
                                 "rr_schedule": "constant", "rr_decay_steps": None, "rr_patience": 2,
                                 "rr_watch": "eval", "rr_gain": 0.2, "rr_anneal_lr": False, **kw})


def _optimizer(params, lr=1.0):
    optimizer = torch.optim.SGD(params, lr=lr)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def test_the_wrapper_adds_lambda_times_the_batch_vne_and_names_its_terms():
    method = _Method()
    rr = RankReduction(method, _rr_args(), total_steps=10)
    inputs = {"x": _randn(8, 6)}
    optimizer, scheduler = _optimizer(method.parameters())
    assert rr.begin_step(0, peak_declared=False, optimizer=optimizer, scheduler=scheduler) == 0.5
    out = rr(None, inputs, 0.05)
    plain = method(None, inputs, 0.05)
    expected_vne = vne_penalty(torch.stack(plain.z.chunk(2)), gather=True).mean()
    assert out.terms["infonce"].item() == pytest.approx(plain.loss.item())
    assert out.terms["rr_vne"].item() == pytest.approx(expected_vne.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx(plain.loss.item() + 0.5 * expected_vne.item(), rel=1e-6)
    encoder_side = RankReduction(method, _rr_args(rr_on="encoder"), 10)(None, inputs, 0.05)  # on `pooled`
    assert encoder_side.terms["rr_vne"].item() == pytest.approx(expected_vne.item(), rel=1e-5)  # 2z: same VNE


def test_before_the_peak_lambda_is_zero_and_the_vne_is_still_measured():
    method = _Method()
    rr = RankReduction(method, _rr_args(rr_start="peak"), total_steps=10)
    optimizer, scheduler = _optimizer(method.parameters())
    assert rr.begin_step(0, peak_declared=False, optimizer=optimizer, scheduler=scheduler) == 0.0
    out = rr(None, {"x": _randn(8, 6)}, 0.05)
    assert out.terms["rr_vne"].item() > 0  # logged as measured, not as 0
    assert out.loss.item() == out.terms["infonce"].item()
    out.loss.backward()  # λ = 0: the penalty adds nothing to the gradient
    grad = method.layer.weight.grad.clone()
    method.zero_grad()
    method(None, {"x": _randn(8, 6)}, 0.05).loss.backward()
    assert torch.equal(grad, method.layer.weight.grad)
    assert rr.begin_step(1, peak_declared=True, optimizer=optimizer, scheduler=scheduler) == 0.5


def test_the_stall_decays_lambda_and_with_anneal_the_learning_rate_until_the_run_ends():
    method = _Method()
    rr = RankReduction(method, _rr_args(rr_schedule="plateau", rr_patience=1, rr_decay_steps=2, rr_anneal_lr=True),
                       total_steps=100)
    optimizer, scheduler = _optimizer(method.parameters(), lr=0.1)
    rr.begin_step(0, False, optimizer, scheduler)
    assert rr.on_eval(0, 80.0, full=True) is None
    assert rr.on_eval(5, 70.0, full=False) is None  # a rank evaluation does not count under --rr_watch eval
    note = rr.on_eval(10, 79.0, full=True)
    assert "lambda decays to 0 and the learning rate decays to 0 from step 10" in note
    lrs = []
    for step in (10, 11, 12):
        lrs.append((rr.begin_step(step, False, optimizer, scheduler), optimizer.param_groups[0]["lr"]))
    assert lrs == [(0.5, 0.1), (0.25, 0.05), (0.0, 0.0)]
    assert not rr.annealed(11) and rr.annealed(12)


def test_flag_combinations_that_cannot_work_are_refused_by_name():
    assert "--rr_anneal_lr" in RankReduction.check_arguments(_rr_args(rr_anneal_lr=True))
    assert "--rr_anneal_lr" in RankReduction.check_arguments(_rr_args(rr_anneal_lr=True, rr_schedule="plateau",
                                                                      rank_reduction=0.0))
    assert RankReduction.check_arguments(_rr_args(rr_anneal_lr=True, rr_schedule="target")) is None
    for schedule in ("linear", "cosine"):  # a decay of 0 steps would switch RR off in an "RR" run
        assert "--rr_decay_steps" in RankReduction.check_arguments(_rr_args(rr_schedule=schedule, rr_decay_steps=0))
    assert RankReduction.check_arguments(_rr_args(rr_schedule="plateau", rr_decay_steps=0)) is None
    assert math.isfinite(RankReduction.summary(_rr_args())["weight"])
