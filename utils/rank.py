"""Representation-rank metrics of an embedding matrix, and the differentiable Rank Reduction penalty.

For Z, an (N, d) matrix of N sentence embeddings, with σ_i its singular values (descending):

- effective_rank: Roy & Vetterli (2007), also RankMe (Garrido et al., 2023). p_i = σ_i / Σσ,
  erank = exp(-Σ p_i log p_i), 0 log 0 = 0. On Z as given: no centring, no normalisation.
- vne: von Neumann entropy of the rows. Rows are L2-normalised (ẑ_i), C = ẐᵀẐ / N has trace 1, λ its
  eigenvalues, VNE = -Σ λ_i log λ_i. Zero rows normalise to zero, so trace(C) < 1: λ is renormalised
  to sum to 1, which makes VNE the one of the nonzero rows alone (and of [Z; Z] equal to that of Z).
  The paper's Rank Reduction (Jung et al., 2024) penalises the log of an eigenvalue-based effective rank,
  which is this quantity.
- eig_effective_rank: exp(VNE), between 1 and min(N, d).
- energy_rank: the smallest k with Σ_{i<=k} σ_i² >= τ Σ σ² (τ = 0.9: 90 % of the energy).
- alignment, uniformity: Wang & Isola (2020), on L2-normalised embeddings, probed on STS-B as SimCSE
  does (`stsb_probe`: all sentences of the split, positive pairs = gold score > 4).

Spectra come from the smaller Gram matrix (ZZᵀ when N < d, else ZᵀZ), whose eigenvalues are σ², in
float64 on the input's device (CUDA, else CPU). Not float32 on a GPU: a float32 Gram matrix has
eigenvalue noise ~1e-7 λ_max, i.e. σ noise ~3e-4 σ_max in every direction, which lifts the effective
rank of an exactly rank-1 3000 x 768 matrix to 1.19 (float64: 1.0000); a float64 768 x 768 eigh is
cheap on any GPU. Eigenvalues at or below λ_max · max(N, d) · eps64, the
rounding level of the Gram matrix, count as exact zeros (numpy's `matrix_rank` tolerance), so an exactly
rank-k matrix gets no spurious rank from rounding. An all-zero Z gets 0 for every metric (the only case
where eig_effective_rank != exp(vne)); a Z with NaN/inf gets NaN for every metric.
"""

import math

import torch

RANK_METRICS = ("effective_rank", "vne", "eig_effective_rank", "energy_rank")

# ----------------------------------------------------------------------------- spectra


def _matrix(Z) -> torch.Tensor:
    Z = torch.as_tensor(Z)
    if Z.ndim != 2 or Z.shape[0] == 0 or Z.shape[1] == 0:
        raise ValueError(f"expected an (N, d) embedding matrix with N, d >= 1, got shape {tuple(Z.shape)}")
    # float64 where the input lives; MPS has no float64, so it goes through the CPU
    device = Z.device if Z.device.type == "cuda" else torch.device("cpu")
    return Z.detach().to(device=device, dtype=torch.float64)


def unit_rows(Z: torch.Tensor) -> torch.Tensor:
    """Rows / their L2 norm; zero rows stay zero (and pass gradients through unscaled, not / eps)."""
    norm = Z.norm(dim=-1, keepdim=True)
    return Z / torch.where(norm > 0, norm, torch.ones_like(norm))


def _gram_eigenvalues(Z: torch.Tensor) -> torch.Tensor:
    """σ² of a float64 (N, d) matrix, descending, min(N, d) values, rounding-level ones set to 0."""
    n, d = Z.shape
    gram = Z @ Z.T if n < d else Z.T @ Z  # nonzero eigenvalues of ZZᵀ and ZᵀZ are the same σ²
    lam = torch.linalg.eigvalsh(gram).flip(0)
    tol = lam[0] * max(n, d) * torch.finfo(lam.dtype).eps
    return torch.where(lam > tol, lam, torch.zeros_like(lam))


def _entropy(p: torch.Tensor) -> float:
    return float(-torch.special.xlogy(p, p).sum())


def _erank_from(lam: torch.Tensor) -> float:
    sigma = lam.sqrt()
    total = sigma.sum()
    return 0.0 if total <= 0 else math.exp(_entropy(sigma / total))


def _vne_from(lam: torch.Tensor) -> float:
    total = lam.sum()
    return 0.0 if total <= 0 else _entropy(lam / total)


def _energy_from(lam: torch.Tensor, tau: float) -> int:
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    cum = lam.cumsum(0)
    total = cum[-1]
    if total <= 0:
        return 0
    # a relative slack of 1e-12 so that exact ties (k equal σ, τ = j/k) are not decided by rounding
    return int((cum < tau * total * (1 - 1e-12)).sum()) + 1


def _finite(Z: torch.Tensor) -> bool:
    return bool(torch.isfinite(Z).all())


# ----------------------------------------------------------------------------- metrics


