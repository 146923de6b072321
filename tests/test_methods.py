"""All methods through train.py's step, flags, resume and two processes (each method's own loss is tested in
tests/test_methods_<name>.py)."""

import json
import math
import os
import shutil

import pytest
import torch

from tests.conftest import make_tiny_model
from tests.test_train import records, run, train_cmd
from utils.methods import METHODS, TrainingModel

SENTENCES = ["a man is playing guitar", "two dogs on the street", "the child is eating food",
             "a red ball in the water", "people riding a bike", "the cat is small",
             "a woman and a horse", "blue water in the park"]
OTHERS = [name for name in METHODS if name != "simcse"]


def _args(method, *extra):
    from train import parse_args

    return parse_args(["--method", method, "--train_file", "-", "--eval_data_dir", "-", "--output_dir", "-",
                       "--max_seq_length", "16", "--per_device_train_batch_size", "4", *extra])


def _training_model(path, args, unpad=False, seed=0, dtype=torch.float32):
    from utils.model import SimCSEModel, load_pretrained

    encoder, tokenizer = load_pretrained(str(path))
    args.model_name_or_path = str(path)  # what the method reads of the starting model (InfoCSE's MLM head) is here
    torch.manual_seed(seed)
    model = SimCSEModel(encoder, args.pooler_type, args.mlp_only_train, unpad)
    method = METHODS[args.method](args, model, tokenizer)
    return TrainingModel(model, method).to(dtype).train(), tokenizer


def _batch(tokenizer, sentences, pad_to=None):
    padding = {"padding": "max_length", "max_length": pad_to} if pad_to else {"padding": True}
    return dict(tokenizer(sentences, truncation=True, return_tensors="pt", **padding))


