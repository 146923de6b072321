"""Von Neumann entropy S(K) = -tr(K log K) of trace-one PSD matrices from linear solves alone (no eigh).

Rank Reduction's penalty (utils.rank.vne_penalty) is S of the batch Gram matrix. Its "eigh" solver
makes the host wait on every call and cannot be captured in a CUDA graph; the "quadrature" solver here
needs only matrix products and one batched inverse, nothing that waits for the host, which is what
asynchronous execution and graph capture need.

Method. With s = e^u, log x = ∫ e^u [(1 + e^u)^-1 - (x + e^u)^-1] du over u in R (Higham, Functions
of Matrices, ch. 11), i.e. log x = (x - 1) ∫ s / ((1 + s)(x + s)) du. The trapezoid rule on N equally
spaced nodes u_0 < ... < u_{N-1} (step h) gives, for a matrix,

    log K ≈ (K - I) Q,    Q = Σ_k c_k (K + s_k I)^-1,    c_k = w_k s_k / (1 + s_k),

with all N shifted matrices inverted in one batched call (torch.linalg.inv_ex, no error check, so no
host synchronisation). Every term of Q is positive definite and the factor (K - I) is applied once,
so nothing cancels in float32 (differences of the two resolvents would). The integrand is analytic
in the strip |Im u| < π, so the trapezoid error falls like exp(-2π²/h); beyond each end it decays
geometrically (like e^u on the left while s << x, like e^-u on the right), so that tail is folded into
the end nodes: w_0 = w_{N-1} = h / (1 - e^-h), w_k = h otherwise, instead of the h/2 of a truncated rule.
S = -Σ_ij K_ij (log K)_ij, and dS/dK = -(log K + I) with the same log K.

Parameters: N = 28 nodes, u from log(eps) to 8 (shifts 1.2e-7 ... 3.0e3, h = 0.89), eps = 1.19e-7
(float32's machine epsilon, the floor that the eigh solver's backward clamps float32 eigenvalues to),
for float32 and float64 alike. Why:
- The right end: the folded tail is exact to O(e^-2u_max); u_max = 8 leaves ~2e-8 in log x.
- The left end plays the part of eps·I: a zero eigenvalue gets the finite log ≈ log(eps) - 1.1 and
  adds nothing to S (0 · finite); an eigenvalue x >> eps is off by ~eps²/x in x log x, one near eps by
  at most ~0.2 eps. Zero eigenvalues of a float32 Gram matrix come out as ±2e-8 (rounding), so every
  shifted matrix stays well conditioned enough to invert (smallest eigenvalue >= eps - 2e-8).
- h = 0.89: the discretisation error exp(-2π²/h) ~ 2e-10 is below float32 rounding.
  On the scalar function, |x log x - x (x - 1) q(x)| <= 2.7e-8 for every x in [eps, 1], and the relative
  error of log x is <= 6e-8 for x >= 1e-3.
Measured against the eigh solver (tests/test_matrix_entropy.py: isotropic, anisotropic, collapsed
(rank 8), duplicated-row and zero-row batches, B = 64 ... 512, d = 32 ... 768, d < B and d > B):
float32 |ΔS| <= 2.3e-5, which is eigh's own float32 error (the quadrature is within 1.1e-5 of the exact
float64 value), float64 |ΔS| <= 1.6e-7; gradient cosines >= 0.99999998 in both dtypes.
vne_penalty passes the smaller of the B x B and d x d Gram matrices (same nonzero spectrum): fewer
zero eigenvalues, a cheaper inverse.

Cost: N inverses of n x n matrices, ~2.7 N n³ flops, memory 2 N n² values, against eigh's ~9 n³ in a
sequential algorithm that waits on the host. On a CPU that makes it 3-6x slower than eigh (1 thread,
d = 384: 4.8 vs 1.8 ms at B = 64, 174 vs 44 ms at B = 512, forward + backward); it is meant for GPUs.
`time_solvers` measures both. LU (inv_ex) rather than Cholesky: a shifted matrix that rounding leaves
slightly indefinite still inverts instead of turning silently into NaN, for ~15 % more time on a CPU.

Not used: Chebyshev approximation of x log x (loses accuracy on anisotropic spectra, one eigenvalue
near 1 and the rest near 0, unless the top eigenvalue is deflated); Rényi-2 entropy -log tr K²
(a different quantity; `renyi2_entropy` is here for comparison).
"""

import math
import time

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

    solver: "quadrature" (this module: products and one batched inverse; nodes, eps, u_max set the
    quadrature) or "eigh" (utils.rank's eigendecomposition, the reference). Computed in K's dtype.
    """
    if solver == "quadrature":
        return _QuadratureEntropy.apply(K, nodes, eps, u_max)
    if solver == "eigh":
        from utils.rank import _MatrixEntropy

        return _MatrixEntropy.apply(K)
    raise ValueError(f"solver must be one of {SOLVERS}, got {solver!r}")


def renyi2_entropy(K: torch.Tensor) -> torch.Tensor:
    """Rényi-2 entropy -log tr(K²) = -log ||K||_F² of trace-one K (..., n, n) -> (...): a lower bound on
    the von Neumann entropy, not equal to it (for comparison; no solver needed)."""
    return -K.square().sum((-2, -1)).log()


def time_solvers(sizes=(64, 512), dims: int = 384, repeats: int = 5, device="cpu") -> dict:
    """{solver: {B: ms}}: ms per forward + backward of utils.rank.vne_penalty on a float32 (B, dims)
    batch of random rows, for each solver in utils.rank.RR_SOLVERS; best of `repeats` after a warm-up."""
    from utils.rank import RR_SOLVERS, vne_penalty

    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)
    out = {solver: {} for solver in RR_SOLVERS}
    for batch in sizes:
        z = torch.randn(batch, dims, generator=generator).to(device).requires_grad_()
        for solver in RR_SOLVERS:
            best = math.inf
            for step in range(repeats + 1):
                _sync(device)
                start = time.perf_counter()
                vne_penalty(z, solver=solver).backward()
                _sync(device)
                if step:  # the first call pays for allocations
                    best = min(best, time.perf_counter() - start)
            out[solver][batch] = 1000 * best
    return out


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
