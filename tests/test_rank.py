"""utils/rank.py: rank metrics against numpy/scipy references and known spectra, alignment/uniformity
against their formulas written out, the STS-B probe, and the Rank Reduction penalty (gradients, DDP)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import entr

from utils.rank import (
    RR_SOLVERS,
    _MatrixEntropy,
    _row_entropy,
    alignment,
    eig_effective_rank,
    effective_rank,
    energy_rank,
    probe_metrics,
    rank_metrics,
    stsb_probe,
    uniformity,
    vne,
    vne_penalty,
)


def _randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------- numpy references


def ref_effective_rank(Z):
    s = np.linalg.svd(np.asarray(Z, dtype=np.float64), compute_uv=False)
    return float(np.exp(entr(s / s.sum()).sum()))


def ref_vne(Z):
    Z = np.asarray(Z, dtype=np.float64)
    Z = Z / np.linalg.norm(Z, axis=1, keepdims=True)
    lam = np.clip(np.linalg.eigvalsh(Z.T @ Z / len(Z)), 0, None)
    return float(entr(lam / lam.sum()).sum())


def ref_energy_rank(Z, tau):
    s2 = np.linalg.svd(np.asarray(Z, dtype=np.float64), compute_uv=False) ** 2
    cum = np.cumsum(s2)
    return next(k + 1 for k in range(len(cum)) if cum[k] >= tau * cum[-1])


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("shape", [(60, 20), (15, 40)], ids=["N>d", "N<d"])
def test_metrics_match_numpy_references(shape):
    # a decaying spectrum, so the metrics are not all near full rank
    Z = _randn(*shape) @ torch.diag(torch.logspace(0, -2, shape[1]))
    assert effective_rank(Z) == pytest.approx(ref_effective_rank(Z), rel=1e-9)
    assert vne(Z) == pytest.approx(ref_vne(Z), rel=1e-9)
    assert eig_effective_rank(Z) == pytest.approx(math.exp(ref_vne(Z)), rel=1e-9)
    for tau in (0.1, 0.5, 0.9, 0.99):
        assert energy_rank(Z, tau) == ref_energy_rank(Z, tau)
    metrics = rank_metrics(Z, tau=0.8)
    assert metrics == pytest.approx({"effective_rank": effective_rank(Z), "vne": vne(Z),
                                     "eig_effective_rank": eig_effective_rank(Z),
                                     "energy_rank": energy_rank(Z, 0.8)}, rel=1e-12)
    assert all(type(v) in (float, int) for v in metrics.values())


def test_rank_one_matrix():
    Z = _randn(40, 1, seed=1) @ _randn(1, 30, seed=2)
    assert effective_rank(Z) == pytest.approx(1, abs=1e-9)
    assert eig_effective_rank(Z) == pytest.approx(1, abs=1e-9)
    assert vne(Z) == pytest.approx(0, abs=1e-9)
    assert energy_rank(Z) == 1
    assert energy_rank(Z, tau=1.0) == 1


def test_orthonormal_rows_have_full_rank():
    d = 16
    Q, _ = torch.linalg.qr(_randn(d, d, dtype=torch.float64))
    m = rank_metrics(Q, tau=1.0)
    assert m["effective_rank"] == pytest.approx(d, rel=1e-9)
    assert m["eig_effective_rank"] == pytest.approx(d, rel=1e-9)
    assert m["vne"] == pytest.approx(math.log(d), rel=1e-9)
    assert m["energy_rank"] == d
    assert energy_rank(Q, tau=0.9) == math.ceil(0.9 * d)


def test_k_equal_singular_values_give_rank_k():
    k, n, d = 5, 50, 20
    U, _ = torch.linalg.qr(_randn(n, k, seed=1, dtype=torch.float64))
    V, _ = torch.linalg.qr(_randn(d, k, seed=2, dtype=torch.float64))
    Z = 3 * U @ V.T  # singular values: 3 (k times), 0
    assert effective_rank(Z) == pytest.approx(k, rel=1e-9)
    assert energy_rank(Z, tau=1.0) == k
    for j in range(1, k + 1):  # exact ties: j of k equal values hold exactly j/k of the energy
        assert energy_rank(Z, tau=j / k) == j
    # k orthonormal rows, each repeated 3 times: equal row norms too, so the row-normalised spectrum is flat
    Z = V.T.repeat(3, 1)
    assert eig_effective_rank(Z) == pytest.approx(k, rel=1e-9)
    assert effective_rank(Z) == pytest.approx(k, rel=1e-9)


def test_scale_invariance_and_duplicate_rows():
    Z = _randn(30, 12, dtype=torch.float64) @ torch.diag(torch.linspace(1, 0.1, 12, dtype=torch.float64))
    assert rank_metrics(7 * Z) == pytest.approx(rank_metrics(Z), rel=1e-9)
    ZZ = torch.cat([Z, Z])
    assert vne(ZZ) == pytest.approx(vne(Z), rel=1e-9)
    assert eig_effective_rank(ZZ) == pytest.approx(eig_effective_rank(Z), rel=1e-9)
    assert effective_rank(ZZ) == pytest.approx(effective_rank(Z), rel=1e-9)  # σ scale by √2


def test_zero_rows_and_degenerate_inputs():
    Z = _randn(20, 8)
    Zz = torch.cat([Z[:5], torch.zeros(3, 8), Z[5:]])
    m = rank_metrics(Zz)
    assert all(math.isfinite(v) for v in m.values())
    assert m == pytest.approx(rank_metrics(Z), rel=1e-9)  # zero rows change no spectrum (vne: renormalised)
    assert rank_metrics(torch.zeros(10, 4)) == {"effective_rank": 0.0, "vne": 0.0, "eig_effective_rank": 0.0,
                                                "energy_rank": 0}
    bad = Z.clone()
    bad[3, 2] = float("nan")
    assert all(math.isnan(v) for v in rank_metrics(bad).values())
    assert effective_rank(torch.tensor([[3.0, 4.0]])) == pytest.approx(1)
    with pytest.raises(ValueError):
        rank_metrics(torch.zeros(0, 4))
    with pytest.raises(ValueError):
        rank_metrics(torch.zeros(4))
    for tau in (0, 1.5, -0.1):
        with pytest.raises(ValueError):
            energy_rank(Z, tau)


def test_float32_and_float64_inputs_agree():
    Z = _randn(50, 30, dtype=torch.float64)
    assert rank_metrics(Z.float()) == pytest.approx(rank_metrics(Z), rel=1e-5)


# ----------------------------------------------------------------------------- alignment / uniformity


def _unit(v):
    n = math.sqrt(sum(a * a for a in v))
    return [a / n for a in v]


@pytest.mark.parametrize("alpha", [2, 1.5])
def test_alignment_formula(alpha):
    x, y = _randn(9, 5, seed=1), _randn(9, 5, seed=2)
    total = 0.0
    for xi, yi in zip(x.tolist(), y.tolist()):
        xi, yi = _unit(xi), _unit(yi)
        total += math.sqrt(sum((a - b) ** 2 for a, b in zip(xi, yi))) ** alpha
    assert alignment(x, y, alpha) == pytest.approx(total / len(x), rel=1e-9)
    assert alignment(x, 3 * x) == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("t", [2, 5])
def test_uniformity_formula(t):
    x = _randn(11, 4)
    rows = [_unit(v) for v in x.tolist()]
    terms = [math.exp(-t * sum((a - b) ** 2 for a, b in zip(rows[i], rows[j])))
             for i in range(len(rows)) for j in range(i + 1, len(rows))]
    expected = math.log(sum(terms) / len(terms))
    assert uniformity(x, t) == pytest.approx(expected, rel=1e-9)
    assert uniformity(x, t, block=3) == pytest.approx(expected, rel=1e-9)  # row blocks change nothing
    # Wang & Isola's own one-liner
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    assert uniformity(x, t) == pytest.approx(torch.pdist(xn, p=2).pow(2).mul(-t).exp().mean().log().item(),
                                             rel=1e-9)


def test_uniformity_large_t_is_finite():
    x = _randn(30, 8)
    value = uniformity(x, t=2000)  # exp(-t d²) underflows for every pair in the naive formula
    xn = torch.nn.functional.normalize(x.double(), dim=1)
    d2 = torch.pdist(xn).pow(2)
    assert value == pytest.approx((torch.logsumexp(-2000 * d2, 0) - math.log(len(d2))).item(), rel=1e-9)


# ----------------------------------------------------------------------------- STS-B probe


def _write_stsb(root, rows):
    folder = root / "downstream" / "STS" / "STSBenchmark"
    folder.mkdir(parents=True)
    lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{score}\t{a}\t{b}" for i, (score, a, b) in enumerate(rows)]
    (folder / "sts-dev.csv").write_text("\n".join(lines) + "\n")
    return root


def test_stsb_probe_on_a_tiny_file(tmp_path):
    data = _write_stsb(tmp_path, [
        ("5.000", "a man is  dancing .", "a man dances ."),   # double space: read_stsb normalises it
        ("4.000", "a dog runs .", "a cat runs ."),            # exactly 4: not a positive pair
        ("4.200", "a cat runs .", "a man is dancing ."),      # both sentences seen before
        ("0.500", "the sky .", "a dog runs ."),
        ("4.800", "same .", "same ."),
    ])
    sentences, pairs = stsb_probe(data, "dev")
    assert sentences == ["a man is dancing .", "a man dances .", "a dog runs .", "a cat runs .", "the sky .",
                         "same ."]
    assert pairs == [(0, 1), (3, 0), (5, 5)]


def test_stsb_probe_on_the_real_data(shared_data):
    path = shared_data / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv"
    unique, positives = {}, 0
    for line in path.read_text(encoding="utf-8").splitlines():
        cols = line.split("\t")
        a, b = " ".join(cols[5].split()), " ".join(cols[6].split())
        unique.setdefault(a)
        unique.setdefault(b)
        positives += float(cols[4]) > 4
    sentences, pairs = stsb_probe(shared_data, "dev")
    assert (len(sentences), len(pairs)) == (len(unique), positives) == (2909, 208)
    assert sentences == list(unique)


def test_probe_metrics_is_rank_metrics_plus_alignment_and_uniformity():
    emb = _randn(40, 16)
    pairs = [(0, 1), (2, 3), (7, 30), (5, 5)]
    m = probe_metrics(emb, pairs)
    i, j = zip(*pairs)
    assert m == pytest.approx({**rank_metrics(emb), "alignment": alignment(emb[list(i)], emb[list(j)]),
                               "uniformity": uniformity(emb)}, rel=1e-12)
    assert math.isnan(probe_metrics(emb, [])["alignment"])


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
    assert torch.autograd.gradcheck(lambda K: _MatrixEntropy.apply((K + K.T) / 2), (K,))
    z = _randn(6, 10, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_row_entropy, (z,))


def test_vne_penalty_gradients_with_repeated_and_zero_eigenvalues():
    # duplicated rows: repeated eigenvalues and zero ones; the function stays smooth, gradients match FD
    z = _randn(5, 8, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda z: _row_entropy(torch.cat([z, z, z[:2]])), (z,))
    # B > d: B - d zero eigenvalues
    z = _randn(12, 4, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(_row_entropy, (z,))

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
    expected = _MatrixEntropy.apply(zn @ zn.transpose(-1, -2) / 24)
    (expected_grad,) = torch.autograd.grad(expected.sum(), z)
    for kwargs in ({}, {"solver": "eigh"}):
        value = vne_penalty(z, **kwargs)
        (grad,) = torch.autograd.grad(value.sum(), z)
        assert torch.equal(value, expected) and torch.equal(grad, expected_grad)
    assert RR_SOLVERS[0] == "eigh"


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
    values = _row_entropy(together)
    assert values.shape == (2,)
    values.sum().backward()
    for v in range(2):
        alone = views[v].clone().requires_grad_()
        value = _row_entropy(alone)
        value.backward()
        assert float(values[v].detach()) == pytest.approx(float(value.detach()), abs=1e-12)
        torch.testing.assert_close(together.grad[v], alone.grad)
    with pytest.raises(ValueError, match="shape"):
        vne_penalty(torch.randn(5))
