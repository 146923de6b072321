"""train.py end to end on a tiny random BERT: outputs, export, resume after SIGKILL, bad inputs."""

import argparse
import errno
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import (REPO, convert_corpus, fresh_train_main, make_tiny_model, run_in_process, train_argv,
                            write_corpus)

TIMING_KEYS = {"elapsed_s", "sentences_per_s"}


def train_cmd(model, corpus, data, out, *extra):
    return [sys.executable, str(REPO / "train.py"), *train_argv(model, corpus, data, out, *extra)]


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300, **kw)


def train_here(model, corpus, data, out, *extra):
    """The run of `train_cmd` in this process, without an interpreter's start-up and imports."""
    return run_in_process(fresh_train_main, train_argv(model, corpus, data, out, *extra))


def records(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in f]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_bert, corpus, fake_senteval):
    out = tmp_path_factory.mktemp("run") / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "6", "--eval_steps", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_run_writes_metrics_summary_and_best(finished_run):
    recs = records(finished_run)
    evals = [r for r in recs if r["event"] == "eval"]
    trains = [r for r in recs if r["event"] == "train"]
    assert [r["step"] for r in evals] == [0, 3, 6]
    assert [r["step"] for r in trains] == [2, 4, 6]
    assert all({"loss", "lr", "epoch"} <= r.keys() for r in trains)
    assert all(math_finite(r["loss"]) for r in trains)
    summary = json.load(open(finished_run / "summary.json"))
    best = max(evals, key=lambda r: (r["stsb_dev"], -r["step"]))
    assert summary["status"] == "finished" and summary["steps"] == 6
    assert summary["best_step"] == best["step"]
    assert summary["best"]["stsb_dev"] == best["stsb_dev"]
    assert {"torch", "transformers", "accelerate"} <= summary["versions"].keys()
    assert summary["args"]["temp"] == 0.05 and summary["eval_pooler"] == "cls_before_pooler"
    best_metrics = json.load(open(finished_run / "best" / "best_metrics.json"))
    assert best_metrics["step"] == best["step"]


def math_finite(x):
    return x == x and abs(x) != float("inf")


def test_best_loads_in_transformers_and_sentence_transformers(finished_run):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    best = str(finished_run / "best")
    model, tok = AutoModel.from_pretrained(best), AutoTokenizer.from_pretrained(best)
    assert model.config.sentence_pooler == "cls_before_pooler"
    sentences = ["a man is playing guitar", "two dogs"]
    with torch.no_grad():
        cls = model(**tok(sentences, padding=True, return_tensors="pt")).last_hidden_state[:, 0]
    st = SentenceTransformer(best, device="cpu").encode(sentences, convert_to_tensor=True)
    torch.testing.assert_close(st, cls, atol=1e-5, rtol=1e-4)


