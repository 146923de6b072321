"""utils/matrix_entropy.py: the eigendecomposition-free von Neumann entropy against the eigh solver
(values, gradients, the batches Rank Reduction sees), gradchecks, and that it calls no eigensolver."""

import math

import pytest
import torch

from utils.matrix_entropy import QUADRATURE_EPS, SOLVERS, matrix_entropy, matrix_log, quadrature_nodes
from utils.rank import vne
from utils.rank_reduction import RR_SOLVERS, row_entropy, vne_penalty

F64 = torch.float64


def _randn(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _batches(B, d, seed=1) -> dict:
    """The batch shapes RR meets: (B, d) float64 rows of each kind."""
    iso = _randn(B, d, seed=seed)
    u = _randn(d, seed=seed + 1)
    aniso = 10 * u / u.norm() + 0.3 * _randn(B, d, seed=seed + 2)  # one dominant direction, like raw BERT
    collapsed = _randn(B, 8, seed=seed + 3) @ _randn(8, d, seed=seed + 4)  # rank 8
    duplicated = iso[: B // 4].repeat(4, 1)
    zero_rows = iso.clone()
    zero_rows[::5] = 0
    return {"isotropic": iso, "anisotropic": aniso, "collapsed": collapsed, "duplicated": duplicated,
            "zero_rows": zero_rows}


def _value_and_grad(z, solver, dtype):
    """(S, dS/dz in float64) by vne_penalty (float32) or by its computation in float64."""
    z = z.to(dtype).requires_grad_()
    value = vne_penalty(z, solver=solver) if dtype == torch.float32 else row_entropy(z, solver)
    (grad,) = torch.autograd.grad(value, z)
    return float(value.detach()), grad.double().flatten()


# ----------------------------------------------------------------------------- the quadrature


def test_scalar_quadrature_of_x_log_x():
    s, c = quadrature_nodes()
    x = torch.cat([torch.zeros(1, dtype=F64), torch.logspace(math.log10(QUADRATURE_EPS), 0, 2000, dtype=F64)])
    log_x = (x - 1) * (c / (x[:, None] + s)).sum(-1)
    assert (x * (log_x - x.log())).abs()[1:].max() < 5e-8  # the error in S per eigenvalue
    big = x > 1e-3
    assert ((log_x - x.log()) / x.log().abs().clamp_min(1))[big].abs().max() < 1e-7
    assert math.log(QUADRATURE_EPS) - 1.5 < log_x[0] < math.log(QUADRATURE_EPS)  # zero: finite, about log(eps) - 1
    with pytest.raises(ValueError):
        quadrature_nodes(nodes=1)


def test_matrix_log_equals_the_eigendecomposition_log():
    Q, _ = torch.linalg.qr(_randn(20, 20))
    lam = torch.logspace(-4, 0, 20, dtype=F64)
    K = Q @ torch.diag(lam) @ Q.T
    log_k = matrix_log(K)
    torch.testing.assert_close(log_k, Q @ torch.diag(lam.log()) @ Q.T, atol=1e-6, rtol=0)
    assert torch.equal(log_k, log_k.T)
    # stacked matrices: one batched call, each as alone
    torch.testing.assert_close(matrix_log(torch.stack([K, K / 2])), torch.stack([log_k, matrix_log(K / 2)]))


def test_flat_and_rank_one_spectra():
    for n in (1, 7, 64):
        K = torch.eye(n, dtype=F64) / n
        assert float(matrix_entropy(K)) == pytest.approx(math.log(n), abs=1e-6)
    v = _randn(30, 1)
    K = v @ v.T / v.square().sum()
    assert float(matrix_entropy(K)) == pytest.approx(0, abs=1e-6)


# ----------------------------------------------------------------------------- against eigh


@pytest.mark.parametrize("B, d", [(64, 768), (256, 384), (512, 384), (512, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=["float32", "float64"])
def test_quadrature_matches_eigh(B, d, dtype):
    for name, z in _batches(B, d).items():
        ref, ref_grad = _value_and_grad(z, "eigh", dtype)
        value, grad = _value_and_grad(z, "quadrature", dtype)
        cosine = float(torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0))
        assert abs(value - ref) <= (1e-4 if dtype == torch.float32 else 1e-6), name
        assert cosine >= 0.9999, name
        if dtype == torch.float32:  # closer to the exact value than float32 eigh is (its own error: ~2e-5)
            assert abs(value - vne(z)) <= 2e-5, name


def test_stacked_views_equal_each_view_alone():
    views = _randn(2, 48, 16)
    views[1, 3] = 0  # a zero row in one view only: each view keeps its own normalisation
    together = views.clone().requires_grad_()
    values = row_entropy(together, "quadrature")
    assert values.shape == (2,)
    values.sum().backward()
    for v in range(2):
        alone = views[v].clone().requires_grad_()
        value = row_entropy(alone, "quadrature")
        value.backward()
        assert float(values[v].detach()) == pytest.approx(float(value.detach()), abs=1e-12)
        torch.testing.assert_close(together.grad[v], alone.grad)
        assert float(value.detach()) == pytest.approx(vne(views[v]), abs=1e-6)


def test_duplicated_zero_and_all_zero_rows():
    z = _randn(8, 16, dtype=torch.float32).requires_grad_()
    vne_penalty(z, solver="quadrature").backward()
    g = z.grad.clone()
    # vne([z; z]) == vne(z): the same gradient w.r.t. z
    z.grad = None
    vne_penalty(torch.cat([z, z]), solver="quadrature").backward()
    torch.testing.assert_close(z.grad, g, atol=1e-5, rtol=1e-4)
    # a zero row: ~0 gradient on it, the others unchanged
    z0 = torch.cat([z.detach()[:3], torch.zeros(1, 16), z.detach()[3:]]).requires_grad_()
    p = vne_penalty(z0, solver="quadrature")
    assert p.item() == pytest.approx(vne(z.detach()), abs=1e-5)
    p.backward()
    assert z0.grad[3].abs().max() < 1e-5
    torch.testing.assert_close(torch.cat([z0.grad[:3], z0.grad[4:]]), g, atol=1e-5, rtol=1e-4)
    # all rows zero: 0 and a zero gradient, for both Gram matrix shapes
    for shape in [(4, 6), (6, 4)]:
        zz = torch.zeros(*shape, requires_grad=True)
        p = vne_penalty(zz, solver="quadrature")
        p.backward()
        assert p.item() == 0 and torch.equal(zz.grad, torch.zeros(shape))


def test_under_autocast_is_float32():
    layer = torch.nn.Linear(12, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(_randn(10, 12, dtype=torch.float32))
        p = vne_penalty(z, solver="quadrature")
    assert p.dtype == torch.float32 and p.ndim == 0
    assert p.item() == pytest.approx(vne(z.float()), abs=1e-5)


# ----------------------------------------------------------------------------- gradients


def test_gradcheck():
    A = _randn(6, 6)
    K = A @ A.T + 0.5 * torch.eye(6, dtype=F64)
    K = (K / K.trace()).requires_grad_()
    assert torch.autograd.gradcheck(lambda K: matrix_entropy((K + K.T) / 2), (K,))
    for shape in [(6, 10), (12, 4)]:  # the B x B and the d x d Gram matrix
        z = _randn(*shape, seed=1).requires_grad_()
        assert torch.autograd.gradcheck(lambda z: row_entropy(z, "quadrature"), (z,))
    # duplicated rows and a zero row: repeated and zero eigenvalues
    z = _randn(5, 8, seed=2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: row_entropy(torch.cat([z, z, torch.zeros(1, 8, dtype=F64), z[:2]]), "quadrature"), (z,))


def test_no_eigendecomposition(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("an eigensolver was called")

    for name in ("eigh", "eigvalsh", "eig", "eigvals", "svd", "svdvals"):
        monkeypatch.setattr(torch.linalg, name, refuse)
    monkeypatch.setattr(torch, "svd", refuse)
    for shape in [(16, 8), (8, 16), (2, 16, 8)]:
        z = _randn(*shape, dtype=torch.float32).requires_grad_()
        vne_penalty(z, solver="quadrature").sum().backward()
        assert torch.isfinite(z.grad).all()
    with pytest.raises(AssertionError, match="eigensolver"):  # the patch is in force
        vne_penalty(z, solver="eigh")


def test_solver_names():
    assert RR_SOLVERS == SOLVERS == ("eigh", "quadrature")
    for bad in ("svd", "Eigh"):
        with pytest.raises(ValueError, match="solver"):
            vne_penalty(_randn(4, 3), solver=bad)
        with pytest.raises(ValueError, match="solver"):
            matrix_entropy(torch.eye(3, dtype=F64) / 3, solver=bad)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("B, d", [(64, 384), (512, 64)])
def test_on_a_gpu_without_host_synchronisation(B, d):
    z = _randn(B, d)
    cpu_value, cpu_grad = _value_and_grad(z, "quadrature", torch.float32)
    z_gpu = z.float().cuda().requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # any host wait raises
    try:
        value = vne_penalty(z_gpu, solver="quadrature")
        (grad,) = torch.autograd.grad(value, z_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert float(value.detach()) == pytest.approx(cpu_value, abs=1e-5)
    assert float(torch.nn.functional.cosine_similarity(grad.double().cpu().flatten(), cpu_grad, dim=0)) >= 0.9999
