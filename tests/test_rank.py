"""utils/rank.py: rank metrics against numpy/scipy references and known spectra, alignment/uniformity
against their formulas written out, and the STS-B probe set (utils/scoring.py)."""

import math

import numpy as np
import pytest
import torch
from scipy.special import entr

from utils.rank import alignment, eig_effective_rank, effective_rank, energy_rank, probe_metrics, rank_metrics, uniformity, vne
from utils.scoring import stsb_probe


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
