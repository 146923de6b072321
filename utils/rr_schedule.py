"""The weight λ of Rank Reduction over training: constant (the paper's), or a schedule that lowers it late.

With a constant λ the penalty keeps pushing the rank down after the score has peaked, and the score
follows it down (the late collapse). A schedule keeps RR's early push and takes it away later:

- constant: λ at every step.
- linear, cosine: λ decays to 0 over `decay_steps` steps from the step RR starts (default: to the last
  step), linearly or along a half cosine.
- plateau: λ until STS-B dev (the in-training evaluation every --eval_steps, the one that picks best/)
  has not improved for `patience` evaluations in a row, then decays linearly to 0 over `decay_steps`
  (0: off at once). The dev set already decides which checkpoint is kept; here it also decides when RR
  has done its job, as ReduceLROnPlateau does for a learning rate.

RR starts at step 0 or at the declared rank peak (train.py --rr_start); the schedule counts from that
step. All state is in `state_dict`, so a resumed run continues the same λ sequence.
"""

import math

SCHEDULES = ("constant", "linear", "cosine", "plateau")


class RRSchedule:
    def __init__(self, weight: float, kind: str = "constant", total_steps: int = 1, decay_steps: int | None = None,
                 patience: int = 2):
        if kind not in SCHEDULES:
            raise ValueError(f"unknown RR schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
        if weight < 0 or total_steps < 1 or patience < 1 or (decay_steps is not None and decay_steps < 0):
            raise ValueError("weight must be >= 0, total_steps and patience >= 1, decay_steps >= 0")
        self.base, self.kind, self.total_steps = weight, kind, total_steps
        self.decay_steps, self.patience = decay_steps, patience
        self.start_step = None  # the first step RR was on
        self.best, self.evals_since_best = -math.inf, 0
        self.decay_from = None  # plateau: the step the decay began

    def weight(self, step: int, active: bool = True) -> float:
        """λ for optimizer step `step` (0-based: the step about to be taken); 0 while RR is not `active`
        (before the rank peak under --rr_start peak). Call once per step, in order."""
        if not active or self.base == 0:
            return 0.0
        if self.start_step is None:
            self.start_step = step
        if self.kind == "constant":
            return self.base
        if self.kind == "plateau":
            if self.decay_from is None:
                return self.base
            return self.base * self._linear(step - self.decay_from, self.decay_steps or 0)
        span = self.decay_steps if self.decay_steps is not None else self.total_steps - self.start_step
        if self.kind == "linear":
            return self.base * self._linear(step - self.start_step, span)
        progress = min(1.0, (step - self.start_step) / span) if span > 0 else 1.0
        return self.base * 0.5 * (1 + math.cos(math.pi * progress))

    @staticmethod
    def _linear(elapsed: int, span: int) -> float:
        """1 at elapsed = 0, falling linearly to 0 at elapsed = span (0 at once when span is 0)."""
        return max(0.0, 1 - elapsed / span) if span > 0 else 0.0

    def on_eval(self, step: int, score: float) -> bool:
        """Feed the STS-B dev score of the evaluation after `step` steps; True when this evaluation starts the
        plateau schedule's decay. Evaluations before RR has started do not count."""
        if self.kind != "plateau" or self.decay_from is not None or self.start_step is None:
            return False
        if score is not None and math.isfinite(score) and score > self.best:
            self.best, self.evals_since_best = score, 0
            return False
        self.evals_since_best += 1
        if self.evals_since_best >= self.patience:
            self.decay_from = step
            return True
        return False

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("start_step", "best", "evals_since_best", "decay_from")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)