def effective_rank(Z) -> float:
    """exp(entropy of σ / Σσ) of the (N, d) matrix Z as given (no centring or normalisation); 1..min(N, d)."""
    Z = _matrix(Z)
    return _erank_from(_gram_eigenvalues(Z)) if _finite(Z) else math.nan


def vne(Z) -> float:
    """Von Neumann entropy -Σ λ log λ of C = ẐᵀẐ / N (rows L2-normalised, λ renormalised to sum 1)."""
    Z = _matrix(Z)
    return _vne_from(_gram_eigenvalues(unit_rows(Z))) if _finite(Z) else math.nan


def eig_effective_rank(Z) -> float:
    """exp(vne(Z)): the eigenvalue-based effective rank of the row-normalised Z; 0 for an all-zero Z."""
    Z = _matrix(Z)
    if not _finite(Z):
        return math.nan
    lam = _gram_eigenvalues(unit_rows(Z))
    return math.exp(_vne_from(lam)) if lam.sum() > 0 else 0.0


def energy_rank(Z, tau: float = 0.9) -> int:
    """Smallest k with Σ_{i<=k} σ_i² >= tau · Σ σ² (σ descending), tau in (0, 1]; 0 for an all-zero Z."""
    Z = _matrix(Z)
    return _energy_from(_gram_eigenvalues(Z), tau) if _finite(Z) else math.nan


def rank_metrics(Z, tau: float = 0.9) -> dict:
    """{"effective_rank", "vne", "eig_effective_rank", "energy_rank"} of Z (floats; energy_rank an int).

    Two float64 eigendecompositions of a min(N, d)-square Gram matrix: one of Z (effective_rank,
    energy_rank), one of the row-normalised Z (vne, eig_effective_rank); the spectra differ unless
    every row already has the same norm.
    """
    Z = _matrix(Z)
    if not _finite(Z):
        _energy_from(torch.ones(1), tau)  # still reject a bad tau
        return dict.fromkeys(["effective_rank", "vne", "eig_effective_rank", "energy_rank"], math.nan)
    lam = _gram_eigenvalues(Z)
    lam_unit = _gram_eigenvalues(unit_rows(Z))
    entropy = _vne_from(lam_unit)
    return {
        "effective_rank": _erank_from(lam),
        "vne": entropy,
        "eig_effective_rank": math.exp(entropy) if lam_unit.sum() > 0 else 0.0,
        "energy_rank": _energy_from(lam, tau),
    }


def alignment(x, y, alpha: float = 2) -> float:
    """Wang & Isola's alignment: mean_i ||x̂_i - ŷ_i||^alpha over positive pairs (rows of x and y), L2-normalised."""
    x, y = _matrix(x), _matrix(y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return float((unit_rows(x) - unit_rows(y)).norm(dim=1).pow(alpha).mean())


def uniformity(x, t: float = 2, block: int = 1024) -> float:
    """Wang & Isola's uniformity: log mean_{i<j} exp(-t ||x̂_i - x̂_j||²), x̂ the L2-normalised rows.

    Same value as their `torch.pdist(x, p=2).pow(2).mul(-t).exp().mean().log()`, computed through
    ||x̂_i - x̂_j||² = 2 - 2 x̂_i·x̂_j (matrix products) and a log-sum-exp, in row blocks of `block`:
    O(block · N) memory, no underflow to log(0) for a large t. Needs N >= 2.
    """
    x = unit_rows(_matrix(x))
    n = x.shape[0]
    if n < 2:
        raise ValueError("uniformity needs at least 2 embeddings")
    parts = []
    for start in range(0, n - 1, block):
        rows = x[start : start + block]
        sq = (2 - 2 * rows @ x[start + 1 :].T).clamp_min(0)  # columns j > start
        # keep j > i: column c is j = start + 1 + c, row r is i = start + r
        r = torch.arange(rows.shape[0], device=x.device)[:, None]
        c = torch.arange(sq.shape[1], device=x.device)[None, :]
        parts.append(torch.logsumexp((-t * sq)[c >= r], dim=0))
    pairs = n * (n - 1) / 2
    return float(torch.logsumexp(torch.stack(parts), dim=0) - math.log(pairs))


# ----------------------------------------------------------------------------- a probe set


def probe_metrics(emb, pos_pairs, tau: float = 0.9, rows: int | None = None) -> dict:
    """rank_metrics + {"alignment" (over pos_pairs), "uniformity"} of one (N, d) matrix.

    emb: the probe set's embeddings (utils.scoring.probe_set order); the rank metrics and uniformity read its
    first `rows` rows (default all), alignment the pairs anywhere in it (NaN without positive pairs).
    """
    emb = _matrix(emb)
    probe = emb[:rows] if rows is not None else emb
    metrics = rank_metrics(probe, tau)
    if pos_pairs:
        i, j = torch.as_tensor(list(pos_pairs), device=emb.device).T
        metrics["alignment"] = alignment(emb[i], emb[j])
    else:
        metrics["alignment"] = math.nan
    metrics["uniformity"] = uniformity(probe) if probe.shape[0] >= 2 else math.nan
    return metrics
