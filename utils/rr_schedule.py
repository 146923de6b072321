"""The weight λ of Rank Reduction over training: constant (the paper's), or a schedule that lowers it late.

With a constant λ the penalty keeps pushing the rank down after the score has peaked, and the score
follows it down (the late collapse). A schedule keeps RR's early push and takes it away later:

- constant: λ at every step.
- linear, cosine: λ decays to 0 over `decay_steps` steps from the step RR starts (default: to the last
  step), linearly or along a half cosine.
- plateau: λ until STS-B dev (the in-training evaluation every --eval_steps, the one that picks best/)
  has not improved for `patience` evaluations in a row, then decays linearly to 0 over `decay_steps`
  (0: off at once). The dev set already decides which checkpoint is kept; here it also decides when RR
  has done its job, as ReduceLROnPlateau does for a learning rate. With train.py --rr_watch every, the
  STS-B dev of every rank evaluation counts too (dense early in training, where RR's best comes).
- target: as plateau until STS-B dev stalls, then λ is steered so that the batch VNE (the quantity RR
  penalises, an exponential moving average of it) stays where it was at the best evaluation: each step
  λ += gain · λ₀ · (VNE − target), kept in [0, 2 λ₀]: switching RR off lets the rank climb back, a
  constant λ keeps pushing it down past the best; the controller holds the rank of the best checkpoint.

With `anneal_lr` (train.py --rr_anneal_lr) the stall of plateau or target also starts the learning rate's
linear decay to 0 over `decay_steps` (0: at once), as a multiplier on the learning-rate schedule, for
where the score falls after RR's early best whatever λ does next (docs/study/README.md).

RR starts at step 0 or at the declared rank peak (train.py --rr_start); the schedule counts from that
step. All state is in `state_dict`, so a resumed run continues the same λ sequence.
"""

import math

from utils.plateau import Plateau

SCHEDULES = ("constant", "linear", "cosine", "plateau", "target")
STALL_SCHEDULES = ("plateau", "target")  # the ones that read STS-B dev and detect its stall
EMA = 0.9  # target: the moving average of the batch VNE, over ~10 steps (one batch's VNE is noisy)


class RRSchedule:
    def __init__(self, weight: float, kind: str = "constant", total_steps: int = 1, decay_steps: int | None = None,
                 patience: int = 2, gain: float = 0.2, anneal_lr: bool = False):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown RR schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if weight < 0 or total_steps < 1 or patience < 1 or (decay_steps is not None and decay_steps < 0):
            raise ValueError("weight must be >= 0, total_steps and patience >= 1, decay_steps >= 0")
        if anneal_lr and kind not in STALL_SCHEDULES:
            raise ValueError(f"anneal_lr needs a schedule that detects the stall (plateau or target), not {kind!r}")
        self.base, self.kind, self.total_steps = weight, kind, total_steps
        self.decay_steps, self.patience, self.gain, self.anneal_lr = decay_steps, patience, gain, anneal_lr
        self.start_step = None  # the first step RR was on
        self.plateau = Plateau(patience)  # STS-B dev since RR started: its stall starts the decay
        self.decay_from = None  # plateau / target: the step STS-B dev stalled at
        self.vne_ema, self.target, self.lam = None, None, weight  # target: the controller's state

    def weight(self, step: int, active: bool = True) -> float:
        """λ for optimizer step `step` (0-based: the step about to be taken); 0 while RR is not `active`
        (before the rank peak under --rr_start peak). Call once per step, in order."""
        if not active or self.base == 0:
            return 0.0
        if self.start_step is None:
            self.start_step = step
        if self.kind == "constant":
            return self.base
        if self.kind == "target":
            return self.base if self.decay_from is None else self.lam
        if self.kind == "plateau":
            if self.decay_from is None:
                return self.base
            return self.base * self._linear(step - self.decay_from, self.decay_steps or 0)
        span = self.decay_steps if self.decay_steps is not None else self.total_steps - self.start_step
        if self.kind == "linear":
            return self.base * self._linear(step - self.start_step, span)
        progress = min(1.0, (step - self.start_step) / span) if span > 0 else 1.0
        return self.base * 0.5 * (1 + math.cos(math.pi * progress))

    def lr_factor(self, step: int) -> float:
        """The multiplier on the learning rate of optimizer step `step`: 1 until STS-B dev stalls, then (with
        `anneal_lr`) falling linearly to 0 over `decay_steps` (0: at once)."""
        if not self.anneal_lr or self.decay_from is None:
            return 1.0
        return self._linear(step - self.decay_from, self.decay_steps or 0)

    @staticmethod
    def _linear(elapsed: int, span: int) -> float:
        """1 at elapsed = 0, falling linearly to 0 at elapsed = span (0 at once when span is 0)."""
        return max(0.0, 1 - elapsed / span) if span > 0 else 0.0

    @property
    def reads_vne(self) -> bool:
        """Whether `observe` needs each step's batch VNE (the target schedule's controller)."""
        return self.kind == "target" and self.base > 0

    def observe(self, vne: float) -> None:
        """Feed the batch VNE of the step just taken (target schedule): the moving average, and once STS-B dev
        has stalled, the controller's step towards the VNE of the best evaluation."""
        self.vne_ema = vne if self.vne_ema is None else EMA * self.vne_ema + (1 - EMA) * vne
        if self.decay_from is not None and self.target is not None:
            self.lam = min(2 * self.base, max(0.0, self.lam + self.gain * self.base * (self.vne_ema - self.target)))

    def on_eval(self, step: int, score: float) -> bool:
        """Feed the STS-B dev score of the evaluation after `step` steps; True when this evaluation is the
        stall that starts the plateau schedule's decay or the target schedule's controller. Evaluations
        before RR has started do not count."""
        if self.kind not in STALL_SCHEDULES or self.decay_from is not None or self.start_step is None:
            return False
        if self.plateau.update(score):
            self.target = self.vne_ema
            return False
        if self.plateau.stalled:
            self.decay_from = step
            return True
        return False

    def state_dict(self) -> dict:
        return {**{k: getattr(self, k) for k in ("start_step", "decay_from", "vne_ema", "target", "lam")},
                "plateau": self.plateau.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        state = dict(state)
        self.plateau.load_state_dict(state.pop("plateau"))
        for k, v in state.items():
            setattr(self, k, v)
