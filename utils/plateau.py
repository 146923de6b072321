"""When a score has stopped improving: the count behind early stopping and the RR schedules' stall.

`Plateau` counts the evaluations since the best score; `EarlyStopping` ends a run once that count reaches
its patience (train.py --early_stopping_patience). Both keep their state in `state_dict`, so a resumed
run counts on where the saved one stopped.
"""

import math


class Plateau:
    """The best score so far and the evaluations since it; stalled after `patience` without a new best.
    A score that is not finite never counts as a new best."""

    def __init__(self, patience: int):
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}")
        self.patience = patience
        self.best, self.since_best = -math.inf, 0

    def update(self, score) -> bool:
        """Feed one evaluation's score; True when it is a new best."""
        if score is not None and math.isfinite(score) and score > self.best:
            self.best, self.since_best = score, 0
            return True
        self.since_best += 1
        return False

    @property
    def stalled(self) -> bool:
        return self.since_best >= self.patience

    def state_dict(self) -> dict:
        return {"best": self.best, "since_best": self.since_best}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.since_best = state["best"], state["since_best"]


class EarlyStopping:
    """Stop training once STS-B dev has not improved for `patience` evaluations (0: never).

    `update(step, score)` returns a line to print at the evaluation that ends the run (else None);
    `stopped_step`, `best_step` and `reason` say where and why, for the summary. `stop` ends the run for
    another reason. `resume()` lifts a stop (a resumed run given more steps trains on): the count starts
    again from that evaluation.
    """

    def __init__(self, patience: int = 0):
        self.patience = patience
        self.plateau = Plateau(patience) if patience > 0 else None
        self.best_step, self.stopped_step, self.reason = None, None, None

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def update(self, step: int, score) -> str | None:
        if self.plateau is None or self.stopped:
            return None
        if self.plateau.update(score):
            self.best_step = step
        if not self.plateau.stalled:
            return None
        return self.stop(step, f"STS-B dev has not improved for {self.patience} evaluations (best "
                               f"{self.plateau.best:.2f} at step {self.best_step})")

    def stop(self, step: int, reason: str) -> str:
        self.stopped_step, self.reason = step, reason
        return f"early stop: {reason}; the run ends at step {step}"

    def resume(self) -> None:
        self.stopped_step, self.reason = None, None
        if self.plateau is not None:
            self.plateau.since_best = 0

    def state_dict(self) -> dict:
        return {"plateau": self.plateau.state_dict() if self.plateau else None, "best_step": self.best_step,
                "stopped_step": self.stopped_step, "reason": self.reason}

    def load_state_dict(self, state: dict) -> None:
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])
        self.best_step, self.stopped_step, self.reason = state["best_step"], state["stopped_step"], state["reason"]
