"""Von Neumann entropy S(K) = -tr(K log K) of trace-one PSD matrices, and its gradient: two solvers.

Rank Reduction's penalty (utils.rank_reduction.vne_penalty) is S of the batch Gram matrix.

- "eigh": an eigendecomposition, the reference. On a GPU it makes the host wait on every call and cannot
  be captured in a CUDA graph (a small matrix is decomposed on the host: cuSOLVER's launch costs more).
- "quadrature": matrix products and one batched inverse, nothing that waits for the host, which is what
  asynchronous execution and graph capture (torch.compile fullgraph, CUDA graphs) need.

Quadrature method. With s = e^u, log x = (x - 1) ∫ s / ((1 + s)(x + s)) du over u in R (Higham, Functions
of Matrices, ch. 11). The trapezoid rule on N equally spaced nodes (step h) gives, for a matrix,

    log K ≈ (K - I) Q,    Q = Σ_k c_k (K + s_k I)^-1,    c_k = w_k s_k / (1 + s_k),

with all N shifted matrices inverted in one batched call (torch.linalg.inv_ex without its error check: no
host synchronisation). Every term of Q is positive definite and (K - I) is applied once, so nothing
cancels in float32. The integrand is analytic in the strip |Im u| < π, so the trapezoid error falls like
exp(-2π²/h); beyond each end it decays geometrically, so that tail is folded into the end nodes' weights
(w = h / (1 - e^-h) instead of h/2). S = -Σ_ij K_ij (log K)_ij, and dS/dK = -(log K + I).

Parameters: N = 28 nodes, u from log(eps) to 8, eps = float32's machine epsilon (the floor the eigh
solver's backward clamps eigenvalues to). The right end leaves ~e^-16 of the folded tail; the left end
plays the part of eps·I: a zero eigenvalue gets a finite log and adds nothing to S, an eigenvalue x >> eps
is off by ~eps²/x in x log x; h = 0.89 puts the discretisation error (~2e-10) below float32 rounding.
LU (inv_ex) rather than Cholesky: a shifted matrix that rounding leaves slightly indefinite still inverts
instead of turning into NaN. tests/test_matrix_entropy.py checks both solvers against the exact value
on isotropic, anisotropic, collapsed, duplicated-row and zero-row batches; docs/speed.md has their cost.
"""

import math

import torch

SOLVERS = ("eigh", "quadrature")

QUADRATURE_NODES = 28
QUADRATURE_EPS = float(torch.finfo(torch.float32).eps)  # 1.19e-7: the smallest shift
QUADRATURE_UMAX = 8.0  # the largest shift is e^8 ≈ 2981


