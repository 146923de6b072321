"""SentEval's logistic-regression protocols on frozen sentence embeddings, the models of a task trained
together (two batched models: the cross-validation's, then the final ones).

The classifier is SentEval's PyTorch one as SimCSE runs it (`nhid = 0`): a linear layer (F -> C) trained
with mean cross-entropy on minibatches, L2 as the optimizer's `weight_decay` (on weight and bias), one
start for every model (SentEval seeds each model the same). Every `epoch_size` passes over its training
rows a model is scored on its validation rows; its best weights are kept, and it stops at the
(`tenacity` + 1)-th evaluation without a strict improvement (SentEval's counter is never reset) or after
`max_epoch // epoch_size + 1` evaluations (SentEval's `while nepoch <= max_epoch`: "at most 200 epochs"
is 202 passes with epoch_size 2, 204 with 4). A pass is SentEval's: minibatches of `batch_size` rows in
a random order, the rest of the rows in a last, smaller one, right before the evaluation. The L2 penalty
is picked from {1e-5, 1e-4, 1e-3, 1e-2} (SentEval's grid for its PyTorch classifier) by accuracy x 100
rounded to 2 decimals, the first best winning ties.

Protocols (SentEval's tools/validation.py):
- `inner_kfold` (MR, CR, SUBJ, MPQA): stratified k-fold; on each outer training part a stratified inner
  k-fold scores every L2 (each inner model early-stopped on, and scored on, its inner test fold); the best
  L2's model is trained on the outer training part minus a random 5% (its early-stopping rows) and
  scored on the outer test fold. acc = mean over outer folds, devacc = mean of the best inner scores.
- `kfold` (TREC, MRPC): the same with one level: stratified k-fold on train picks L2, the final model
  (train minus a random 5%) is scored on test.
- `split` (SST2, probing): one model per L2 on train, early-stopped on dev; the best dev accuracy picks
  L2; its test accuracy is reported.

Speed: `train_batched` trains all of a task's cross-validation models (folds x L2 values) as ONE batched
model, then the chosen L2's final models as a second: weights (F + 1, C, M), the bias a row fed by a
column of ones. Every step draws one shared minibatch of rows, and each model uses the rows of it
that are its training rows (a per-model mask), so a step is two matrix products over all models, on the
C - 1 logit differences softmax depends on (half the work for binary tasks). Stopped models leave the
batch. Differences from SentEval's one model at a time, all statistical: where models train on different
rows (the folds), a model's minibatches are its rows of a shared one of batch_size x rows drawn / mean
training rows per model, so their size varies around `batch_size` (the last one of a pass too, around
SentEval's rest), and the passes' shuffles come from one `torch.Generator` seeded with `seed`. On CPU it
runs on one thread (see `_one_thread_on_cpu`).

`fit_sklearn` is the same protocol with scikit-learn's `LogisticRegression` fitted model by model (the
reference for tests and `bench_transfer.py`; scikit-learn is a test/benchmark dependency only).

Checked against SentEval's code (senteval/tools/classifier.py, validation.py): SentEval's last, smaller
minibatch of each pass (right before the early-stopping check) is kept, and its final model (train less a
random 5 %) is fitted on its own rows, not in the cross-validation's batch. docs/differences.md gives their
measured effect.
"""

import contextlib
import math
import warnings
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch.optim.adam import adam as torch_adam
from torch.optim.rmsprop import rmsprop as torch_rmsprop

L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # SentEval: [10**t for t in range(-5, -1)] with usepytorch


@dataclass(frozen=True)
class ClassifierConfig:
    kfold: int
    optim: str          # "adam" (lr 1e-3) or "rmsprop" (lr 1e-2): torch's defaults, as SentEval's
    batch_size: int
    tenacity: int
    epoch_size: int     # passes over the training rows between two validations
    max_epoch: int = 200
    validation_split: float = 0.05
    l2_grid: tuple = L2_GRID

    def as_dict(self) -> dict:
        return asdict(self)


# SimCSE's evaluation.py: test = SentEval's literature setting, fasttest (and dev) = its prototyping one.
CONFIGS = {
    "test": ClassifierConfig(kfold=10, optim="adam", batch_size=64, tenacity=5, epoch_size=4),
    "fasttest": ClassifierConfig(kfold=5, optim="rmsprop", batch_size=128, tenacity=3, epoch_size=2),
}
CONFIGS["dev"] = CONFIGS["fasttest"]


