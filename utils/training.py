"""The mechanics of train.py's loop: the optimizer, one training step, the running window of its records
and the loop's own state (what a resumed run needs beyond accelerate's model, optimizer, schedule and RNG).
"""

import math

import torch

# the terms TrainStep returns, in order: the total loss, the method's own loss (the RR wrapper's
# "infonce"; the loss itself without RR), the batch VNE (0 without RR) and the gradient norm before clipping
TERMS = ("loss", "infonce", "rr_vne", "grad_norm")


def make_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights, over the parameters that train (not frozen
    copies or momentum encoders); torch's fused kernel on CUDA and CPU (one pass over the parameters), the
    default elsewhere."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in trained if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in trained if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.device(device).type in ("cuda", "cpu") or None)


class TrainStep:
    """One optimizer step of the objective on one batch's two views.

    model: a (prepared) utils.methods.TrainingModel, whose objective is a method or RankReduction(method).
    Returns (terms, finite): terms = the detached TERMS, the first three averaged over processes, left on the
    device; finite = whether the loss and the gradient norm were finite. When not, no update is made: a
    finite loss can still overflow the gradients, and one inf would put inf into Adam's second moments for
    good. The one value the host waits for is that flag, once the backward pass is queued.
    """

    def __init__(self, model, optimizer, scheduler, accelerator, temp: float, max_grad_norm: float = 0.0):
        self.model, self.optimizer, self.scheduler, self.accelerator = model, optimizer, scheduler, accelerator
        self.temp, self.max_grad_norm = temp, max_grad_norm

    def __call__(self, inputs: dict) -> tuple[torch.Tensor, bool]:
        accelerator = self.accelerator
        inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in inputs.items()}
        out = self.model(inputs, self.temp)  # one forward of both views and the loss, in the DDP-wrapped module
        named = out.terms or {}
        parts = [out.loss, named.get("infonce", out.loss), named.get("rr_vne", out.loss.new_zeros(()))]
        terms = accelerator.reduce(torch.stack(parts).detach(), reduction="mean")
        accelerator.backward(out.loss)
        # the norm every process holds after DDP's averaging; clipped, or only measured (max_norm inf)
        grad_norm = accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or math.inf)
        terms = torch.cat([terms, grad_norm.detach().float().reshape(1).to(terms.device)])
        # fp16: an inf gradient is the loss scaler's to handle (it skips the step and lowers the scale)
        checked = terms if accelerator.mixed_precision != "fp16" else terms[:1]
        if not torch.isfinite(checked).all():
            return terms, False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms, True


class Window:
    """The steps since the last `train` record: sums of their TERMS and λ (on the device, read once per
    record) and of their durations; the sums are part of the saved state, so the first record after a
    resume averages the same steps as the uninterrupted run's."""

    def __init__(self, device):
        self.sums = torch.zeros(len(TERMS) + 1, device=device)
        self.steps, self.seconds = 0, 0.0

    def add(self, terms: torch.Tensor, weight: float, seconds: float) -> None:
        self.sums += torch.cat([terms, terms.new_tensor([weight])])
        self.steps += 1
        self.seconds += seconds

    def means(self) -> dict:
        """{term: mean over the window, "rr_weight_mean"}; then the window starts again."""
        values = (self.sums / self.steps).tolist()
        out = dict(zip(TERMS, values[:-1]), rr_weight_mean=values[-1])
        self.sums.zero_()
        self.steps, self.seconds = 0, 0.0
        return out

    def state_dict(self) -> dict:
        return {"sums": self.sums.tolist(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.sums = torch.tensor(state["sums"], device=self.sums.device)
        self.steps = state["steps"]


class TrainState:
    """The loop's progress: the step reached and whether its evaluation, exports and saves are done, the best
    checkpoint, the time spent training and evaluating, and the run's resumes."""

    def __init__(self):
        self.step, self.done_step = 0, None  # done_step: the last step whose evaluations and saves are done
        self.best_step, self.best_metrics, self.best_train_seconds = None, None, None
        self.train_seconds, self.eval_seconds = 0.0, 0.0
        self.resumes = []  # {"step", "from", "changed"}: each resume and the flags it changed (summary.json)

    @property
    def best_score(self) -> float:
        return -math.inf if self.best_metrics is None else self.best_metrics["stsb_dev"]

    def improves(self, metrics: dict) -> bool:
        """Whether a full evaluation is the new best/ (STS-B dev strictly higher); records it if so."""
        if not metrics["stsb_dev"] > self.best_score:
            return False
        self.best_step, self.best_metrics = self.step, {k: metrics[k] for k in ("stsb_dev", "sickr_dev")}
        self.best_train_seconds = self.train_seconds
        return True

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