def quadrature_nodes(nodes: int = QUADRATURE_NODES, eps: float = QUADRATURE_EPS, u_max: float = QUADRATURE_UMAX,
                     dtype=torch.float64, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(shifts s_k, weights c_k), both (nodes,), with log x ≈ (x - 1) Σ_k c_k / (x + s_k) for x in [0, 1].

    Built on `device` without host data, so a CUDA graph can capture it.
    """
    if nodes < 2 or not 0 < eps < 1:
        raise ValueError(f"need nodes >= 2 and 0 < eps < 1, got nodes={nodes}, eps={eps}")
    u_min = math.log(eps)
    h = (u_max - u_min) / (nodes - 1)
    k = torch.arange(nodes, dtype=dtype, device=device)
    s = (u_min + h * k).exp()
    # the geometric tail beyond each end, Σ_j≥1 e^-jh, folded into the end node's weight
    end = (k == 0) | (k == nodes - 1)
    w = torch.where(end, h / -math.expm1(-h), h)
    return s, w * s / (1 + s)


def matrix_log(K: torch.Tensor, nodes: int = QUADRATURE_NODES, eps: float = QUADRATURE_EPS,
               u_max: float = QUADRATURE_UMAX) -> torch.Tensor:
    """log K of symmetric PSD matrices K (..., n, n) with eigenvalues in [0, 1] (trace one), symmetric,
    same shape; zero eigenvalues map to ≈ log(eps) - 1. One batched inverse of (..., nodes, n, n)."""
    s, c = quadrature_nodes(nodes, eps, u_max, K.dtype, K.device)
    eye = torch.eye(K.shape[-1], dtype=K.dtype, device=K.device)
    shifted = K.unsqueeze(-3) + s[:, None, None] * eye  # (..., nodes, n, n)
    resolvents, _ = torch.linalg.inv_ex(shifted, check_errors=False)  # no host sync
    Q = torch.einsum("k,...kij->...ij", c, resolvents)
    log_k = (K - eye) @ Q
    # (K - I) and Q commute, but rounding leaves their product not quite symmetric
    return (log_k + log_k.transpose(-1, -2)) / 2


# A batch's Gram matrix is small (B x B): on a GPU the host's LAPACK decomposes it faster than cuSOLVER,
# copies included. Larger matrices (all-gathered batches of many GPUs) stay on the device.
HOST_EIGH_MAX = 128


def _small_eigh(K: torch.Tensor):
    """torch.linalg.eigh(K) of (..., n, n), on the host in float64 for a small CUDA matrix, else in place."""
    if K.device.type == "cuda" and K.shape[-1] <= HOST_EIGH_MAX:
        lam, U = torch.linalg.eigh(K.detach().to("cpu", torch.float64))
        return lam.to(K.device, K.dtype), U.to(K.device, K.dtype)
    return torch.linalg.eigh(K)


class _EighEntropy(torch.autograd.Function):
    """S(K) = -tr(K log K) = -Σ λ log λ of symmetric PSD matrices K (..., n, n) -> (...), 0 log 0 = 0.

    Backward: the derivative of a spectral function, dS/dK = U diag(-(log λ_c + 1)) Uᵀ with λ_c = λ
    clamped to the dtype's eps. Unlike eigh's own backward it has no 1 / (λ_i - λ_j) terms, so repeated
    eigenvalues (duplicated rows) and zero ones (B > d, zero rows) give finite gradients.
    """

    @staticmethod
    def forward(ctx, K):
        lam, U = _small_eigh(K)
        ctx.save_for_backward(lam, U)
        lam = lam.clamp_min(0)  # rounding can make zero eigenvalues slightly negative
        return -torch.special.xlogy(lam, lam).sum(-1)

    @staticmethod
    def backward(ctx, grad):
        lam, U = ctx.saved_tensors
        lam_c = lam.clamp_min(torch.finfo(lam.dtype).eps)
        return grad[..., None, None] * (U * -(lam_c.log() + 1)[..., None, :]) @ U.transpose(-1, -2)


class _QuadratureEntropy(torch.autograd.Function):
    """S(K) = -tr(K log K) of symmetric PSD trace-one K (..., n, n) -> (...), log K from `matrix_log`.

    Backward: dS/dK = -(log K + I), the derivative of the exact S evaluated with the same log K (as the
    eigh solver does); zero eigenvalues get about -(log(eps) + 1), as eigh's clamp to eps gives them, and
    drop out of the gradient with respect to a Gram matrix's factor anyway (they span its null space).
    """

    @staticmethod
    def forward(ctx, K, nodes, eps, u_max):
        log_k = matrix_log(K, nodes, eps, u_max)
        ctx.save_for_backward(log_k)
        return -(K * log_k).sum((-2, -1))  # tr(K log K) for symmetric K and log K

    @staticmethod
    def backward(ctx, grad):
        (log_k,) = ctx.saved_tensors
        eye = torch.eye(log_k.shape[-1], dtype=log_k.dtype, device=log_k.device)
        return -grad[..., None, None] * (log_k + eye), None, None, None


def matrix_entropy(K: torch.Tensor, solver: str = "quadrature", nodes: int = QUADRATURE_NODES,
                   eps: float = QUADRATURE_EPS, u_max: float = QUADRATURE_UMAX) -> torch.Tensor:
    """Differentiable von Neumann entropy -tr(K log K) of symmetric PSD trace-one K (..., n, n) -> (...).

    solver: "quadrature" (products and one batched inverse; nodes, eps, u_max set the quadrature) or "eigh"
    (an eigendecomposition, the reference). Computed in K's dtype.
    """
    if solver == "quadrature":
        return _QuadratureEntropy.apply(K, nodes, eps, u_max)
    if solver == "eigh":
        return _EighEntropy.apply(K)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")