def test_a_flag_of_another_method_is_refused_by_name(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _args("simcse", "--dup_rate", "0.3")
    assert exit_info.value.code == 2
    assert "--dup_rate: belongs to --method esimcse; this run trains --method simcse" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("mixcse", "--mix_lambda", "1.5")
    assert "--mix_lambda: must be in [0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _args("sbert")
    assert "--method: invalid choice: 'sbert'" in capsys.readouterr().err


def test_every_method_flag_has_a_one_sentence_help_in_its_methods_group(capsys):
    with pytest.raises(SystemExit):
        _args("simcse", "--help")
    text = capsys.readouterr().out
    for method in METHODS.values():
        assert f"--method {method.name} only:" in text or not method.flags
        for flag, kwargs in method.flags:
            assert ". " not in kwargs["help"] and len(kwargs["help"]) < 100, flag
            assert flag in text


def test_each_method_gets_its_published_defaults_and_rr_tensor():
    mix, esim, info, prompt = _args("mixcse"), _args("esimcse"), _args("infocse"), _args("promptbert")
    assert mix.mix_lambda == 0.2 and (esim.dup_rate, esim.momentum, esim.queue_size) == (0.32, 0.995, 160)
    assert (info.mlm_probability, info.mlm_weight, info.head_layers) == (0.4, 1e-5, 2)
    assert prompt.prompt_denoise is True
    assert info.rr_on == mix.rr_on == esim.rr_on == prompt.rr_on == "mlp"
    assert _args("infocse", "--rr_on", "encoder").rr_on == "encoder"
    assert _args("simcse").dup_rate is None  # another method's flag stays unset


@pytest.mark.parametrize("unpad", [False, True])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_with_and_without_rank_reduction(tiny_bert, method, unpad):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from utils.rank_reduction import RankReduction
    from utils.training import TrainStep, make_optimizer

    AcceleratorState._reset_state(reset_partial_state=True)
    extra = ("--rank-reduction", "0.5", "--rr_start", "peak")  # λ = 0 until the peak is declared, then 0.5
    args = _args(method, *extra, *(("--queue_size", "4") if method == "esimcse" else ()))
    model, tokenizer = _training_model(tiny_bert, args, unpad)
    rr = RankReduction(model.method, args, total_steps=4)
    model.method = rr
    accelerator = Accelerator(cpu=True)
    optimizer = make_optimizer(model, 1e-3, 0.0, "cpu")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    step = TrainStep(model, optimizer, scheduler, accelerator, 0.05, 1.0)
    for i, declared in enumerate([False, True, False, True]):
        rr_weight = rr.begin_step(i, declared, optimizer, scheduler)
        inputs = rr.method.views(_batch(tokenizer, SENTENCES[i % 2 * 4:][:4]), i)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        terms, finite = step(inputs)
        loss, method_loss, vne, grad_norm = terms.tolist()
        assert finite and all(math.isfinite(v) for v in (loss, method_loss, vne, grad_norm))
        assert vne > 0  # measured at every step, also while λ is 0
        assert loss == pytest.approx(method_loss + rr_weight * vne, rel=1e-5)
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        assert any(not torch.equal(a, b) for a, b in zip(after, before))  # an update was made


@pytest.mark.parametrize("method", OTHERS)
def test_a_resumed_run_equals_the_uninterrupted_one(tmp_path, tiny_bert, corpus, fake_senteval, method):
    """8 steps with RR and --unpad_inputs; then the same run cut back to its step-4 state and resumed."""
    args = ("--method", method, "--max_train_steps", "8", "--eval_steps", "4", "--checkpointing_steps", "4",
            "--rank-reduction", "0.5", "--unpad_inputs", "--logging_steps", "1",
            *(("--queue_size", "16") if method == "esimcse" else ()))
    full = tmp_path / "full"
    proc = run(train_cmd(tiny_bert, corpus, fake_senteval, full, *args))
    assert proc.returncode == 0, proc.stderr[-3000:]
    cut = tmp_path / "cut"
    shutil.copytree(full, cut)
    shutil.rmtree(cut / "state" / "step_0000008")
    os.remove(cut / "summary.json")
    resumed = run(train_cmd(tiny_bert, corpus, fake_senteval, cut, *args, "--resume_from_checkpoint", "latest"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert records(cut) == records(full)
    for rel in ("state/step_0000008/model.safetensors", "best/model.safetensors"):
        assert (cut / rel).read_bytes() == (full / rel).read_bytes(), rel
    summary = json.load(open(full / "summary.json"))
    assert summary["method"] == method and summary["status"] == "finished"
    config = json.load(open(full / "best" / "config.json"))
    if method == "promptbert":  # the prompt and its [MASK] state: evaluate.py reads it, sentence-transformers cannot
        assert config["sentence_embedding"]["pooler"] == "mask"
        assert "NotExpressible" in (full / "best" / "modules.json").read_text()
    else:
        assert "sentence_embedding" not in config and (full / "best" / "modules.json").exists()


def test_a_queue_that_can_never_fill_is_refused(tmp_path, tiny_bert, corpus, fake_senteval):
    proc = run(train_cmd(tiny_bert, corpus, fake_senteval, tmp_path / "out", "--method", "esimcse",
                         "--max_train_steps", "3"))
    assert proc.returncode == 2
    assert "--queue_size: 160 rows can never fill" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# ----------------------------------------------------------------------------- two processes
# N processes = one process on the global batch, or (a per-process state: ESimCSE's queue, InfoCSE's
# BatchNorm statistics) each process its own; the registry says which
GLOBAL_BATCH = tuple(name for name, method in METHODS.items() if method.ddp_exact)
PER_PROCESS = tuple(name for name, method in METHODS.items() if not method.ddp_exact)


def _step(model, method, tokenizer, sentences, rr_weight=0.5):
    """Loss (+ RR on the gathered batch) and backward of one batch, as the training step computes them."""
    from utils.rank_reduction import vne_penalty

    out = model(method.views(_batch(tokenizer, sentences, pad_to=16), 0), 0.05)
    loss = out.loss + rr_weight * vne_penalty(torch.stack(out.z.chunk(2)), gather=True).mean()
    loss.backward()
    return loss.detach()


def _worker(rank, world, path, out):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    results = {}
    for method in GLOBAL_BATCH + PER_PROCESS:
        args = _args(method, "--queue_size", "8") if method == "esimcse" else _args(method)
        model, tokenizer = _training_model(path, args, dtype=torch.float64)
        ddp = DistributedDataParallel(model, broadcast_buffers=False)
        per = len(SENTENCES) // world
        losses = [_step(ddp, model.method, tokenizer, SENTENCES[rank * per:(rank + 1) * per]) for _ in range(2)]
        for loss in losses:
            dist.all_reduce(loss)
        results[method] = ([loss.item() / world for loss in losses],
                           {n: p.grad for n, p in model.named_parameters() if p.requires_grad})
        if method == "esimcse":  # each process queued its own half
            results["queue"] = model.method.queue[model.method.queue_size - int(model.method.queue_len):].clone()
    torch.save(results, f"{out}.{rank}")


def test_two_processes_match_one_on_the_global_batch_where_the_method_allows(tmp_path):
    from tests.conftest import run_gloo

    # dropout off: one process and two see the same views
    path = make_tiny_model(tmp_path / "m", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    out = tmp_path / "ranks"
    run_gloo(_worker, str(path), str(out))
    ranks = [torch.load(f"{out}.{r}") for r in range(2)]
    for method in GLOBAL_BATCH:
        model, tokenizer = _training_model(path, _args(method), dtype=torch.float64)
        losses = [_step(model, model.method, tokenizer, SENTENCES).item() for _ in range(2)]
        grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
        dist_losses, dist_grads = ranks[0][method]
        assert dist_losses == pytest.approx(losses, abs=1e-10), method
        for name, grad in grads.items():  # two steps' gradients, accumulated
            torch.testing.assert_close(dist_grads[name], grad, atol=1e-10, rtol=1e-8, msg=f"{method} {name}")
    for method in PER_PROCESS:  # the per-process methods run, with finite losses and DDP-averaged gradients
        for rank in ranks:
            assert all(math.isfinite(v) for v in rank[method][0]), method
        for name, grad in ranks[0][method][1].items():
            torch.testing.assert_close(ranks[1][method][1][name], grad, msg=f"{method} {name}")
    assert not torch.equal(ranks[0]["queue"], ranks[1]["queue"])  # never gathered: each process's own rows


def test_a_model_dependent_default_is_recorded_as_resolved_and_a_resume_may_name_it(tmp_path, tiny_bert, corpus,
                                                                                    fake_senteval):
    from tests.conftest import train_in_process

    out = tmp_path / "out"
    args = ("--method", "infocse", "--max_train_steps", "2", "--eval_steps", "2", "--checkpointing_steps", "1")
    train_in_process(tiny_bert, corpus, fake_senteval, out, *args[:-2], "--checkpointing_steps", "1",
                     "--max_train_steps", "1")
    assert json.load(open(out / "run.json"))["args"]["frozen_layers"] == 2  # min(6, the model's 2 layers)
    # the default given explicitly is the same training: the resume goes on
    train_in_process(tiny_bert, corpus, fake_senteval, out, *args, "--frozen_layers", "2",
                     "--resume_from_checkpoint", "latest")
    assert json.load(open(out / "summary.json"))["steps"] == 2
