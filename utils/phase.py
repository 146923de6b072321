"""The two phases of fine-tuning (Jung et al. 2024): Phase 1 from the start to the rank peak, Phase 2
from the peak to the best STS-B dev checkpoint.

One definition of the phases (`segment`), over a run's evaluations in step order: Phase 1 runs from the
first evaluation to the rank peak, the evaluation with the highest rank (the earliest on ties); Phase 2
from the peak to the best checkpoint, the evaluation best/ was saved at. Both ends belong to the phase. A
peak at the first evaluation means no Phase 1, a peak at the last one no Phase 2 yet, a best checkpoint at
or before the peak no Phase 2; each is said so, nothing is invented. train.py's summary, analyze_rank.py's
report and its findings all read the phases of the training log this way.

While training, `RankTracker` decides which steps are evaluated and `PeakDetector` finds the peak online,
from the stream of evaluations (--rr_start peak and the `phase` of each record read it).
"""

import math

from utils.cli import number
from utils.rank import RANK_METRICS


class PeakDetector:
    """Online rank-peak detection: the running maximum of a median-smoothed series, confirmed by a fall.

    Each value is smoothed with the median of its evaluation and its neighbours (`window` evaluations,
    odd), so a one-evaluation spike or dip is ignored; the smoothed value of an evaluation is therefore
    known `window // 2` evaluations later. The peak is declared once the smoothed metric has stayed below
    (1 - margin) x its running maximum for `patience` consecutive evaluations; a value back within the
    margin resets the count and a new maximum moves the peak. `state_dict` / `load_state_dict` let
    accelerate checkpoint it.
    """

    def __init__(self, patience: int = 3, margin: float = 0.01, window: int = 3):
        if patience < 1 or not 0 <= margin < 1 or window < 1 or window % 2 == 0:
            raise ValueError("patience must be >= 1, margin in [0, 1), window odd and >= 1")
        self.patience, self.margin, self.window = patience, margin, window
        self.recent = []  # the last `window` (step, value) pairs
        self.peak_step, self.peak_value, self.peak_raw = None, -math.inf, -math.inf
        self.below, self.declared_step = 0, None

    @property
    def declared(self) -> bool:
        return self.declared_step is not None

    @property
    def phase(self) -> int:
        """1 until the peak is declared, 2 from then on."""
        return 2 if self.declared else 1

    def update(self, step: int, value: float) -> dict:
        """Feed one evaluation. Returns {"moved_to": the step that became the running peak, or None;
        "declared": True exactly when this evaluation confirms the peak}."""
        event = {"moved_to": None, "declared": False}
        if self.declared or value is None or not math.isfinite(value):
            return event
        self.recent = (self.recent + [(step, value)])[-self.window:]
        half = self.window // 2
        if len(self.recent) <= half:
            return event  # the first evaluation's neighbours are not in yet
        # the evaluation `half` back now has all the neighbours it will get (fewer at the very start)
        center = len(self.recent) - 1 - half
        smoothed = sorted(v for _, v in self.recent)
        smoothed = (smoothed[(len(smoothed) - 1) // 2] + smoothed[len(smoothed) // 2]) / 2
        center_step, center_value = self.recent[center]
        if (smoothed, center_value) > (self.peak_value, self.peak_raw):  # equal medians: the higher raw value
            self.peak_step, self.peak_value, self.peak_raw, self.below = center_step, smoothed, center_value, 0
            event["moved_to"] = self.peak_step
        elif smoothed < (1 - self.margin) * self.peak_value:
            self.below += 1
        else:
            self.below = 0
        if self.below >= self.patience:
            self.declared_step = step
            event["declared"] = True
        return event

    def state_dict(self) -> dict:
        return {k: (list(v) if k == "recent" else v) for k, v in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
        self.recent = [tuple(x) for x in self.recent]


def offline_peak(steps, values) -> dict:
    """The evaluation with the highest value, the earliest on ties, and what it means for the phases.

    Returns {"step", "value", "index", "where"}: "where" is "start" (the rank only fell: no Phase 1),
    "end" (still rising at the last evaluation: no Phase 2 yet), "interior" (a real peak), or None
    fields when there is no finite value.
    """
    finite = [(v, -i) for i, v in enumerate(values) if v is not None and math.isfinite(v)]
    if not finite:
        return {"step": None, "value": None, "index": None, "where": None}
    value, neg_index = max(finite)
    index = -neg_index
    where = "start" if index == 0 else "end" if index == len(values) - 1 else "interior"
    return {"step": steps[index], "value": value, "index": index, "where": where}


def describe_peak(peak: dict, metric: str) -> str:
    """One plain sentence for logs and reports."""
    if peak["where"] is None:
        return f"no {metric} was measured"
    if peak["where"] == "start":
        return f"no rank peak: {metric} was highest at the first evaluation (step {peak['step']}), so there is no Phase 1"
    if peak["where"] == "end":
        return (f"no rank peak yet: {metric} was still highest at the last evaluation (step {peak['step']}), "
                "so Phase 2 has not begun")
    return f"rank peak at step {peak['step']} ({metric} = {peak['value']:.4g})"


def segment(steps, ranks, best_step=None) -> dict:
    """Phase 1 and Phase 2 of one run's evaluations (steps ascending, ranks the phase metric at each).

    Returns {"peak": offline_peak + "description", "best_step", "phase1", "phase2"}: a phase is
    {"start_step", "end_step", "indices"} (into the series, both ends included) or {"absent": the reason}.
    best_step: the step of the best checkpoint (best/), one of `steps`; None or absent: no Phase 2.
    """
    peak = offline_peak(steps, ranks)
    out = {"peak": peak, "best_step": best_step}
    p = peak["index"]
    if p is None:
        out["phase1"] = out["phase2"] = {"absent": "no rank was measured"}
        return out

    def phase(i, j):
        return {"start_step": steps[i], "end_step": steps[j], "indices": list(range(i, j + 1))}

    out["phase1"] = phase(0, p) if p > 0 else {
        "absent": f"no Phase 1: the rank was highest at the first evaluation (step {steps[0]})"}
    b = steps.index(best_step) if best_step in steps else None
    if peak["where"] == "end":
        out["phase2"] = {"absent": f"no Phase 2 yet: the rank was still highest at the last evaluation (step {steps[p]})"}
    elif b is None:
        out["phase2"] = {"absent": "no Phase 2: no best checkpoint"}
    elif b <= p:
        out["phase2"] = {"absent": f"no Phase 2: the best checkpoint (step {best_step}) "
                                   f"{'is' if b == p else 'comes before'} the rank peak (step {steps[p]})"}
    else:
        out["phase2"] = phase(p, b)
    return out


class RankTracker:
    """Which steps are evaluated, and the online rank peak.

    Every --eval_steps steps (and at the first and last) a full evaluation; every --rank_eval_steps steps up to
    --rank_eval_until a rank evaluation (the probe set and STS-B dev only: the peak comes early). Every
    evaluation's --phase_metric feeds the PeakDetector; its state is checkpointed with the run.
    """

    @staticmethod
    def add_arguments(parser) -> None:
        g = parser.add_argument_group("representation rank and phases (docs/train.md)")
        g.add_argument("--rank_eval_steps", type=number(int, 1), default=10,
                       help="rank metrics of the probe set every N steps until --rank_eval_until")
        g.add_argument("--rank_eval_until", type=number(int, 0), default=500,
                       help="last step of the dense rank evaluations (0: rank metrics only with --eval_steps)")
        g.add_argument("--probe_split", default="dev", choices=["train", "dev", "test"],
                       help="the STS-B split whose sentences form the probe set")
        g.add_argument("--energy_tau", type=number(float, 0, inclusive=False), default=0.9,
                       help="energy_rank: the share of the squared singular values kept")
        g.add_argument("--phase_metric", default="effective_rank", choices=RANK_METRICS,
                       help="the rank metric whose peak splits Phase 1 from Phase 2")
        g.add_argument("--phase_patience", type=number(int, 1), default=3,
                       help="evaluations below the running peak that declare it")
        g.add_argument("--phase_margin", type=number(float, 0), default=0.01,
                       help="relative drop below the running peak that counts as below it")
        g.add_argument("--save_peak_checkpoint", action="store_true", help="also export the model at the rank peak")

    @staticmethod
    def check_arguments(args) -> str | None:
        if args.energy_tau > 1:
            return f"argument --energy_tau: must be <= 1, got {args.energy_tau}"
        if args.phase_margin >= 1:
            return f"argument --phase_margin: must be < 1, got {args.phase_margin}"
        return None

    def __init__(self, args, total_steps: int):
        self.metric, self.total_steps, self.eval_steps = args.phase_metric, total_steps, args.eval_steps
        self.rank_steps, self.rank_until = args.rank_eval_steps, args.rank_eval_until
        self.detector = PeakDetector(args.phase_patience, args.phase_margin)

    def due(self, step: int) -> str | None:
        """"eval" (full), "rank" or None: the evaluation of the model after `step` steps."""
        if step == 0 or step % self.eval_steps == 0 or step == self.total_steps:
            return "eval"
        if step <= self.rank_until and step % self.rank_steps == 0:
            return "rank"
        return None

    def update(self, step: int, metrics: dict) -> dict:
        return self.detector.update(step, metrics[self.metric])

    def note(self, step: int, event: dict) -> str | None:
        """The line to print when `event` (of `update`) declares the peak."""
        if not event["declared"]:
            return None
        return (f"rank peak declared at step {step}: {self.metric} peaked at step {self.detector.peak_step} "
                f"({self.detector.peak_value:.4g}); Phase 2 from here on")

    @property
    def declared(self) -> bool:
        return self.detector.declared

    @property
    def phase(self) -> int:
        return self.detector.phase

    def state_dict(self) -> dict:
        return self.detector.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.detector.load_state_dict(state)
