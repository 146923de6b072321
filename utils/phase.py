"""The two phases of fine-tuning (Jung et al. 2024): Phase 1 from the start to the rank peak, Phase 2
from the peak to the best STS checkpoint.

`PeakDetector` finds the peak online, while training, from a stream of (step, rank) evaluations;
`offline_peak` finds it afterwards from the whole series (train.py's summary and analyze_rank.py use it).
"""

import math


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


class PeakCheckpoint:
    """Exports the model at the rank peak to `peak/` (train.py --save_peak_checkpoint).

    The detector learns that an evaluation was the running peak `window // 2` evaluations later, so the
    weights of the last few evaluations are kept on the CPU; the running peak's weights are exported to
    `peak.candidate/` each time the peak moves (on disk: a resumed run still has them), and that folder
    becomes `peak/` when the detector declares the peak.
    """

    def __init__(self, out_dir: str, keep: int):
        import os

        self.candidate_dir = os.path.join(out_dir, "peak.candidate")
        self.peak_dir = os.path.join(out_dir, "peak")
        self.keep = keep
        self.snapshots = {}  # step -> CPU state dict
        self._shadow = None
        self.note = None

    def remember(self, step: int, model) -> None:
        """Keep a CPU copy of `model`'s weights at this evaluation (and only the last `keep`)."""
        self.snapshots[step] = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        for old in sorted(self.snapshots)[: -self.keep]:
            del self.snapshots[old]

    def on_event(self, event: dict, model, tokenizer, max_seq_length: int) -> None:
        """Act on a `PeakDetector.update` result: export a new running peak, publish a declared one."""
        import copy
        import json
        import os

        from utils.checkpoint import atomic_dir, publish_dir

        step = event["moved_to"]
        if step is not None:
            if step not in self.snapshots:  # only after a resume right at the peak
                self.note = f"the weights of step {step} were not kept (the run resumed after it)"
            else:
                if self._shadow is None:
                    self._shadow = copy.deepcopy(model).cpu()
                self._shadow.load_state_dict(self.snapshots[step])
                with atomic_dir(self.candidate_dir) as tmp:
                    self._shadow.save_pretrained(tmp, tokenizer, max_seq_length)
                    with open(os.path.join(tmp, "peak_step.json"), "w") as f:
                        json.dump({"step": step}, f)
                self.note = None
        if event["declared"] and os.path.isdir(self.candidate_dir):
            publish_dir(self.candidate_dir, self.peak_dir)
