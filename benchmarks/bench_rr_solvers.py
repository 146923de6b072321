"""Time Rank Reduction's penalty with each solver (train.py --rr_solver): forward + backward of
utils.rank_reduction.vne_penalty at several batch sizes and widths; on a GPU also where eigh runs.

    python -m benchmarks.bench_rr_solvers --json rr_solvers.json
    python -m benchmarks.bench_rr_solvers --batch_sizes 64 128 256 512 --dims 384 768 --views 1 --cpu

The penalty is taken of float32 random rows (V, B, d); V = 2 views in one solver call is what train.py's Rank
Reduction computes each step. Each time is the best of --repeats calls after an untimed one (which pays for
allocations). On a GPU also one eigendecomposition of an n x n batch Gram matrix, in float32 on the device
and through the host in float64 (copies included): the choice utils.matrix_entropy.HOST_EIGH_MAX makes.
Memory: benchmarks/timing.py.
"""

import math

import torch

from benchmarks.timing import MEMORY_HEADER, Meter, Report, device_of, memory_cells, parser
from utils.cli import number
from utils.matrix_entropy import SOLVERS
from utils.rank_reduction import vne_penalty


def parse_args(argv=None):
    p = parser(__doc__, model=False)
    p.add_argument("--batch_sizes", nargs="+", type=number(int, 2), default=[64, 256, 512],
                   help="rows B of each view (default 64 256 512)")
    p.add_argument("--dims", nargs="+", type=number(int, 2), default=[384, 768],
                   help="embedding widths d (default 384 768)")
    p.add_argument("--views", type=int, choices=[1, 2], default=2,
                   help="views per solver call, train.py's 2 by default")
    p.add_argument("--repeats", type=number(int, 1), default=5,
                   help="timed calls of each, the fastest counts (default 5)")
    return p.parse_args(argv)


def best_of(fn, repeats: int, device) -> dict:
    """Meter.result() of `repeats` calls of fn after an untimed one, and "ms": the fastest call's."""
    fn()
    meter, best = Meter(device), math.inf
    for _ in range(repeats):
        before = meter.seconds
        with meter:
            fn()
        best = min(best, meter.seconds - before)
    return {**meter.result(), "ms": 1000 * best}


def rows_of(views: int, batch: int, dim: int, generator, device) -> torch.Tensor:
    """Random float32 rows, (views, batch, dim), or (batch, dim) for one view."""
    return torch.randn((views, batch, dim) if views > 1 else (batch, dim), generator=generator).to(device)


def penalty(z: torch.Tensor, solver: str):
    """One forward + backward of the penalty of z."""
    def run():
        z.grad = None
        vne_penalty(z, solver=solver).sum().backward()
    return run


def eigh_on(K: torch.Tensor, where: str):
    """One eigh of K in float32 on its device, or on the host in float64 with the copies."""
    if where == "device":
        return lambda: torch.linalg.eigh(K)
    return lambda: [t.to(K.device) for t in torch.linalg.eigh(K.to("cpu", torch.float64))]


def main(argv=None):
    args = parse_args(argv)
    device = device_of(args)
    report = Report(args.json, device, views=args.views, repeats=args.repeats)
    generator = torch.Generator().manual_seed(args.seed)

    def measure(table: str, part: str, fn, **row) -> None:
        timed = report.attempt(part, lambda: best_of(fn, args.repeats, device))
        if timed is not None:
            report.data.setdefault(table, []).append({**row, **timed})
            print(f"{part}: {timed['ms']:.2f} ms", flush=True)

    for dim in args.dims:
        for batch in args.batch_sizes:
            z = rows_of(args.views, batch, dim, generator, device).requires_grad_()
            for solver in SOLVERS:
                measure("penalty", f"{solver} B={batch} d={dim}", penalty(z, solver),
                        solver=solver, batch=batch, dim=dim)
    if device.type == "cuda":  # where RR's eigh runs on a GPU
        for n in args.batch_sizes:
            z = rows_of(args.views, n, max(args.dims), generator, device)
            for where in ("device", "host_float64"):
                measure("eigh", f"eigh {where} n={n}", eigh_on(z @ z.transpose(-1, -2) / n, where), where=where, n=n)
    return report.finish(format_table(report.data))


def format_table(r: dict) -> str:
    lines = [f"{r['device']} | torch {r['torch']} | float32 | {r['views']} view(s) per call | best of {r['repeats']} "
             f"| {r['date']}", "",
             f"| B x d | solver | forward + backward, ms | {MEMORY_HEADER} |", "|---|---|---|---|---|"]
    lines += [f"| {t['batch']} x {t['dim']} | {t['solver']} | {t['ms']:.2f} | {memory_cells(t)} |"
              for t in r.get("penalty", [])]
    if r.get("eigh"):
        lines += ["", f"| eigh of each view's n x n Gram matrix | n | ms | {MEMORY_HEADER} |", "|---|---|---|---|---|"]
        lines += [f"| {t['where']} | {t['n']} | {t['ms']:.2f} | {memory_cells(t)} |" for t in r["eigh"]]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
