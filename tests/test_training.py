"""utils/training.py: the training step compiled whole (every method, with RR's quadrature solver) gives the
eager step's loss and update; a non-finite step is skipped on the device and read with the record."""

import functools
import math

import pytest
import torch

from tests.conftest import make_tiny_model
from utils.methods import METHODS

SENTENCES = ["a man is playing guitar", "two dogs on the street", "the child is eating food", "a red ball in the water"]


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory):
    """No dropout: a compiled graph draws its random numbers differently from the eager step."""
    return make_tiny_model(tmp_path_factory.mktemp("still"), "bert", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


def _step(path, method, compile_mode=None):
    """(TrainStep, the prepared model, the method) of `method` + RR with the quadrature solver, under plain SGD
    with lr 1 (the update is minus the gradient) and no clipping."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from train import parse_args
    from utils.methods import TrainingModel
    from utils.model import SimCSEModel, load_pretrained
    from utils.rank_reduction import RankReduction
    from utils.training import TrainStep

    AcceleratorState._reset_state(reset_partial_state=True)
    extra = ("--queue_size", "4") if method == "esimcse" else ()
    args = parse_args(["--method", method, "--model_name_or_path", str(path), "--train_file", "-", "--eval_data_dir", "-",
                       "--output_dir", "-",
                       "--max_seq_length", "16", "--per_device_train_batch_size", "4", "--rank-reduction", "0.5",
                       "--rr_solver", "quadrature", "--pad_to_max_length", *extra])
    encoder, tokenizer = load_pretrained(str(path))
    torch.manual_seed(0)
    model = SimCSEModel(encoder, args.pooler_type, args.mlp_only_train)
    objective = METHODS[method](args, model, tokenizer, steps_per_epoch=10)
    rr = RankReduction(objective, args, total_steps=10)
    accelerator = Accelerator(cpu=True)
    training_model = TrainingModel(model, rr).train()
    optimizer = torch.optim.SGD(training_model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    prepared, optimizer = accelerator.prepare(training_model, optimizer)
    rr.begin_step(0, True, optimizer, scheduler)
    step = TrainStep(prepared, optimizer, scheduler, accelerator, 0.05, 0.0, compile_mode)
    batch = dict(tokenizer(SENTENCES, padding="max_length", max_length=16, truncation=True, return_tensors="pt"))
    return step, prepared, objective.views(batch, 0)


def _one_step(path, method, compile_mode=None):
    step, model, inputs = _step(path, method, compile_mode)
    terms, finite = step(inputs)
    return terms, bool(finite), [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("method", list(METHODS))
def test_every_methods_step_compiles_whole_with_the_eager_numbers(still_bert, method, monkeypatch):
    # fullgraph: any graph break in the forward, the method's loss, RR or the clipping would raise here.
    # AOTAutograd's eager backend traces exactly what inductor compiles, without generating code (inductor's
    # code is checked end to end by tests/test_train.py's --torch_compile run).
    eager = _one_step(still_bert, method)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = _one_step(still_bert, method, "default")
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-7)  # loss, method loss, VNE, grad norm
    assert compiled[1] and eager[1]
    for a, b in zip(compiled[2], eager[2]):  # SGD with lr 1: the same gradients
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_a_non_finite_step_is_skipped_on_the_device_and_read_with_the_record():
    from utils.training import Window

    window = Window("cpu")
    good = torch.tensor([1.0, 0.9, 0.1, 2.0])
    window.add(good, torch.tensor(True), step=1, weight=0.5, seconds=0.1)
    window.add(torch.tensor([math.nan, math.nan, 0.1, math.nan]), torch.tensor(False), step=2, weight=0.5, seconds=0.1)
    window.add(torch.tensor([2.0, 1.0, 0.2, math.inf]), torch.tensor(False), step=3, weight=0.5, seconds=0.1)
    assert window.failure() == "the loss became nan at step 2"  # the first bad step, its own numbers
    restored = Window("cpu")
    restored.load_state_dict(window.state_dict())
    assert restored.failure() == window.failure()
    means = window.means()
    assert means["rr_vne"] == pytest.approx(0.1 / 3) and math.isfinite(means["loss"])  # bad steps add nothing
    clean = Window("cpu")
    clean.add(torch.tensor([2.0, 1.0, 0.2, math.inf]), torch.tensor(False), step=7, weight=0.0, seconds=0.1)
    assert clean.failure() == "the gradient norm became inf (loss 2) at step 7"