@dataclass
class Job:
    """One model: learns from rows `fit` (less those in `val`), early-stops on rows `val`, and predicts
    rows `score`. Row indices into the task's feature matrix."""
    fit: np.ndarray
    val: np.ndarray
    l2: float
    score: np.ndarray


# ----------------------------------------------------------------------------- folds
def stratified_folds(y, k: int, rng: np.random.Generator) -> list:
    """k disjoint sorted index arrays covering range(len(y)); each class is shuffled and dealt round-robin,
    so per-class counts (and fold sizes) differ by at most one between folds."""
    y = np.asarray(y)
    if not 2 <= k <= len(y):
        raise ValueError(f"{k}-fold cross-validation needs 2 <= k <= {len(y)} (the number of samples)")
    order = np.concatenate([rng.permutation(np.flatnonzero(y == c)) for c in np.unique(y)])
    fold = np.empty(len(y), dtype=np.int64)
    fold[order] = np.arange(len(y)) % k
    return [np.flatnonzero(fold == i) for i in range(k)]


def holdout(n: int, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """SentEval's `validation_split`: the first int(fraction * n) rows of a random permutation."""
    return np.sort(rng.permutation(n)[: int(fraction * n)])


def _rng(seed: int, *keys: int) -> np.random.Generator:
    return np.random.default_rng([seed, *keys])


def _accuracy(pred, y) -> float:
    return float(np.mean(np.asarray(pred) == np.asarray(y)))


# ----------------------------------------------------------------------------- the batched trainer
class _Optimizer:
    """SentEval's optimizer, torch's Adam or RMSprop with their default settings (Adam: lr 1e-3, betas
    0.9/0.999, eps 1e-8; RMSprop: lr 1e-2, alpha 0.99, eps 1e-8), through torch's functional API on the
    weights of all models, a tensor (F + 1, C, M) whose last axis is the model. `keep` drops the state of
    stopped models. L2 comes in the gradient, per model, as torch's `weight_decay` would add it. Adam runs
    torch's fused kernel where there is one (one pass over the weights instead of six)."""

    def __init__(self, name: str, w):
        if name not in ("adam", "rmsprop"):
            raise ValueError(f"unknown optimizer {name!r}; choose adam or rmsprop")
        self.name, self.fused = name, name == "adam"
        self.state = [torch.zeros_like(w) for _ in range(2 if name == "adam" else 1)]
        self.step_count = torch.zeros((), dtype=torch.float32, device=w.device)

    def step(self, w, grad):
        if self.name == "rmsprop":
            torch_rmsprop([w], [grad], self.state, [], [], [self.step_count], foreach=False, lr=1e-2, alpha=0.99,
                          eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False)
            return
        m, v = self.state
        kwargs = dict(amsgrad=False, beta1=0.9, beta2=0.999, lr=1e-3, weight_decay=0.0, eps=1e-8, maximize=False)
        if self.fused:
            try:
                return torch_adam([w], [grad], [m], [v], [], [self.step_count], fused=True, **kwargs)
            except RuntimeError:  # no fused kernel for this device: torch's plain Adam, same update
                self.fused = False
        torch_adam([w], [grad], [m], [v], [], [self.step_count], foreach=False, **kwargs)

    def keep(self, cols):
        self.state = [s[:, :, cols].contiguous() for s in self.state]


def _logit_gaps(x, w):
    """z[i, c - 1, m] = logit of class c minus logit of class 0 -> (n, C - 1, M).

    Softmax only sees logit differences, so C - 1 matrix columns per model carry everything (half the
    work for binary tasks); the weights themselves stay SentEval's C rows, which the optimizer updates."""
    gaps = w[:, 1:] - w[:, :1]
    return (x @ gaps.reshape(w.shape[0], -1)).view(x.shape[0], w.shape[1] - 1, w.shape[2])


def _loss_gradient(xb, weights, onehot, w, l2):
    """Gradient of every model's mean cross-entropy on its rows of the batch, plus torch's weight decay
    (l2 * w): (F+1, C, M). `weights` (B, M) is 1 / (the model's rows in the batch) on its rows, else 0
    (a number when all models share the rows); `onehot` (B, C - 1) the labels of classes 1..C-1.
    dloss/dlogit_c = (p_c - onehot_c) * weight for c >= 1; class 0 gets minus their sum."""
    if w.shape[1] == 2:  # binary: one logit gap per model, sigmoid (fewer operations per step)
        r = torch.sigmoid(xb @ (w[:, 1] - w[:, 0])).sub_(onehot).mul_(weights)
        g = (xb.T @ r).unsqueeze(1)
        return torch.cat([-g, g], 1).addcmul_(w, l2)
    z = _logit_gaps(xb, w)
    p = torch.cat([torch.zeros_like(z[:, :1]), z], 1).softmax(1)[:, 1:]
    r = p.sub_(onehot.unsqueeze(-1)).mul_(weights if isinstance(weights, float) else weights.unsqueeze(1))
    g = (xb.T @ r.reshape(len(xb), -1)).view(w.shape[0], w.shape[1] - 1, -1)
    return torch.cat([-g.sum(1, keepdim=True), g], 1).addcmul_(w, l2)


def _argmax_rows(x, w, chunk_elems: int = 1 << 26):
    """Predicted class of every row of `x` (n, F+1) under every model of `w` (F+1, C, M) -> (n, M); ties
    go to the lower class, as torch's argmax. max(1).indices: argmax over a short strided axis is slow."""
    n, (_, c, m) = x.shape[0], w.shape
    step = max(1, chunk_elems // max(1, m * c))
    out = []
    for i in range(0, n, step):
        z = _logit_gaps(x[i : i + step], w)
        out.append(torch.cat([torch.zeros_like(z[:, :1]), z], 1).max(1).indices)
    return torch.cat(out)


def _device(device) -> torch.device:
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


@contextlib.contextmanager
def _one_thread_on_cpu(device: torch.device):
    """The trainer's steps are many small operations: on CPU, torch's intra-op threads cost more in
    synchronisation than they save (docs/speed.md). So it runs on one thread, and restores the caller's
    setting afterwards."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def train_batched(X, y, n_classes: int, jobs: list, config: ClassifierConfig, seed: int = 1111,
                  device=None) -> list:
    """Train every `Job` as SentEval's classifier would, all at once; returns each job's predicted classes
    (int64 numpy) on its `score` rows, from its best (early-stopping) weights."""
    device = _device(device)
    with _one_thread_on_cpu(device):
        return _train_batched(X, y, n_classes, jobs, config, seed, device)


@torch.inference_mode()
def _train_batched(X, y, n_classes, jobs, config, seed, device) -> list:
    n, F = X.shape
    C, M = n_classes, len(jobs)
    gen = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.as_tensor(X, dtype=torch.float32), torch.ones(n, 1)], 1).to(device)  # bias column
    y = torch.as_tensor(np.asarray(y), dtype=torch.long).to(device)
    onehot = torch.nn.functional.one_hot(y, C)[:, 1:].float()  # (n, C - 1)

    train = torch.zeros(n, M)              # train[i, m] = 1: row i is a training row of model m
    val = torch.zeros(n, M, dtype=torch.bool)
    for m, job in enumerate(jobs):
        train[job.fit, m] = 1
        train[job.val, m] = 0  # SentEval's validation_split: held out of training
        val[job.val, m] = True
    if (train.sum(0) == 0).any() or (val.sum(0) == 0).any():
        raise ValueError("every model needs training and validation rows")
    val_rows = torch.nonzero(val.any(1)).squeeze(1).to(device)
    x_val, y_val, val = x[val_rows], y[val_rows], val.to(device)[val_rows]
    train = train.to(device)

    # nn.Linear's initialisation, U(-1/sqrt(F), 1/sqrt(F)) for weight and bias; the same for every model
    start = (torch.rand(F + 1, C, 1, generator=gen) * 2 - 1) / math.sqrt(F)
    w = start.expand(F + 1, C, M).contiguous().to(device)  # last axis: the model
    l2 = torch.tensor([job.l2 for job in jobs], dtype=torch.float32).view(1, 1, M).to(device)
    opt = _Optimizer(config.optim, w)

    best_w = w.clone()
    best = torch.full((M,), -1, dtype=torch.long, device=device)    # best validation count so far
    misses = torch.zeros(M, dtype=torch.long, device=device)        # evaluations without improvement
    active = torch.arange(M, device=device)                        # model id of each column of w

    def schedule():  # the rows some model trains on, and the shared batch holding ~batch_size of each model's
        pool = torch.nonzero(train.any(1)).squeeze(1).cpu()
        return pool, max(1, round(config.batch_size * len(pool) / train.sum(0).mean().item()))

    pool, shared = schedule()
    shared_rows = bool((train == train[:, :1]).all())  # e.g. the split protocol: one weight for all
    for _ in range(config.max_epoch // config.epoch_size + 1):  # SentEval: while nepoch <= max_epoch
        for _ in range(config.epoch_size):
            order = pool[torch.randperm(len(pool), generator=gen)].to(device)
            for rows in order.split(shared):  # as SentEval: full batches, then the smaller rest
                if shared_rows:
                    weights = 1.0 / len(rows)
                else:  # mean loss over each model's own rows of the batch
                    mb = train.index_select(0, rows)
                    weights = mb / mb.sum(0).clamp_(min=1)
                xb, yb = x.index_select(0, rows), onehot.index_select(0, rows)
                opt.step(w, _loss_gradient(xb, weights, yb, w, l2))
        correct = ((_argmax_rows(x_val, w) == y_val[:, None]) & val).sum(0)
        improved = correct > best[active]
        best[active[improved]] = correct[improved]
        best_w[:, :, active[improved]] = w[:, :, improved]
        stop = ~improved & (misses[active] >= config.tenacity)
        misses[active[~improved]] += 1
        if stop.all():
            break
        if stop.any():  # stopped models leave the batch
            keep = torch.nonzero(~stop).squeeze(1)
            active, w, l2 = active[keep], w[:, :, keep].contiguous(), l2[:, :, keep].contiguous()
            train, val = train[:, keep].contiguous(), val[:, keep].contiguous()
            opt.keep(keep)
            pool, shared = schedule()

    score_rows = np.unique(np.concatenate([job.score for job in jobs]))
    pred = _argmax_rows(x[torch.as_tensor(score_rows, device=device)], best_w).cpu().numpy()
    return [pred[np.searchsorted(score_rows, job.score), m] for m, job in enumerate(jobs)]


def fit_sklearn(X, y, n_classes: int, jobs: list, config=None, seed: int = 1111, device=None) -> list:
    """The obvious alternative: one scikit-learn `LogisticRegression` (lbfgs, its defaults) per job, on all
    of `fit` (no early stopping, hence no held-out rows), as SentEval's own non-PyTorch path does.

    L2 -> C: SentEval minimises mean CE + (l2 / 2) |W|^2 over C weight columns; scikit-learn minimises
    C * sum CE + |w|^2 / 2. Multinomial (3+ classes, C columns each side): C = 1 / (l2 n). Binary:
    scikit-learn has one column w = w1 - w0, and the 2-column optimum has w0 = -w1 = -w / 2, so
    (l2 / 2)(|w0|^2 + |w1|^2) = (l2 / 4)|w|^2: C = 2 / (l2 n). (scikit-learn leaves the bias unpenalised.)
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    X, y = np.asarray(X), np.asarray(y)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for job in jobs:
            C = (2.0 if n_classes == 2 else 1.0) / (job.l2 * len(job.fit))
            clf = LogisticRegression(C=C, random_state=seed).fit(X[job.fit], y[job.fit])
            out.append(clf.predict(X[job.score]))
    return out


# ----------------------------------------------------------------------------- protocols
def _train(fit, X, y, n_classes, cv_jobs, finals, choose, config, seed, device):
    """Run `cv_jobs`, pick an L2 index per key of `finals` ({key: [job per L2]}) with `choose(cv_preds)`,
    train the chosen final models, and return (cv predictions, chosen {key: index}, final predictions
    {key: pred}, models trained).

    The final models are a second batch, not part of the cross-validation's: they train on more rows
    (all less 5% against (k-1)/k of them), so a shared minibatch sized for the mean model would give them
    up to 15% more rows a step than SentEval's `batch_size` (fasttest), and the cross-validation models fewer.
    """
    cv_preds = fit(X, y, n_classes, cv_jobs, config, seed, device)
    chosen = choose(cv_preds)
    keys = list(finals)
    preds = fit(X, y, n_classes, [finals[k][chosen[k]] for k in keys], config, seed, device) if keys else []
    return cv_preds, chosen, dict(zip(keys, preds)), len(cv_jobs) + len(keys)


def inner_kfold(X, y, n_classes: int, config: ClassifierConfig, seed: int = 1111, device=None,
                fit=train_batched) -> dict:
    """MR/CR/SUBJ/MPQA: {"acc", "devacc", "l2" (per outer fold), "n_models"}."""
    y = np.asarray(y)
    regs, k = config.l2_grid, config.kfold
    cv_jobs, cv_keys, finals, tests = [], [], {}, {}
    for f, test in enumerate(stratified_folds(y, k, _rng(seed, 0))):
        train = np.delete(np.arange(len(y)), test)
        inner = stratified_folds(y[train], k, _rng(seed, 1, f))
        for r, l2 in enumerate(regs):
            for itest in inner:
                cv_jobs.append(Job(np.delete(train, itest), train[itest], l2, train[itest]))
                cv_keys.append((f, r))
        held = train[holdout(len(train), config.validation_split, _rng(seed, 2, f))]
        finals[f] = [Job(train, held, l2, test) for l2 in regs]
        tests[f] = test

    dev = {}

    def choose(preds):
        acc = {}
        for (f, r), job, p in zip(cv_keys, cv_jobs, preds):
            acc.setdefault(f, {}).setdefault(r, []).append(_accuracy(p, y[job.score]))
        scores = {f: [round(100 * np.mean(acc[f][r]), 2) for r in range(len(regs))] for f in acc}
        dev.update({f: max(s) for f, s in scores.items()})
        return {f: int(np.argmax(s)) for f, s in scores.items()}

    _, chosen, final, n_models = _train(fit, X, y, n_classes, cv_jobs, finals, choose, config, seed, device)
    test_scores = [round(100 * _accuracy(final[f], y[tests[f]]), 2) for f in sorted(final)]
    return {"acc": round(float(np.mean(test_scores)), 2), "devacc": round(float(np.mean(list(dev.values()))), 2),
            "l2": [regs[chosen[f]] for f in sorted(chosen)], "n_models": n_models}


def kfold(X_train, y_train, X_test, y_test, n_classes: int, config: ClassifierConfig, seed: int = 1111,
          device=None, fit=train_batched) -> dict:
    """TREC/MRPC: {"acc", "devacc", "l2", "n_models", "predictions" (on test)}."""
    X = np.concatenate([X_train, X_test])
    y = np.concatenate([y_train, y_test])
    train, test = np.arange(len(y_train)), np.arange(len(y_train), len(y))
    regs = config.l2_grid
    cv_jobs = [Job(np.delete(train, rows), rows, l2, rows)
               for l2 in regs for rows in stratified_folds(y_train, config.kfold, _rng(seed, 0))]
    held = holdout(len(train), config.validation_split, _rng(seed, 2))
    finals = {0: [Job(train, held, l2, test) for l2 in regs]}
    scores = []

    def choose(preds):
        per_reg = np.array([_accuracy(p, y[j.score]) for j, p in zip(cv_jobs, preds)]).reshape(len(regs), -1)
        scores.extend(round(100 * float(a), 2) for a in per_reg.mean(1))
        return {0: int(np.argmax(scores))}

    _, chosen, final, n_models = _train(fit, X, y, n_classes, cv_jobs, finals, choose, config, seed, device)
    return {"acc": round(100 * _accuracy(final[0], y_test), 2), "devacc": max(scores),
            "l2": regs[chosen[0]], "n_models": n_models, "predictions": final[0]}


def split(X_train, y_train, X_dev, y_dev, X_test, y_test, n_classes: int, config: ClassifierConfig,
          seed: int = 1111, device=None, fit=train_batched) -> dict:
    """SST2/probing: {"acc", "devacc", "l2", "n_models", "predictions" (on test)}.

    SentEval retrains the chosen L2's model; with the same seed that is the model already trained, so
    its test predictions are taken from the first run."""
    X = np.concatenate([X_train, X_dev, X_test])
    y = np.concatenate([y_train, y_dev, y_test])
    n_tr, n_dev = len(y_train), len(y_dev)
    train, dev, test = np.arange(n_tr), np.arange(n_tr, n_tr + n_dev), np.arange(n_tr + n_dev, len(y))
    regs = config.l2_grid
    jobs = [Job(train, dev, l2, np.concatenate([dev, test])) for l2 in regs]
    preds = fit(X, y, n_classes, jobs, config, seed, device)
    scores = [round(100 * _accuracy(p[:n_dev], y_dev), 2) for p in preds]
    r = int(np.argmax(scores))
    return {"acc": round(100 * _accuracy(preds[r][n_dev:], y_test), 2), "devacc": max(scores), "l2": regs[r],
            "n_models": len(jobs), "predictions": preds[r][n_dev:]}
