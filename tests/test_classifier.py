"""utils/classifier.py: folds, held-out rows, the L2 search, the batched trainer against SentEval's loop."""

import copy
import math

import numpy as np
import pytest
import torch

from utils.classifier import (CONFIGS, ClassifierConfig, Job, fit_sklearn, holdout, inner_kfold, kfold, split,
                              stratified_folds, train_batched)

SMALL = ClassifierConfig(kfold=3, optim="adam", batch_size=16, tenacity=2, epoch_size=1, max_epoch=30)


def blobs(n=240, dim=8, classes=3, seed=0, noise=1.5):
    """Gaussian classes, overlapping enough that accuracy is below 100%."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(classes, dim)) * 2
    y = rng.integers(0, classes, n)
    return (centers[y] + rng.normal(size=(n, dim)) * noise).astype(np.float32), y


# ----------------------------------------------------------------------------- folds
@pytest.mark.parametrize("k", [2, 5, 10])
def test_stratified_folds_partition_and_balance(k):
    y = np.array([0] * 53 + [1] * 31 + [2] * 7)
    folds = stratified_folds(y, k, np.random.default_rng(0))
    assert len(folds) == k
    everything = np.concatenate(folds)
    assert sorted(everything) == list(range(len(y)))  # disjoint and covering
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    for c in range(3):  # stratified: every class spread as evenly as possible
        per_fold = [int(np.sum(y[f] == c)) for f in folds]
        assert max(per_fold) - min(per_fold) <= 1


def test_stratified_folds_depend_on_the_seed_only():
    y = np.arange(100) % 2
    a = stratified_folds(y, 5, np.random.default_rng(1))
    b = stratified_folds(y, 5, np.random.default_rng(1))
    c = stratified_folds(y, 5, np.random.default_rng(2))
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_stratified_folds_rejects_more_folds_than_samples():
    with pytest.raises(ValueError, match="10-fold"):
        stratified_folds(np.zeros(4), 10, np.random.default_rng(0))


def test_holdout_is_sentevals_validation_split():
    rows = holdout(1000, 0.05, np.random.default_rng(0))
    assert len(rows) == 50 and len(set(rows)) == 50 and rows.max() < 1000
    assert len(holdout(39, 0.05, np.random.default_rng(0))) == 1  # int(0.05 * 39)


# ----------------------------------------------------------------------------- protocols, with a recording fitter
class Recorder:
    """A fitter that records its jobs and predicts the truth when `good(job)`, a wrong class otherwise."""

    def __init__(self, y, n_classes, good=lambda job: True):
        self.y, self.n_classes, self.good = y, n_classes, good
        self.jobs, self.calls = [], []

    def __call__(self, X, y, n_classes, jobs, config, seed, device):
        self.jobs.extend(jobs)
        self.calls.append(len(jobs))
        return [y[j.score] if self.good(j) else (y[j.score] + 1) % n_classes for j in jobs]


def test_inner_kfold_has_no_leakage():
    X, y = blobs(200, classes=2)
    rec = Recorder(y, 2)
    config = CONFIGS["fasttest"]
    result = inner_kfold(X, y, 2, config, fit=rec)
    k, regs = config.kfold, len(config.l2_grid)
    finals = [j for j in rec.jobs if len(j.score) > 0 and not np.array_equal(j.score, j.val)]
    inner = [j for j in rec.jobs if np.array_equal(j.score, j.val)]
    assert len(inner) == k * k * regs
    assert len(finals) == k and result["n_models"] == len(rec.jobs)
    # the chosen final models are a batch of their own: in the cross-validation's, the shared minibatch
    # would give them more rows a step than SentEval's batch_size (they train on more rows)
    assert rec.calls == [k * k * regs, k]
    outer_tests = {tuple(j.score) for j in finals}
    assert len(outer_tests) == k and sorted(np.concatenate([np.array(t) for t in outer_tests])) == list(range(200))
    for j in inner:  # an inner model never learns from the rows it is scored on, nor from its outer test fold
        assert not set(j.fit) & set(j.val)
        outer = next(np.array(t) for t in outer_tests if not set(t) & set(j.fit) and not set(t) & set(j.val))
        assert len(set(j.fit) | set(j.val) | set(outer)) == 200
    for j in finals:  # the final model learns from the outer training rows; early-stops on 5% of them
        assert not set(j.fit) & set(j.score)
        assert set(j.val) <= set(j.fit) and len(j.val) == int(0.05 * len(j.fit))
    assert result["acc"] == 100.0 and result["devacc"] == 100.0


def test_l2_search_picks_the_best_penalty_and_the_first_of_ties():
    X, y = blobs(120, classes=3)
    config = CONFIGS["fasttest"]
    picked = kfold(X[:90], y[:90], X[90:], y[90:], 3, config, fit=Recorder(y, 3, good=lambda j: j.l2 == 1e-3))
    assert picked["l2"] == 1e-3 and picked["acc"] == 100.0 and picked["devacc"] == 100.0
    tie = kfold(X[:90], y[:90], X[90:], y[90:], 3, config, fit=Recorder(y, 3))
    assert tie["l2"] == 1e-5  # all equal: the first of SentEval's grid
    picked = split(X[:60], y[:60], X[60:90], y[60:90], X[90:], y[90:], 3, config,
                   fit=Recorder(y, 3, good=lambda j: j.l2 == 1e-2))
    assert picked["l2"] == 1e-2 and picked["acc"] == 100.0 and picked["n_models"] == 4
    per_fold = inner_kfold(X, y, 3, config, fit=Recorder(y, 3, good=lambda j: j.l2 == 1e-4))
    assert per_fold["l2"] == [1e-4] * config.kfold


def test_kfold_final_model_holds_out_five_percent_of_train():
    X, y = blobs(300, classes=2)
    rec = Recorder(y, 2)
    kfold(X[:200], y[:200], X[200:], y[200:], 2, CONFIGS["test"], fit=rec)
    final = rec.jobs[-1]
    assert list(final.fit) == list(range(200)) and list(final.score) == list(range(200, 300))
    assert len(final.val) == 10 and set(final.val) <= set(final.fit)
    for j in rec.jobs[:-1]:
        assert not set(j.fit) & set(j.score) and max(j.fit) < 200 and max(j.score) < 200


# ----------------------------------------------------------------------------- the batched trainer
def sentevals_loop(X, y, n_classes, job, config, seed):
    """SentEval's PyTorchClassifier.fit for one job, written plainly (nn.Linear, torch.optim, autograd),
    with train_batched's initial weights and shuffles. Its minibatches are SentEval's `permutation[i:i +
    batch_size]`: full ones, then the rest (train_batched's shared batch is one model's own batch here)."""
    gen = torch.Generator().manual_seed(seed)
    n, dim = X.shape
    start = (torch.rand(dim + 1, 1, n_classes, generator=gen) * 2 - 1) / math.sqrt(dim)
    model = torch.nn.Linear(dim, n_classes)
    with torch.no_grad():
        model.weight.copy_(start[:dim, 0].T)
        model.bias.copy_(start[dim, 0])
    optim = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}[config.optim]
    optimizer = optim(model.parameters(), weight_decay=job.l2)
    X, y = torch.as_tensor(X), torch.as_tensor(y)
    train = torch.as_tensor(np.setdiff1d(job.fit, job.val))
    best, best_model, misses, nepoch = -1, None, 0, 0
    while nepoch <= config.max_epoch:
        for _ in range(config.epoch_size):
            order = train[torch.randperm(len(train), generator=gen)]
            for rows in order.split(config.batch_size):
                loss = torch.nn.functional.cross_entropy(model(X[rows]), y[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        nepoch += config.epoch_size
        with torch.no_grad():
            correct = int((model(X[job.val]).argmax(1) == y[job.val]).sum())
        if correct > best:
            best, best_model = correct, copy.deepcopy(model)
        else:
            if misses >= config.tenacity:
                break
            misses += 1
    with torch.no_grad():
        return best_model(X[job.score]).argmax(1).numpy(), nepoch


@pytest.mark.parametrize("optim", ["adam", "rmsprop"])
def test_batched_trainer_matches_sentevals_loop(optim):
    X, y = blobs(240, dim=6, classes=3, seed=1, noise=2.0)
    config = ClassifierConfig(kfold=5, optim=optim, batch_size=32, tenacity=3, epoch_size=2, max_epoch=30)
    train, dev, test = np.arange(150), np.arange(150, 200), np.arange(200, 240)  # 150 = 4 x 32 + 22
    jobs = [Job(train, dev, l2, np.concatenate([dev, test])) for l2 in (1e-5, 1e-2, 0.5)]
    batched = train_batched(X, y, 3, jobs, config, seed=7, device="cpu")
    stopped_at = set()
    for job, pred in zip(jobs, batched):
        reference, nepoch = sentevals_loop(X, y, 3, job, config, seed=7)
        assert np.mean(pred == reference) >= 0.98, job.l2  # same model up to float rounding
        stopped_at.add(nepoch)
    assert len(stopped_at) > 1  # models left the batch at different times, keeping their best weights


def test_batched_trainer_is_deterministic_and_seeded():
    X, y = blobs(200, classes=2, noise=3.0)
    jobs = [Job(np.arange(150), np.arange(150, 200), l2, np.arange(200)) for l2 in (1e-5, 1e-3)]
    a = train_batched(X, y, 2, jobs, SMALL, seed=3, device="cpu")
    b = train_batched(X, y, 2, jobs, SMALL, seed=3, device="cpu")
    c = train_batched(X, y, 2, jobs, SMALL, seed=4, device="cpu")
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not all(np.array_equal(u, v) for u, v in zip(a, c))


def test_sklearn_and_batched_agree_on_separable_blobs():
    pytest.importorskip("sklearn")
    X, y = blobs(400, classes=3, noise=1.0)
    ours = kfold(X[:300], y[:300], X[300:], y[300:], 3, CONFIGS["fasttest"], seed=0)
    ref = kfold(X[:300], y[:300], X[300:], y[300:], 3, CONFIGS["fasttest"], seed=0, fit=fit_sklearn)
    assert abs(ours["acc"] - ref["acc"]) <= 3.0
    # both train the chosen L2's final model only, after the cross-validation (SentEval's order)
    assert ours["n_models"] == ref["n_models"] == len(CONFIGS["fasttest"].l2_grid) * CONFIGS["fasttest"].kfold + 1
