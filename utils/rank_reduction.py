"""Rank Reduction (Jung et al. 2024): a penalty on the von Neumann entropy of the batch embeddings.

loss = the method's loss + λ · VNE, the VNE of each view's (globally gathered) batch of training
embeddings, averaged over the two views. `RankReduction` wraps a method (utils/methods/) the way
sentence-transformers' regularising losses wrap another loss: it returns the method's output with the
total loss and the named terms the trainer logs (`infonce`: the method's own loss, `rr_vne`: the batch
VNE, measured at every step, also while λ is 0). Its flags, its λ schedule (utils/rr_schedule.py), its
solver (utils/matrix_entropy.py) and its state live here; the training loop sees none of them.
"""

import argparse
import math

import torch
from torch import nn

from utils.cli import number
from utils.distributed import gather_with_grad
from utils.matrix_entropy import SOLVERS as RR_SOLVERS
from utils.matrix_entropy import matrix_entropy
from utils.rank import unit_rows
from utils.rr_schedule import SCHEDULES, STALL_SCHEDULES, RRSchedule


def vne_penalty(z: torch.Tensor, gather: bool = False, solver: str = "eigh") -> torch.Tensor:
    """Differentiable VNE of the rows of z (B, d), any dtype: a 0-dim float32 tensor equal to
    utils.rank.vne(z); of each view of z (V, B, d): a (V,) tensor, in one (batched) solver call.

    Computed in float32 with autocast off, on the Gram matrix of the L2-normalised rows divided by the number
    of nonzero rows (trace 1). gather=True: the VNE of the batch all-gathered from every process with
    gradients (every process passes the same B), identical on every process, so DDP's gradient averaging
    yields one process's gradient on the global batch. solver: "eigh" (of the B x B matrix) or
    "quadrature" (of the smaller of the B x B and d x d matrices: the same nonzero spectrum).
    """
    if z.ndim not in (2, 3):
        raise ValueError(f"expected (B, d) or (V, B, d) embeddings, got shape {tuple(z.shape)}")
    if solver not in RR_SOLVERS:
        raise ValueError(f"solver must be one of {RR_SOLVERS}, got {solver!r}")
    if gather:
        z = gather_with_grad(z) if z.ndim == 2 else torch.stack([gather_with_grad(view) for view in z])
    with torch.autocast(device_type=z.device.type, enabled=False):
        return row_entropy(z.float(), solver)


def row_entropy(z: torch.Tensor, solver: str = "eigh") -> torch.Tensor:
    """vne_penalty's computation in z's own dtype (the tests gradcheck it in float64)."""
    z = unit_rows(z)
    nonzero_rows = (z.detach() != 0).any(dim=-1).sum(-1).clamp_min(1)
    small = solver == "quadrature" and z.shape[-2] > z.shape[-1]  # the d x d matrix where it is the smaller
    gram = z.transpose(-1, -2) @ z if small else z @ z.transpose(-1, -2)
    return matrix_entropy(gram / nonzero_rows[..., None, None], solver)


