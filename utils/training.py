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
    """One optimizer step of the objective on one batch's two views, queued without the host waiting on it.

    model: a (prepared) utils.methods.TrainingModel, whose objective is a method or RankReduction(method).
    Returns (terms, finite): terms = the detached TERMS, the first three averaged over processes; finite =
    whether the loss and the gradient norm were finite; both on the device. A step that is not finite makes
    no update: the fused AdamW skips it on the device (its `found_inf`, the mechanism of PyTorch's own loss
    scaling), so the weights and Adam's moments stay as they were (one inf in the second moments would stay
    there for good), and the host reads the flag with the step's record (Window.failure).

    compile: a torch.compile mode, or None. The forward of both views with the method's loss and RR is
    compiled whole (fullgraph: no graph break, no host synchronisation; its backward is AOTAutograd's one
    graph), and so are the gradient clipping and the finite flag. PyTorch keeps an optimizer step in a graph
    of its own (it breaks the graph around optimizer.step on purpose); the fused AdamW is one kernel anyway.
    """

    def __init__(self, model, optimizer, scheduler, accelerator, temp: float, max_grad_norm: float = 0.0,
                 compile: str | None = None):
        self.model, self.optimizer, self.scheduler, self.accelerator = model, optimizer, scheduler, accelerator
        self.temp, self.max_grad_norm = temp, max_grad_norm
        self.inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper holds the torch optimizer
        # fp16: the loss scaler skips an inf gradient's step itself; a non-fused optimizer cannot skip on the device
        self.skips_on_device = bool(self.inner.defaults.get("fused")) and accelerator.mixed_precision != "fp16"
        self.forward, self.clip = self._forward, self._clip
        if compile:
            import torch._dynamo

            torch._dynamo.config.capture_dynamic_output_shape_ops = True  # --unpad_inputs' packing stays in the graph
            mode = None if compile == "default" else compile
            self.forward = torch.compile(self._forward, fullgraph=True, mode=mode)
            if accelerator.mixed_precision != "fp16":
                self.clip = torch.compile(self._clip, fullgraph=True)

    def _forward(self, inputs: dict):
        out = self.model(inputs, self.temp)  # one forward of both views and the loss, in the DDP-wrapped module
        named = out.terms or {}
        parts = [out.loss, named.get("infonce", out.loss), named.get("rr_vne", out.loss.new_zeros(()))]
        return out.loss, torch.stack(parts).detach()

    def _clip(self, terms: torch.Tensor):
        """(terms with the gradient norm, finite): the norm every process holds after DDP's averaging, clipped
        to max_grad_norm or only measured (max_norm inf)."""
        if self.accelerator.mixed_precision == "fp16":  # the scaler's gradients are unscaled first
            grad_norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or math.inf)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm or math.inf)
        terms = torch.cat([terms, grad_norm.detach().float().reshape(1).to(terms.device)])
        checked = terms if self.accelerator.mixed_precision != "fp16" else terms[:1]
        return terms, torch.isfinite(checked).all()

    def __call__(self, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
        accelerator = self.accelerator
        inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in inputs.items()}
        loss, terms = self.forward(inputs)
        terms = accelerator.reduce(terms, reduction="mean")
        accelerator.backward(loss)
        terms, finite = self.clip(terms)
        if self.skips_on_device:
            self.inner.found_inf, self.inner.grad_scale = (~finite).float(), None
            self.optimizer.step()
        elif bool(finite):  # where the optimizer cannot skip on the device, the host waits for the flag
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return terms, finite


class Window:
    """The steps since the last `train` record: sums of their TERMS and λ (on the device, read once per
    record) and of their durations, and the first step that was not finite (its update was skipped); the
    sums are part of the saved state, so the first record after a resume averages the same steps as the
    uninterrupted run's."""

    def __init__(self, device):
        self.sums = torch.zeros(len(TERMS) + 1, device=device)
        self.bad = torch.full((len(TERMS) + 1,), -1.0, device=device)  # the first bad step: its number and terms
        self.steps, self.seconds = 0, 0.0

    def add(self, terms: torch.Tensor, finite: torch.Tensor, step: int, weight: float, seconds: float) -> None:
        self.sums += torch.where(finite, torch.cat([terms, terms.new_tensor([weight])]), 0.0)
        first = (self.bad[0] < 0) & ~finite
        self.bad = torch.where(first, torch.cat([terms.new_tensor([step]), terms]), self.bad)
        self.steps += 1
        self.seconds += seconds

    def failure(self) -> str | None:
        """What went wrong at the window's first step that was not finite (None: every step was)."""
        step, loss, _, _, grad_norm = self.bad.tolist()
        if step < 0:
            return None
        what = f"the loss became {loss}" if not math.isfinite(loss) else \
            f"the gradient norm became {grad_norm} (loss {loss:.4g})"
        return f"{what} at step {int(step)}"

    def means(self) -> dict:
        """{term: mean over the window, "rr_weight_mean"}; then the window starts again."""
        values = (self.sums / self.steps).tolist()
        out = dict(zip(TERMS, values[:-1]), rr_weight_mean=values[-1])
        self.sums.zero_()
        self.steps, self.seconds = 0, 0.0
        return out

    def state_dict(self) -> dict:
        return {"sums": self.sums.tolist(), "steps": self.steps, "bad": self.bad.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.sums = torch.tensor(state["sums"], device=self.sums.device)
        self.bad = torch.tensor(state["bad"], device=self.sums.device)
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
        self.best_step, self.best_metrics = self.step, {k: metrics[k] for k in ("stsb_dev", "sickr_dev") if k in metrics}
        self.best_train_seconds = self.train_seconds
        return True

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)