def test_evaluate_scores_best_exactly_as_the_training_log(finished_run, fake_senteval, tmp_path):
    out = tmp_path / "eval.json"
    proc = run([sys.executable, str(REPO / "evaluate.py"), "--model_name_or_path", str(finished_run / "best"),
                "--mode", "dev", "--task_set", "sts", "--data_dir", str(fake_senteval), "--output_json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = json.load(open(finished_run / "best" / "best_metrics.json"))
    result = json.load(open(out))
    assert result["pooler"] == "cls_before_pooler"
    assert result["tasks"]["STSBenchmark"]["spearman"] == pytest.approx(logged["stsb_dev"], abs=1e-9)
    assert result["tasks"]["SICKRelatedness"]["spearman"] == pytest.approx(logged["sickr_dev"], abs=1e-9)


def test_sigkilled_run_resumes_to_the_uninterrupted_result(tmp_path, tiny_bert, corpus, fake_senteval):
    # RR with the target schedule (its controller's state is saved too); states every 5 steps, records every
    # 2: the loss window of a record spans a saved state, so it must be saved as well
    args = ("--max_train_steps", "40", "--eval_steps", "2", "--checkpointing_steps", "5", "--rank-reduction", "0.5",
            "--rr_schedule", "target", "--rr_patience", "1", "--rr_gain", "5")
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert train_here(tiny_bert, corpus, fake_senteval, full, *args).returncode == 0

    # the killed run reads the same sentences from JSON lines: the same batches, and the resume maps its Arrow copy
    lines = convert_corpus(corpus, tmp_path / "train.jsonl")
    proc = subprocess.Popen(train_cmd(tiny_bert, lines, fake_senteval, killed, *args), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not (killed / "state" / "step_0000015").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    resumed = train_here(tiny_bert, lines, fake_senteval, killed, *args, "--resume_from_checkpoint", "latest")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    assert records(killed) == records(full)
    weights = [r["rr_weight"] for r in records(full) if r["event"] == "train"]
    assert weights[0] == 0.5 and len(set(weights)) > 3  # STS-B dev stalled: the controller moved λ
    for rel in ("state/step_0000040/model.safetensors", "state/step_0000040/optimizer.bin", "best/model.safetensors"):
        assert (killed / rel).read_bytes() == (full / rel).read_bytes(), rel
    assert not [p for p in os.listdir(killed) if p.endswith((".tmp", ".old"))]


def test_two_cpu_processes_under_accelerate_launch(tmp_path, corpus, fake_senteval):
    # dropout off, so one process and two processes see the same views and must agree
    model = make_tiny_model(tmp_path / "m", "bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    # with an early stop: both end at the same evaluation
    args = ("--max_train_steps", "12", "--eval_steps", "2", "--logging_steps", "1", "--early_stopping_patience", "1")
    single = train_here(model, corpus, fake_senteval, tmp_path / "one", *args)
    assert single.returncode == 0, single.stderr[-3000:]
    # accelerate's --cpu launcher starts ONE process without MPI; --multi_gpu starts N (gloo on CPUs). The two
    # read the corpus from Parquet: one converts it while the other waits, and they draw the text file's batches
    table = convert_corpus(corpus, tmp_path / "train.parquet")
    cmd = train_cmd(model, table, fake_senteval, tmp_path / "two", *args, "--per_device_train_batch_size", "4", "--cpu")
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *cmd[1:]]
    double = run(launch)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = records(tmp_path / "one"), records(tmp_path / "two")
    assert one and [r["step"] for r in one] == [r["step"] for r in two]
    for a, b in zip(one, two):
        for key in ("loss", "stsb_dev", "sickr_dev"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (a, b)
    summary = json.load(open(tmp_path / "two" / "summary.json"))
    assert summary["num_processes"] == 2 and summary["global_batch_size"] == 8
    assert "2 process(es) x 4 = 8 per batch" in double.stdout and "1 process(es) x 8 = 8 per batch" in single.stdout
    assert summary["status"] == json.load(open(tmp_path / "one" / "summary.json"))["status"] == "early_stopped"


def expected_stop(evals, patience):
    """The step of the first evaluation `patience` evaluations after the best STS-B dev so far."""
    best, since = -math.inf, 0
    for r in evals:
        best, since = (r["stsb_dev"], 0) if r["stsb_dev"] > best else (best, since + 1)
        if since >= patience:
            return r["step"]
    return None


def test_early_stopping_ends_the_run_and_a_resume_says_it_has_finished(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    args = ("--max_train_steps", "60", "--eval_steps", "2", "--early_stopping_patience", "2")
    proc = train_here(tiny_bert, corpus, fake_senteval, out, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [r for r in records(out) if r["event"] == "eval"]
    stop = expected_stop(evals, 2)
    assert stop is not None and stop < 60 and evals[-1]["step"] == stop
    summary = json.load(open(out / "summary.json"))
    assert summary["status"] == "early_stopped" and summary["steps"] == stop
    assert summary["early_stopping"]["stopped_at_step"] == stop
    assert summary["compute"]["steps"] == stop and summary["compute"]["best_step"] == summary["best_step"]
    assert 0 <= summary["compute"]["best_train_seconds"] <= summary["compute"]["train_seconds"]
    assert (out / "state" / f"step_{stop:07d}").is_dir() and (out / "best" / "model.safetensors").is_file()
    assert not any(r["step"] > stop for r in records(out))
    # a resume of the stopped run: it has finished; nothing is trained or written
    log_before = (out / "metrics.jsonl").read_bytes()
    again = train_here(tiny_bert, corpus, fake_senteval, out, *args, "--resume_from_checkpoint", "latest")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "has finished" in again.stdout and (out / "metrics.jsonl").read_bytes() == log_before
    # more steps: it trains on from the stop
    longer = train_here(tiny_bert, corpus, fake_senteval, out, *args[2:], "--max_train_steps", "80",
                           "--resume_from_checkpoint", "latest")
    assert longer.returncode == 0, longer.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    assert summary["steps"] > stop and summary["resumes"][-1]["changed"] == {"max_train_steps": [60, 80]}


def test_accelerate_launch_cpu_form_runs(tmp_path, tiny_bert, corpus, fake_senteval):
    cmd = train_cmd(tiny_bert, corpus, fake_senteval, tmp_path / "out", "--max_train_steps", "2", "--eval_steps", "2")
    proc = run([sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", *cmd[1:]])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.load(open(tmp_path / "out" / "summary.json"))["status"] == "finished"


# ---- bad inputs: one clear error, exit code != 0, nothing already written is touched


def bad_run(tmp_path, tiny_bert, corpus, data, *extra, out=None):
    out = out or tmp_path / "out"
    proc = train_here(tiny_bert, corpus, data, out, "--max_train_steps", "2", *extra)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


@pytest.mark.parametrize("content, message", [
    (None, "no such file"), (b"", "is empty"), (b"\n \n", "only blank lines"),
    (b"ok\n\xc3\x28 broken\n", "line 2, byte 1: not valid UTF-8"),
])
def test_bad_train_file(tmp_path, tiny_bert, fake_senteval, content, message):
    path = tmp_path / "train.txt"
    if content is not None:
        path.write_bytes(content)
    err = bad_run(tmp_path, tiny_bert, path, fake_senteval)
    assert message in err and str(path) in err


def test_missing_and_malformed_eval_files(tmp_path, tiny_bert, corpus, fake_senteval):
    err = bad_run(tmp_path, tiny_bert, corpus, tmp_path / "nowhere")
    assert "nowhere" in err and "utils.download senteval" in err
    broken = tmp_path / "broken"
    os.system(f"cp -r {fake_senteval} {broken}")
    dev = broken / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv"
    dev.write_text(dev.read_text().replace("\t", " ", 8))
    err = bad_run(tmp_path, tiny_bert, corpus, broken)
    assert str(dev) in err and "line 1" in err


@pytest.mark.parametrize("flag, value", [
    ("--learning_rate", "0"), ("--temp", "-0.05"), ("--per_device_train_batch_size", "1"),
    ("--eval_steps", "0"), ("--max_seq_length", "5000"), ("--learning_rate", "nan"),
])
def test_out_of_range_flags(tmp_path, tiny_bert, corpus, fake_senteval, flag, value):
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, flag, value)
    assert flag in err


def test_existing_run_is_never_overwritten(tmp_path, tiny_bert, corpus, fake_senteval, finished_run):
    before = {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, out=finished_run)
    assert "already holds a run" in err
    assert before == {p: p.read_bytes() for p in finished_run.rglob("*") if p.is_file()}


def test_non_finite_loss_stops_and_keeps_the_last_good_state(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    # cos / 1e-40 overflows float32: the very first loss is NaN
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, "--temp", "1e-40", out=out)
    assert "loss became nan at step 1" in err
    summary = json.load(open(out / "summary.json"))
    # read with the first record (every 2 steps): both steps' updates were skipped, so the state saved at
    # step 2 holds the starting weights
    assert summary["status"].startswith("stopped") and summary["steps"] == 2
    saved = load_file(out / "state" / "step_0000002" / "model.safetensors")
    start = load_file(out / "best" / "model.safetensors")  # best/ is step 0's, the only evaluation
    assert json.load(open(out / "best" / "best_metrics.json"))["step"] == 0
    assert torch.equal(saved["model.encoder.embeddings.word_embeddings.weight"],
                       start["embeddings.word_embeddings.weight"])
    assert not [r for r in records(out) if r["event"] == "train"]  # no record of the non-finite window


# ---- representation rank: probe metrics, phases, Rank Reduction

RANK_ARGS = ("--pooler_type", "avg", "--max_train_steps", "30", "--eval_steps", "15", "--rank_eval_steps", "5", "--rank_eval_until", "10",
             "--learning_rate", "1e-3")


@pytest.fixture(scope="module")
def rank_runs(tmp_path_factory, tiny_bert, corpus, fake_senteval):
    root = tmp_path_factory.mktemp("rank")
    runs = {}
    for name, extra in {"base": (), "rr": ("--rank-reduction", "1.0")}.items():
        proc = train_here(tiny_bert, corpus, fake_senteval, root / name, *RANK_ARGS, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = root / name
    return runs


def test_rank_metrics_are_logged_densely_early_and_at_every_evaluation(rank_runs):
    recs = records(rank_runs["base"])
    rank_keys = {"effective_rank", "vne", "eig_effective_rank", "energy_rank", "alignment", "uniformity"}
    assert [(r["event"], r["step"]) for r in recs if r["event"] in ("eval", "rank")] == [
        ("eval", 0), ("rank", 5), ("rank", 10), ("eval", 15), ("eval", 30)]
    for r in recs:
        assert r["phase"] in (1, 2)
        if r["event"] in ("eval", "rank"):
            assert rank_keys <= r.keys() and 1 <= r["effective_rank"] <= 32
        if r["event"] == "eval":
            assert {"stsb_dev", "sickr_dev"} <= r.keys()
        if r["event"] == "rank":  # STS-B dev rides on the probe's embeddings: a dense series for the correlations
            assert "stsb_dev" in r and "sickr_dev" not in r and -100 <= r["stsb_dev"] <= 100
    summary = json.load(open(rank_runs["base"] / "summary.json"))
    peak = summary["rank"]["offline_peak"]
    evals = [r for r in recs if r["event"] in ("eval", "rank")]
    top = max(r["effective_rank"] for r in evals)
    assert peak["step"] == next(r["step"] for r in evals if r["effective_rank"] == top)
    assert peak["description"] and summary["rank"]["phase2_end_step"] == summary["best_step"]
    assert summary["train_step_seconds_mean"] > 0


def test_rank_reduction_lowers_the_rank_from_the_same_seed(rank_runs):
    base, rr = records(rank_runs["base"]), records(rank_runs["rr"])
    assert base[0] == rr[0]  # same seed, same starting evaluation
    assert rr[-1]["vne"] < base[-1]["vne"] - 0.05
    trains = [r for r in rr if r["event"] == "train"]
    assert all(r["rr_vne"] > 0 and 0 < r["rr_share"] for r in trains)
    assert all(abs(r["loss"] - (r["infonce"] + 1.0 * r["rr_vne"])) < 1e-4 for r in trains)
    assert "rr_vne" not in next(r for r in base if r["event"] == "train")
    assert json.load(open(rank_runs["rr"] / "summary.json"))["rank_reduction"]["weight"] == 1.0


@pytest.mark.parametrize("extra", [("--rr_on", "encoder"), ("--rr_start", "peak", "--save_peak_checkpoint")])
def test_rank_reduction_variants_run(tmp_path, tiny_bert, corpus, fake_senteval, extra):
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "6", "--eval_steps", "3",
                         "--rank_eval_steps", "1", "--rank-reduction", "0.5", *extra)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trains = [r for r in records(out) if r["event"] == "train"]
    summary = json.load(open(out / "summary.json"))
    assert all(r["rr_vne"] > 0 for r in trains)  # the batch VNE as measured, whatever λ is
    if "peak" in extra:  # RR waits for a declared peak; none comes in 6 steps of a random model, or it does
        declared = summary["rank"]["online_peak"]
        assert all((r["rr_weight_mean"] == 0) == (declared is None or r["step"] <= declared["declared_at_step"])
                   for r in trains)


def test_report_to_tensorboard_writes_events(tmp_path, tiny_bert, corpus, fake_senteval):
    pytest.importorskip("tensorboard", reason="tensorboard is a dev extra (requirements-dev.txt)")
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "2", "--eval_steps", "2",
                         "--report_to", "tensorboard")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert list((out / "simcse").glob("events.out.tfevents.*"))


def test_save_steps_exports_light_checkpoints_until_the_limit(tmp_path, tiny_bert, corpus, fake_senteval):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--pooler_type", "avg", "--max_train_steps", "4",
                         "--eval_steps", "4", "--rank_eval_until", "0", "--save_steps", "2", "--save_steps_until", "3")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(os.listdir(out / "checkpoints")) == ["step-000000", "step-000002"]  # step 4 > --save_steps_until
    step2 = out / "checkpoints" / "step-000002"
    info = json.load(open(step2 / "checkpoint.json"))
    assert info["step"] == 2 and info["args"]["save_steps"] == 2 and info["args"]["seed"] == 7
    assert json.load(open(step2 / "config.json"))["sentence_pooler"] == "avg"
    assert not [p for p in os.listdir(step2) if p.startswith(("optimizer", "scheduler", "random_states"))]
    start, saved0, saved2 = (load_file(p / "model.safetensors")
                             for p in (tiny_bert, out / "checkpoints" / "step-000000", step2))
    assert all(torch.equal(start[k], saved0[k]) for k in saved0)  # step 0 is the starting model
    assert any(not torch.equal(saved0[k], saved2[k]) for k in saved0)


# ---- speed flags: the same numbers, faster

def _numbers(out):
    """Training losses, and the evaluations' continuous metrics (Spearman, a rank statistic, can swap
    near-tied toy pairs on rounding alone)."""
    recs = records(out)
    evals = [r for r in recs if r["event"] == "eval"]
    return [r["loss"] for r in recs if r["event"] == "train"], \
        [r[k] for r in evals for k in ("effective_rank", "alignment", "uniformity")]


@pytest.fixture(scope="module")
def no_dropout_bert(tmp_path_factory):
    # dropout off: every flag set must then give the same losses (the dropout draws differ between them)
    return make_tiny_model(tmp_path_factory.mktemp("nodrop"), "bert", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


SPEED_ARGS = ("--max_train_steps", "4", "--eval_steps", "4", "--logging_steps", "1", "--rank-reduction", "0.5")


BF16 = ("--mixed_precision", "bf16")


@pytest.mark.parametrize("base, fast, tol", [
    ((), ("--unpad_inputs",), 1e-4),
    ((), ("--pad_to_max_length",), 1e-4),
    # one batch shape: one compilation, not a second one with dynamic shapes
    pytest.param(("--pad_to_max_length",), ("--pad_to_max_length", "--torch_compile"), 1e-4, marks=pytest.mark.skipif(
        not shutil.which("c++"), reason="torch.compile on a CPU needs a C++ compiler (none on PATH)")),
    (BF16, (*BF16, "--unpad_inputs"), 1e-3),  # bf16 autocast on the CPU: within 1e-3
])
def test_speed_flags_leave_the_numbers_unchanged(tmp_path, no_dropout_bert, corpus, fake_senteval, base, fast, tol):
    runs = {}
    for name, extra in {"plain": base, "fast": fast}.items():
        proc = train_here(no_dropout_bert, corpus, fake_senteval, tmp_path / name, *SPEED_ARGS, *extra)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[name] = _numbers(tmp_path / name)
    (plain_loss, plain_eval), (fast_loss, fast_eval) = runs["plain"], runs["fast"]
    assert len(plain_loss) == 4 and len(plain_eval) == 6
    assert fast_loss == pytest.approx(plain_loss, abs=tol)
    assert fast_eval == pytest.approx(plain_eval, rel=10 * tol, abs=1e-6)


def test_unpad_refuses_an_unsupported_model_by_flag(tmp_path, corpus, fake_senteval):
    model = make_tiny_model(tmp_path / "rel", "bert", position_embedding_type="relative_key")
    proc = train_here(model, corpus, fake_senteval, tmp_path / "out", "--unpad_inputs", "--max_train_steps", "1")
    assert proc.returncode == 2
    assert "--unpad_inputs" in proc.stderr and "relative_key" in proc.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


# ---- the optimizer step: gradient clipping, non-finite gradients, RR schedules

def _step_setup(tiny_bert, mixed_precision="no", temp=0.05, max_norm=0.0, rank_reduction=0.0, fused=False):
    """A TrainStep of SimCSE (with RR at weight `rank_reduction`), under plain SGD with lr 1 (the update IS minus
    the (clipped) gradient), or with `fused` train.py's fused AdamW."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from train import parse_args
    from utils.methods import METHODS, TrainingModel
    from utils.model import SimCSEModel, load_pretrained
    from utils.rank_reduction import RankReduction
    from utils.training import TrainStep, make_optimizer

    AcceleratorState._reset_state(reset_partial_state=True)  # one process-wide state: another test's precision
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    torch.manual_seed(0)
    sentence_model = SimCSEModel(encoder)
    objective = METHODS["simcse"](argparse.Namespace(seed=0), sentence_model, tokenizer)
    if rank_reduction:
        args = parse_args(["--train_file", "-", "--eval_data_dir", "-", "--output_dir", "-", "--rank-reduction",
                           str(rank_reduction)])
        objective = RankReduction(objective, args, total_steps=1)
    model = TrainingModel(sentence_model, objective).train()
    accelerator = Accelerator(cpu=True, mixed_precision=mixed_precision)
    optimizer = make_optimizer(model, 1e-3, 0.0, "cpu") if fused else torch.optim.SGD(model.parameters(), lr=1.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model, optimizer = accelerator.prepare(model, optimizer)
    if rank_reduction:
        objective.begin_step(0, False, optimizer, scheduler)
    step = TrainStep(model, optimizer, scheduler, accelerator, temp, max_norm)
    return model, step, tokenizer


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
@pytest.mark.parametrize("max_norm", [0.0, 1e-3])
def test_gradient_clipping_bounds_the_update(tiny_bert, mixed_precision, max_norm):
    model, step, tokenizer = _step_setup(tiny_bert, mixed_precision, max_norm=max_norm, rank_reduction=0.1)
    batch = dict(tokenizer(["a man is playing guitar", "two dogs", "the cat is small", "red ball"], padding=True,
                           return_tensors="pt"))
    before = [p.detach().clone() for p in model.parameters()]
    inputs = {k: torch.cat([v, v]) for k, v in batch.items()}  # SimCSE's two views
    terms, finite = step(inputs)
    assert finite
    update = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    grad_norm = terms[3].item()
    assert grad_norm > 10 * 1e-3  # the random model's gradient is far above the clipping threshold
    expected = grad_norm if max_norm == 0 else max_norm  # 0: not clipped, only measured
    assert update.item() == pytest.approx(expected, rel=1e-3)


def test_a_finite_loss_with_an_infinite_gradient_is_not_applied(tiny_bert):
    model, step, tokenizer = _step_setup(tiny_bert, temp=1e-30, fused=True)
    # repeated sentences and a tiny temperature: tied logits keep the loss at log(4), their gradient overflows
    batch = dict(tokenizer(["a man is playing"] * 4 + ["two dogs"] * 4, padding=True, return_tensors="pt"))
    before = [p.detach().clone() for p in model.parameters()]
    inputs = {k: torch.cat([v, v]) for k, v in batch.items()}
    terms, finite = step(inputs)
    assert math.isfinite(terms[0].item()) and not math.isfinite(terms[3].item()) and not finite
    # skipped on the device (no host wait): the weights and Adam's moments are as they were
    assert all(torch.equal(p.detach(), b) for p, b in zip(model.parameters(), before))
    assert all(not state or state["step"] == 0 for state in step.inner.state.values())


def test_an_infinite_gradient_is_skipped_and_stops_the_run_at_the_record(tmp_path, tiny_bert, fake_senteval):
    corpus = tmp_path / "repeated.txt"
    corpus.write_text("a man is playing\n" * 40)
    out = tmp_path / "out"
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, "--temp", "1e-30", out=out)
    assert "gradient norm became inf" in err and "at step 1" in err
    summary = json.load(open(out / "summary.json"))
    assert summary["status"].startswith("stopped") and summary["steps"] == 2  # read with the step-2 record


def test_rr_schedule_is_logged_and_decays(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "8", "--eval_steps", "8",
                         "--logging_steps", "1", "--rank-reduction", "0.4", "--rr_schedule", "linear")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trains = [r for r in records(out) if r["event"] == "train"]
    assert [r["rr_weight"] for r in trains] == pytest.approx([0.4 * (1 - k / 8) for k in range(8)])
    assert all(r["rr_weight_mean"] == pytest.approx(r["rr_weight"]) for r in trains)  # one step per record
    assert all(abs(r["loss"] - (r["infonce"] + r["rr_weight"] * r["rr_vne"])) < 1e-4 for r in trains)
    assert all(r["grad_norm"] > 0 for r in trains)
    assert json.load(open(out / "summary.json"))["rank_reduction"]["schedule"] == "linear"
    assert proc.stdout.startswith("SimCSE + RR | ") and "| 8 steps | eval pooler" in proc.stdout


# ---- the output folder as one run: resume checks, lock, corrupt states, unusable paths

@pytest.fixture()
def saved_run(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "run"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "4", "--eval_steps", "2",
                         "--checkpointing_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_a_resume_refuses_changed_training_flags_and_records_the_allowed_ones(saved_run, tiny_bert, corpus,
                                                                               fake_senteval):
    before = {p: p.read_bytes() for p in saved_run.rglob("*") if p.is_file() and p.name != ".lock"}
    latest = ("--resume_from_checkpoint", "latest")
    proc = train_here(tiny_bert, corpus, fake_senteval, saved_run, "--max_train_steps", "4", "--eval_steps", "2",
                         "--learning_rate", "2e-3", "--temp", "0.1", *latest)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--learning_rate 0.001 (now 0.002)" in proc.stderr and "--temp 0.05 (now 0.1)" in proc.stderr
    assert before == {p: p.read_bytes() for p in saved_run.rglob("*") if p.is_file() and p.name != ".lock"}

    longer = train_here(tiny_bert, corpus, fake_senteval, saved_run, "--max_train_steps", "6", "--eval_steps", "2",
                           "--logging_steps", "1", *latest)
    assert longer.returncode == 0, longer.stderr[-3000:]
    summary = json.load(open(saved_run / "summary.json"))
    assert summary["steps"] == 6 and summary["args_at_start"]["max_train_steps"] == 4
    assert summary["resumes"] == [{"step": 4, "from": str(saved_run / "state" / "step_0000004"),
                                   "changed": {"checkpointing_steps": [2, None], "logging_steps": [2, 1],
                                               "max_train_steps": [4, 6]}}]


def test_a_state_of_another_run_or_no_state_at_all_is_refused(saved_run, tmp_path, tiny_bert, corpus, fake_senteval):
    other = tmp_path / "other"
    assert train_here(tiny_bert, corpus, fake_senteval, other, "--max_train_steps", "2",
                         "--eval_steps", "2").returncode == 0
    foreign = str(saved_run / "state" / "step_0000002")
    for out, path, message in ((other, foreign, "saved by another run"),
                               (tmp_path / "new", foreign, "holds no run to resume"),
                               (saved_run, str(saved_run / "best"), "not a training state")):
        err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, "--eval_steps", "2",
                      "--resume_from_checkpoint", path, out=out)
        assert message in err, err


def test_a_corrupt_newest_state_falls_back_to_the_previous_one(saved_run, tmp_path, tiny_bert, corpus, fake_senteval):
    newest = saved_run / "state" / "step_0000004" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    args = ("--max_train_steps", "4", "--eval_steps", "2", "--checkpointing_steps", "2")
    proc = train_here(tiny_bert, corpus, fake_senteval, saved_run, *args, "--resume_from_checkpoint", "latest")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step_0000004 cannot be loaded" in proc.stdout + proc.stderr and "at step 2" in proc.stdout
    newest = saved_run / "state" / "step_0000004" / "model.safetensors"  # written again by the resumed run
    newest.write_bytes(newest.read_bytes()[:100])
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, *args, "--resume_from_checkpoint",
                  str(saved_run / "state" / "step_0000004"), out=saved_run)
    last = err.strip().splitlines()[-1]  # after the model's loading bar: the state is loaded into the model
    assert last.startswith("error: --resume_from_checkpoint") and "step_0000004 cannot be loaded" in last


def test_two_processes_never_train_into_one_folder(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    first = subprocess.Popen(train_cmd(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "400",
                                       "--eval_steps", "400", "--checkpointing_steps", "1"),
                             cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not list((out / "state").glob("step_*[0-9]")) if (out / "state").exists() else True:
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, "--max_train_steps", "400", "--eval_steps", "400",
                      "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest", out=out)
        assert f"in use by another train.py process (pid {first.pid})" in err
    finally:
        first.kill()
        first.wait()


def test_evaluation_files_without_enough_pairs_are_refused_before_training(tmp_path, tiny_bert, corpus,
                                                                           fake_senteval):
    data = tmp_path / "data"
    shutil.copytree(fake_senteval, data)
    dev = data / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv"
    dev.write_text("")
    err = bad_run(tmp_path, tiny_bert, corpus, data)
    assert f"{dev}: 0 scored pairs" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_a_run_without_a_finite_evaluation_does_not_finish(tmp_path, tiny_bert, corpus, fake_senteval):
    data = tmp_path / "data"
    shutil.copytree(fake_senteval, data)
    dev = data / "downstream" / "STS" / "STSBenchmark" / "sts-dev.csv"
    lines = [line.split("\t") for line in dev.read_text().splitlines()]
    dev.write_text("".join("\t".join(c[:4] + ["2.5"] + c[5:]) + "\n" for c in lines))  # constant gold: NaN
    err = bad_run(tmp_path, tiny_bert, corpus, data, "--eval_steps", "2")
    assert "no evaluation gave a finite STS-B dev score" in err
    assert json.load(open(tmp_path / "out" / "summary.json"))["status"].startswith("stopped")


@pytest.mark.parametrize("case", ["file", "under_file", "empty"])
def test_an_unusable_output_dir_is_one_error(tmp_path, tiny_bert, corpus, fake_senteval, case):
    (tmp_path / "a_file").write_text("x")
    out = {"file": tmp_path / "a_file", "under_file": tmp_path / "a_file" / "run", "empty": ""}[case]
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "1")
    assert proc.returncode == 2 and proc.stderr.startswith("error: --output_dir")
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("extra, message", [
    (("--seed", "-1"), "--seed"), (("--seed", str(2 ** 32)), "--seed"),
    (("--report_to", "wandb"), "--report_to: the wandb package is not installed"),
])
def test_seed_range_and_missing_trackers(tmp_path, tiny_bert, corpus, fake_senteval, extra, message):
    if "wandb" in extra and importlib.util.find_spec("wandb"):
        pytest.skip("wandb is installed here")
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, *extra)
    assert message in err


def test_the_missing_evaluation_folder_names_its_flag(tmp_path, tiny_bert, corpus):
    err = bad_run(tmp_path, tiny_bert, corpus, tmp_path / "nowhere")
    assert "(--eval_data_dir is" in err


def test_a_full_disk_is_one_error_and_leaves_no_half_written_folder(tmp_path, tiny_bert, corpus, fake_senteval,
                                                                     monkeypatch, capsys):
    import train

    import utils.run_folder

    write = utils.run_folder.write_json_atomic

    def full_disk(path, *a, **k):  # the disk fills at the first save of best/ (run.json went before)
        if "best_metrics" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", path)
        return write(path, *a, **k)

    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # train.main builds its own Accelerator here
    monkeypatch.setattr(utils.run_folder, "write_json_atomic", full_disk)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as stop:
        train.main(train_cmd(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "2")[2:])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: no space left on the disk") and "best_metrics.json" in err[-1]
    assert not err[-2].startswith("error")  # one line (after the progress bar's)
    assert not (out / "best").exists() and not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_rr_target_schedule_steers_lambda_after_the_stall(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "12", "--eval_steps", "2",
                         "--logging_steps", "1", "--rank-reduction", "0.5", "--rr_schedule", "target",
                         "--rr_patience", "1", "--rr_gain", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.load(open(out / "summary.json"))
    stalled = summary["rank_reduction"]["schedule_state"]["decay_from"]
    trains = [r for r in records(out) if r["event"] == "train"]
    assert all(r["rr_vne"] > 0 for r in trains)  # measured at every step, whatever λ is
    assert stalled is not None  # the toy model's STS-B dev stalls within 12 steps (seed 7, deterministic on CPU)
    assert {r["rr_weight"] for r in trains if r["step"] <= stalled} == {0.5}
    assert len({r["rr_weight"] for r in trains if r["step"] > stalled + 1}) > 1


def test_rr_watch_every_lets_the_rank_evaluations_end_the_plateau(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "12", "--eval_steps", "100",
                         "--rank_eval_steps", "1", "--rank_eval_until", "12", "--logging_steps", "1",
                         "--rank-reduction", "0.5", "--rr_schedule", "plateau", "--rr_patience", "1",
                         "--rr_watch", "every")
    assert proc.returncode == 0, proc.stderr[-3000:]
    stalled = json.load(open(out / "summary.json"))["rank_reduction"]["schedule_state"]["decay_from"]
    assert stalled is not None and 0 < stalled < 12  # a rank evaluation's score: no full evaluation in between
    dev = {r["step"]: r["stsb_dev"] for r in records(out) if r["event"] == "rank"}
    assert dev[stalled] <= max(v for step, v in dev.items() if step < stalled)  # the first non-improving score
    assert all(dev[step] > max([v for k, v in dev.items() if 0 < k < step], default=-1e9)
               for step in dev if 0 < step < stalled)
    trains = [r for r in records(out) if r["event"] == "train"]
    assert {r["rr_weight"] for r in trains if r["step"] <= stalled} == {0.5}
    assert {r["rr_weight"] for r in trains if r["step"] > stalled} == {0.0}  # plateau, no decay steps: off at once



def test_rr_anneal_lr_ends_the_run_once_the_learning_rate_is_0(tmp_path, tiny_bert, corpus, fake_senteval):
    out = tmp_path / "out"
    proc = train_here(tiny_bert, corpus, fake_senteval, out, "--max_train_steps", "12", "--eval_steps", "100",
                         "--rank_eval_steps", "1", "--rank_eval_until", "12", "--logging_steps", "1",
                         "--rank-reduction", "0.5", "--rr_schedule", "plateau", "--rr_patience", "1",
                         "--rr_watch", "every", "--rr_anneal_lr", "--rr_decay_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "and the learning rate decays to 0" in proc.stdout + proc.stderr
    stalled = json.load(open(out / "summary.json"))["rank_reduction"]["schedule_state"]["decay_from"]
    assert stalled is not None and stalled <= 8  # the same toy run as above stalls early (seed 7)
    trains = {r["step"]: r for r in records(out) if r["event"] == "train"}
    # the logged lr is the next step's: the linear LR schedule's value until the stall, then half, then 0
    assert all(trains[step]["lr"] > 0 for step in trains if step <= stalled)
    assert trains[stalled + 1]["lr"] == pytest.approx(0.5 * 1e-3 * (1 - (stalled + 1) / 12))
    assert {trains[step]["lr"] for step in trains if step >= stalled + 2} == {0.0}
    # with lr 0 the weights no longer move: the run ends at the first evaluation that sees it, as an early stop
    summary = json.load(open(out / "summary.json"))
    assert "the learning rate has reached 0 (--rr_anneal_lr)" in proc.stdout
    assert summary["status"] == "early_stopped" and summary["steps"] == stalled + 2 < 12
    assert summary["early_stopping"]["stopped_at_step"] == stalled + 2
    assert max(r["step"] for r in records(out)) == stalled + 2
    dev = {r["step"]: r["stsb_dev"] for r in records(out) if r["event"] in ("rank", "eval")}
    assert len({dev[step] for step in dev if step <= stalled}) > 1


def test_rr_anneal_lr_needs_a_stall_detecting_schedule(tmp_path, tiny_bert, corpus, fake_senteval):
    err = bad_run(tmp_path, tiny_bert, corpus, fake_senteval, "--rank-reduction", "0.1", "--rr_anneal_lr")
    assert "--rr_anneal_lr" in err and "--rr_schedule plateau or target" in err


# ---- flags that cannot work with this model or method: refused at the start, by name


def test_an_mlp_read_at_evaluation_needs_a_pooler_slot_in_the_export(tiny_bert):
    from transformers import DistilBertConfig, DistilBertModel

    from train import model_problem, parse_args
    from utils.model import load_pretrained

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    base = ["--train_file", "-", "--eval_data_dir", "-", "--output_dir", "-", "--max_seq_length", "16"]
    distil = DistilBertModel(DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=1, n_heads=4, hidden_dim=64))
    message = model_problem(parse_args([*base, "--no-mlp_only_train"]), distil, tokenizer, 64)
    assert message.startswith("--no-mlp_only_train: the MLP is read at evaluation, and DistilBertModel has no pooler")
    assert model_problem(parse_args(base), distil, tokenizer, 64) is None  # the raw [CLS]: nothing to hold
    assert model_problem(parse_args([*base, "--no-mlp_only_train"]), encoder, tokenizer, 64) is None  # BERT has one


@pytest.mark.parametrize("extra, message", [
    (("--method", "infocse", "--mlm_weight", "nan"), "argument --mlm_weight: must be >= 0, got nan"),
    (("--method", "promptbert", "--pooler_type", "avg"), "argument --pooler_type: PromptBERT reads the [MASK] state"),
    (("--rank-reduction", "0.1", "--rr_schedule", "linear", "--rr_decay_steps", "0"), "argument --rr_decay_steps: 0"),
    (("--method", "esimcse", "--dup_rate", "inf"), "argument --dup_rate: must be >= 0, got inf"),
])
def test_flag_values_that_cannot_train_are_refused_by_name(tmp_path, tiny_bert, corpus, fake_senteval, extra, message):
    import train

    proc = run_in_process(train.main, train_argv(tiny_bert, corpus, fake_senteval, tmp_path / "out", *extra))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_promptbert_refuses_a_max_seq_length_its_templates_cannot_hold(tmp_path, corpus, fake_senteval):
    import train

    short = make_tiny_model(tmp_path / "short", "bert", max_position_embeddings=24)  # 10 template tokens + 14
    proc = run_in_process(train.main, train_argv(short, corpus, fake_senteval, tmp_path / "out", "--method",
                                                 "promptbert", "--max_seq_length", "20"))
    assert proc.returncode == 2
    assert "argument --max_seq_length: 20 tokens put in PromptBERT's templates outrun the encoder's 24 positions" \
        in proc.stderr and "Traceback" not in proc.stderr