class RankReduction(nn.Module):
    """A method's loss + λ · the batch VNE. `begin_step` sets λ for the coming step from the schedule;
    `on_eval` feeds the schedule STS-B dev; `lr_factor` is the learning-rate multiplier of --rr_anneal_lr."""

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("Rank Reduction (docs/train.md)")
        g.add_argument("--rank-reduction", "--rank_reduction", dest="rank_reduction", type=number(float, 0),
                       default=0.0, help="RR weight λ: loss = the method's loss + λ · VNE of the batch; 0 = off")
        g.add_argument("--rr_on", default=None, choices=["mlp", "encoder"],
                       help="RR on the training embedding (mlp) or the encoder's pooled output (None: the method's)")
        g.add_argument("--rr_solver", default="eigh", choices=RR_SOLVERS,
                       help="the VNE from an eigendecomposition or from products and one inverse (quadrature)")
        g.add_argument("--rr_start", default="0", choices=["0", "peak"], help="RR from step 0 or from the rank peak")
        g.add_argument("--rr_schedule", default="constant", choices=SCHEDULES, help="λ over training")
        g.add_argument("--rr_decay_steps", type=number(int, 0), default=None,
                       help="steps of λ's decay to 0 (linear, cosine: from RR's start; plateau, anneal: from the stall)")
        g.add_argument("--rr_patience", type=number(int, 1), default=2,
                       help="plateau, target: evaluations without a better STS-B dev that make a stall")
        g.add_argument("--rr_watch", default="eval", choices=["eval", "every"],
                       help="plateau, target: the STS-B dev of the full evaluations, or of the rank ones too")
        g.add_argument("--rr_gain", type=number(float, 0, inclusive=False), default=0.2,
                       help="target: how fast λ is steered towards the batch VNE of the best evaluation")
        g.add_argument("--rr_anneal_lr", action="store_true",
                       help="plateau, target: the stall also decays the learning rate to 0, and the run then ends")

    @staticmethod
    def check_arguments(args) -> str | None:
        """A message naming the flag, for combinations the parser cannot check alone."""
        if args.rr_anneal_lr and (args.rr_schedule not in STALL_SCHEDULES or args.rank_reduction <= 0):
            return (f"argument --rr_anneal_lr: needs --rank_reduction > 0 and --rr_schedule plateau or target (the "
                    f"schedules that detect the stall), got --rank_reduction {args.rank_reduction} --rr_schedule "
                    f"{args.rr_schedule}")
        if args.rank_reduction > 0 and args.rr_decay_steps == 0 and args.rr_schedule in ("linear", "cosine"):
            return (f"argument --rr_decay_steps: 0 with --rr_schedule {args.rr_schedule} switches RR off at its "
                    "first step; give the decay's length, or --rank_reduction 0 for a run without RR")
        return None

    def __init__(self, method: nn.Module, args, total_steps: int):
        super().__init__()
        self.method = method
        self.on, self.solver, self.start, self.watch = args.rr_on, args.rr_solver, args.rr_start, args.rr_watch
        self.schedule = RRSchedule(args.rank_reduction, args.rr_schedule, total_steps, args.rr_decay_steps,
                                   args.rr_patience, args.rr_gain, args.rr_anneal_lr)
        self.register_buffer("lam", torch.zeros(()), persistent=False)  # this step's λ, read inside the graph
        self.weight = 0.0  # the same on the host, for the record

    def forward(self, model, inputs: dict, temp: float):
        out = self.method(model, inputs, temp)
        views = torch.stack((out.pooled if self.on == "encoder" else out.z).chunk(2))  # (2, B, H)
        vne = vne_penalty(views, gather=True, solver=self.solver).mean()  # both views, one solver call
        return out._replace(loss=out.loss + self.lam * vne, terms={"infonce": out.loss, "rr_vne": vne})

    def begin_step(self, step: int, peak_declared: bool, optimizer, scheduler) -> float:
        """Set λ for optimizer step `step` (0 until the declared peak under --rr_start peak) and return it;
        with --rr_anneal_lr, scale the step's learning rates (from the scheduler's own value each step, so
        a resumed run does not compound the factor)."""
        self.weight = self.schedule.weight(step, active=self.start == "0" or peak_declared)
        self.lam.fill_(self.weight)
        if self.schedule.anneal_lr:
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr * self.lr_factor(step)
        return self.weight

    def end_step(self, vne: torch.Tensor) -> None:
        """The target schedule steers by every step's VNE (the one value it makes the host wait for); a
        non-finite one (a step whose update was skipped) is not fed to it."""
        if self.schedule.reads_vne and math.isfinite(value := vne.item()):
            self.schedule.observe(value)

    def lr_factor(self, step: int) -> float:
        return self.schedule.lr_factor(step)

    def annealed(self, step: int) -> bool:
        """--rr_anneal_lr: the learning rate has reached 0, so no later step changes the weights."""
        return self.schedule.anneal_lr and self.schedule.decay_from is not None and self.lr_factor(step) == 0

    def on_eval(self, step: int, score, full: bool) -> str | None:
        """Feed one evaluation's STS-B dev (the rank evaluations' only with --rr_watch every); a line to print
        when this evaluation is the stall."""
        if not (full or self.watch == "every") or not self.schedule.on_eval(step, score):
            return None
        then = "is steered by the batch VNE" if self.schedule.kind == "target" else "decays to 0"
        if self.schedule.anneal_lr:
            then += " and the learning rate decays to 0"
        return f"RR schedule: STS-B dev has not improved for {self.schedule.patience} evaluations; lambda {then} from step {step}"

    @staticmethod
    def summary(args, rank_reduction=None) -> dict:
        """summary.json's `rank_reduction`: the settings, and the schedule's state (a run without RR: its start)."""
        schedule = rank_reduction.schedule if rank_reduction else RRSchedule(0.0, args.rr_schedule)
        return {"weight": args.rank_reduction, "on": args.rr_on, "start": args.rr_start, "schedule": args.rr_schedule,
                "schedule_state": schedule.state_dict()}
