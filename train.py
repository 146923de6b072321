"""Unsupervised SimCSE and its follow-ups: fine-tune a pretrained encoder so that two views of a sentence agree.

Each batch is encoded twice in ONE forward pass (the batch stacked on itself: dropout makes the two
views), and the loss is InfoNCE over cosine / temp with in-batch negatives (utils/loss.py). --method
mixcse | esimcse | promptbert | infocse trains one of the paper's other four methods instead, each with
its own data change, state and loss (utils/methods/, docs/methods.md), in the same loop. Every
--eval_steps the encoder is scored on STS-B dev and SICK-R trial; the best STS-B dev checkpoint is kept
in OUTPUT_DIR/best/, loadable by transformers.AutoModel and sentence_transformers.SentenceTransformer.

    # SimCSE's recipe (batch 64, lr 3e-5, max_len 32, temp 0.05, [CLS] + MLP in training only)
    python train.py --model_name_or_path bert-base-uncased --train_file data/wiki1m_for_simcse.txt \
        --eval_data_dir data --output_dir runs/unsup-simcse-bert

    # faster (README, Speed): --unpad_inputs skips the padding; on a GPU also --mixed_precision bf16, or
    # --pad_to_max_length --torch_compile reduce-overhead for CUDA graphs; `python -m utils.bench` measures

    # another method, with its published recipe's batch / lr / epochs (python -m utils.methods recipe NAME)
    python train.py --method esimcse ... ;  python train.py --method promptbert --per_device_train_batch_size 256 \
        --learning_rate 1e-5 ...

    # several GPUs (negatives are gathered from all processes: 4 x 64 = 256 per batch)
    accelerate launch --num_processes 4 train.py ... --per_device_train_batch_size 16

    # one-minute smoke run on a CPU
    python train.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \
        --train_file ../shared/data/train/wiki1m_for_simcse.first11914.txt --eval_data_dir ../shared/data \
        --max_train_steps 20 --eval_steps 10 --per_device_train_batch_size 16 --output_dir runs/smoke

Outputs in OUTPUT_DIR: metrics.jsonl (one JSON object per log/eval event), summary.json (at the end),
best/ (the best STS-B dev checkpoint), state/step_NNNNNNN/ (full training state, with
--checkpointing_steps; resume with --resume_from_checkpoint latest), checkpoints/step-NNNNNN/ (encoder
exports for analyze_rank.py, with --save_steps).
"""

import argparse
import errno
import importlib.util
import math
import os
import sys
import time

import torch

from utils.checkpoint import atomic_dir, export_dir_name, publish_dir, recover_dir, state_dir_name, state_dirs
from utils.cli import number, seed_number
from utils.data import DataError, SentenceBatches, check_output_path, read_sentences
from utils.encode import EmbeddingCache, default_max_length, encode
from utils.methods import METHODS, TrainingModel
from utils.model import ModelLoadError, SimCSEModel, load_pretrained
from utils.phase import PeakCheckpoint, PeakDetector, describe_peak, offline_peak
from utils.plateau import EarlyStopping
from utils.pooling import SIMCSE_POOLERS
from utils.rank import RANK_METRICS, RR_SOLVERS, probe_metrics, stsb_probe, vne_penalty
from utils.rr_schedule import SCHEDULES, STALL_SCHEDULES, RRSchedule
from utils.run_folder import (FolderLock, RunFolderError, check_state, compare_args, mark_state, new_run, read_run,
                              resumable_states)
from utils.run_log import MetricsLog, versions, write_json_atomic
from utils.sts import check_dev_pairs, load_sts_tasks, score_sts
from utils.unpad import unsupported_reason


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # method (utils/methods/): SimCSE or a follow-up; each one's own flags are listed below with their defaults
    p.add_argument("--method", default="simcse", choices=list(METHODS),
                   help="the contrastive objective: unsup SimCSE, MixCSE, ESimCSE, PromptBERT, InfoCSE")
    # model
    p.add_argument("--model_name_or_path", default="bert-base-uncased", help="hub name or local folder")
    p.add_argument("--pooler_type", default="cls", choices=SIMCSE_POOLERS, help="sentence embedding in training")
    p.add_argument("--mlp_only_train", action=argparse.BooleanOptionalAction, default=True,
                   help="`cls` only: the MLP on [CLS] in training, raw [CLS] at evaluation (SimCSE unsup)")
    p.add_argument("--temp", type=number(float, 0, inclusive=False), default=0.05, help="softmax temperature")
    # data
    p.add_argument("--train_file", required=True, help="text file, one sentence per line")
    p.add_argument("--max_seq_length", type=number(int, 2), default=32, help="tokens, longer is cut")
    p.add_argument("--pad_to_max_length", action="store_true",
                   help="pad every batch to --max_seq_length: one shape for --torch_compile (CUDA graphs)")
    p.add_argument("--eval_data_dir", required=True, help="SentEval data/ folder (downstream/STS, downstream/SICK)")
    # optimisation
    p.add_argument("--per_device_train_batch_size", type=number(int, 2), default=64,
                   help="sentences per process and step; the global batch is this x processes")
    p.add_argument("--learning_rate", type=number(float, 0, inclusive=False), default=3e-5, help="AdamW peak learning rate")
    p.add_argument("--weight_decay", type=number(float, 0), default=0.0,
                   help="AdamW weight decay (not on biases and LayerNorm weights)")
    p.add_argument("--num_train_epochs", type=number(int, 1), default=1, help="passes over --train_file")
    p.add_argument("--max_train_steps", type=number(int, 1), default=None,
                   help="total optimizer steps; overrides --num_train_epochs")
    p.add_argument("--lr_scheduler_type", default="linear",
                   choices=["linear", "cosine", "constant", "constant_with_warmup"],
                   help="learning-rate schedule over the total steps (transformers' get_scheduler)")
    p.add_argument("--warmup_steps", type=number(int, 0), default=0, help="linear warm-up steps")
    p.add_argument("--max_grad_norm", type=number(float, 0), default=1.0,
                   help="clip the gradient norm to this (the HF Trainer's default, which SimCSE trains with); 0 = off")
    p.add_argument("--seed", type=seed_number, default=42, help="seeds the MLP init, dropout and the data order")
    p.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"],
                   help="autocast through accelerate; weights and optimizer stay float32")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    p.add_argument("--unpad_inputs", action="store_true",
                   help="run the encoder's token-wise layers on real tokens only (utils/unpad.py; BERT-style "
                        "encoders): same results up to rounding and dropout draws, ~1/3 less work at max_len 32")
    p.add_argument("--torch_compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile the training forward (mode; reduce-overhead = CUDA graphs, wants "
                        "--pad_to_max_length); off by default")
    # evaluation, logging, checkpoints
    p.add_argument("--eval_steps", type=number(int, 1), default=125, help="STS-B/SICK-R dev every N steps")
    p.add_argument("--early_stopping_patience", type=number(int, 0), default=0,
                   help="end the run once STS-B dev has not improved for N evaluations (0: off)")
    p.add_argument("--eval_batch_size", type=number(int, 1), default=128, help="sentences per encode batch (on a GPU: a budget of this x 64 tokens)")
    p.add_argument("--logging_steps", type=number(int, 1), default=10, help="loss record every N steps")
    p.add_argument("--output_dir", required=True, help="metrics.jsonl, summary.json, best/, state/ go here")
    p.add_argument("--checkpointing_steps", type=number(int, 1), default=None,
                   help="save the full training state every N steps (for --resume_from_checkpoint)")
    p.add_argument("--checkpoints_total_limit", type=number(int, 1), default=None,
                   help="keep only the newest N training states (None: keep all)")
    p.add_argument("--resume_from_checkpoint", default=None, help="a state/step_N folder, or `latest`")
    p.add_argument("--save_steps", type=number(int, 1), default=None,
                   help="export the encoder (like best/, no optimizer) to checkpoints/step-NNNNNN/ at step 0 "
                        "and every N steps, for analyze_rank.py")
    p.add_argument("--save_steps_until", type=number(int, 0), default=None,
                   help="last step --save_steps exports at (dense early, none later; None: to the end)")
    # representation rank (Jung et al. 2024): probe metrics, phases, Rank Reduction
    p.add_argument("--rank_eval_steps", type=number(int, 1), default=10,
                   help="rank metrics of the probe set every N steps until --rank_eval_until (the peak comes early)")
    p.add_argument("--rank_eval_until", type=number(int, 0), default=500,
                   help="last step of the dense rank schedule (0: rank metrics only at --eval_steps)")
    p.add_argument("--probe_split", default="dev", choices=["train", "dev", "test"],
                   help="STS-B split whose sentences form the probe set (positives for alignment: gold > 4)")
    p.add_argument("--energy_tau", type=number(float, 0, inclusive=False), default=0.9,
                   help="energy_rank: smallest k holding this share of the squared singular values")
    p.add_argument("--phase_metric", default="effective_rank", choices=RANK_METRICS,
                   help="the rank metric whose peak splits Phase 1 from Phase 2")
    p.add_argument("--phase_patience", type=number(int, 1), default=3,
                   help="the peak is declared after this many evaluations below it by --phase_margin")
    p.add_argument("--phase_margin", type=number(float, 0), default=0.01,
                   help="relative drop below the running peak that counts as falling")
    p.add_argument("--save_peak_checkpoint", action="store_true",
                   help="also export the model at the rank peak to OUTPUT_DIR/peak/")
    p.add_argument("--rank-reduction", "--rank_reduction", dest="rank_reduction", type=number(float, 0), default=0.0,
                   help="RR weight lambda: loss = InfoNCE + lambda * VNE(batch embeddings); 0 = off")
    p.add_argument("--rr_on", default=None, choices=["mlp", "encoder"],
                   help="RR on the training embedding (after the training head) or on the encoder's pooled output "
                        "(PromptBERT: the denoised [MASK] state); None: the method's default (mlp for all five)")
    p.add_argument("--rr_solver", default="eigh", choices=RR_SOLVERS,
                   help="how the VNE and its gradient are computed: eigh (an eigendecomposition; the faster one on "
                        "a CPU) or quadrature (matrix products and batched inverses only, no eigendecomposition: "
                        "utils/matrix_entropy.py); the same value to ~1e-5")
    p.add_argument("--rr_start", default="0", choices=["0", "peak"],
                   help="RR from step 0, or from the detected rank peak on")
    p.add_argument("--rr_schedule", default="constant", choices=SCHEDULES,
                   help="lambda over training (utils/rr_schedule.py): constant; linear or cosine decay to 0 over "
                        "--rr_decay_steps; plateau: constant until STS-B dev stops improving, then off")
    p.add_argument("--rr_decay_steps", type=number(int, 0), default=None,
                   help="linear/cosine: steps from RR's start to lambda = 0 (None: to the last step); "
                        "plateau: steps of the linear decay once STS-B dev stalls (None or 0: off at once); with "
                        "--rr_anneal_lr also the learning rate's decay (plateau or target)")
    p.add_argument("--rr_patience", type=number(int, 1), default=2,
                   help="plateau, target: evaluations (every --eval_steps) without a new best STS-B dev before "
                        "lambda decays (plateau) or is steered (target)")
    p.add_argument("--rr_watch", default="eval", choices=["eval", "every"],
                   help="plateau, target: which STS-B dev scores count towards --rr_patience: the evaluations every "
                        "--eval_steps (eval), or also the rank evaluations' (every; dense early in training, where "
                        "RR's best comes)")
    p.add_argument("--rr_gain", type=number(float, 0, inclusive=False), default=0.2,
                   help="target: lambda += gain * rank_reduction * (batch VNE - its value at the best evaluation) "
                        "per step, in [0, 2 * rank_reduction]")
    p.add_argument("--rr_anneal_lr", action="store_true",
                   help="plateau, target: once STS-B dev stalls, the learning rate also decays linearly to 0 over "
                        "--rr_decay_steps (0 or None: at once), so the model stays at RR's early best instead of "
                        "training on past it; the later steps no longer change the weights")
    p.add_argument("--report_to", default="none", choices=["none", "tensorboard", "wandb", "all"],
                   help="also send the records to these trackers (accelerate; logs under OUTPUT_DIR)")
    owner = {}  # each method's own flags: default None here, so that a flag given for another method is seen
    for method in METHODS.values():
        group = p.add_argument_group(f"--method {method.name} only")
        for flag, kwargs in method.flags:
            owner[flag] = method
            kwargs = dict(kwargs)
            default = kwargs.pop("default")
            kwargs["help"] = f"{kwargs.get('help', '')} (default: {default})"
            group.add_argument(flag, default=None, **kwargs)
    args = p.parse_args(argv)
    method = METHODS[args.method]
    for flag, flag_owner in owner.items():
        dest = flag.lstrip("-").replace("-", "_")
        if flag_owner is not method and getattr(args, dest) is not None:
            p.error(f"argument {flag}: belongs to --method {flag_owner.name}; this run trains --method {args.method}")
    for flag, kwargs in method.flags:
        dest = flag.lstrip("-").replace("-", "_")
        if getattr(args, dest) is None:
            setattr(args, dest, kwargs["default"])
    problem = method.check_args(args)
    if problem:
        p.error(problem)
    if args.rr_on is None:
        args.rr_on = method.rr_default
    if args.energy_tau > 1:
        p.error(f"argument --energy_tau: must be <= 1, got {args.energy_tau}")
    if args.phase_margin >= 1:
        p.error(f"argument --phase_margin: must be < 1, got {args.phase_margin}")
    if args.rr_anneal_lr and (args.rr_schedule not in STALL_SCHEDULES or args.rank_reduction <= 0):
        p.error(f"argument --rr_anneal_lr: needs --rank_reduction > 0 and --rr_schedule plateau or target (the "
                f"schedules that detect the stall), got --rank_reduction {args.rank_reduction} --rr_schedule "
                f"{args.rr_schedule}")
    if args.mlp_only_train and args.pooler_type != "cls":
        args.mlp_only_train = False  # only `cls` has an MLP: the flag means nothing for other poolers
    return args


def make_optimizer(model, lr: float, weight_decay: float, device) -> torch.optim.AdamW:
    """AdamW without weight decay on biases and LayerNorm weights; torch's fused kernel on CUDA and CPU
    (the same update in one pass over the parameters: one launch on a GPU; on this project's 2-core CPU
    13 ms instead of 65 ms per step for MiniLM's 22.7M parameters), the default elsewhere."""
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    trained = [(n, p) for n, p in model.named_parameters() if p.requires_grad]  # not frozen or momentum copies
    groups = [
        {"params": [p for n, p in trained if not n.endswith(no_decay)], "weight_decay": weight_decay},
        {"params": [p for n, p in trained if n.endswith(no_decay)], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, fused=torch.device(device).type in ("cuda", "cpu") or None)


def train_step(model, optimizer, scheduler, accelerator, inputs, temp: float, rr_weight: float = 0.0,
               rr_on: str = "mlp", max_grad_norm: float = 0.0, measure_vne: bool = False, rr_solver: str = "eigh"):
    """One optimizer step of the method (+ Rank Reduction when rr_weight > 0) on its inputs.

    model: a (prepared) utils.methods.TrainingModel; inputs: its method's `views(batch, step)`, both views.
    Returns (terms, finite): terms = the detached (loss, the method's loss, VNE, gradient norm before clipping), the
    first three averaged over processes, left on the device; finite = whether the loss and the gradient
    norm were finite (when not, no update is made: a finite loss can still overflow the gradients, and
    one inf would put inf into Adam's second moments for good). The one value the host waits for is
    that flag, once the backward pass is queued. measure_vne: compute the VNE even at rr_weight 0 (an RR
    run logs it at every step; the target schedule's controller reads it).
    """
    inputs = {k: v.to(accelerator.device, non_blocking=True) for k, v in inputs.items()}
    # One forward pass of both views (rows [0, B) and [B, 2B)) and the method's loss, in the DDP-wrapped module
    out = model(inputs, temp)
    rr_input = torch.stack((out.pooled if rr_on == "encoder" else out.z).chunk(2))  # (2, B, H): both views
    infonce = out.loss
    loss, vne = infonce, infonce.new_zeros(())
    if rr_weight > 0:
        # Rank Reduction: lower the von Neumann entropy (log effective rank) of each view's global batch
        vne = vne_penalty(rr_input, gather=True, solver=rr_solver).mean()  # both views, one call
        loss = infonce + rr_weight * vne
    elif measure_vne:  # λ is 0 (before the peak, after a decay): the entropy is still measured, without a graph
        with torch.no_grad():
            vne = vne_penalty(rr_input.detach(), gather=True, solver=rr_solver).mean()
    terms = accelerator.reduce(torch.stack([loss, infonce, vne]).detach(), reduction="mean")
    accelerator.backward(loss)
    # The norm of the gradients every process holds after DDP's averaging (so the same on all); clipped
    # to max_grad_norm, or only measured (max_norm inf: a multiply by 1) when clipping is off.
    grad_norm = accelerator.clip_grad_norm_(model.parameters(), max_grad_norm or math.inf)
    terms = torch.cat([terms, grad_norm.detach().float().reshape(1).to(terms.device)])
    # fp16: an inf gradient is the loss scaler's to handle (it skips the step and lowers the scale)
    checked = terms if accelerator.mixed_precision != "fp16" else terms[:1]
    if not torch.isfinite(checked).all():
        return terms, False
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return terms, True


def in_training_eval(model, tokenizer, dev_tasks, probe_sentences, probe_pairs, full: bool, *, batch_size: int,
                     max_length: int, device, energy_tau: float = 0.9, template=None) -> dict:
    """Rank metrics of the probe set and STS-B dev Spearman x 100, and when `full` SICK-R trial too, with the
    model's evaluation pooler and one encode per sentence.

    dev_tasks: utils.sts.load_sts_tasks(data_dir, "dev"). STS-B dev is scored at every call: with the dev
    probe set (the default) its sentences are the probe's, already embedded, so the dense rank schedule
    gets a dense STS-B dev series (for the rank-STS correlations) for the price of a Spearman. template:
    None, or the method's formatter of the sentences (PromptBERT's prompt) before they are tokenized.
    """
    embed = EmbeddingCache(lambda s: encode(model, tokenizer, template(s) if template else s, batch_size=batch_size,
                                            max_length=max_length, device=device))
    # rank metrics on the model's device: on a GPU its float64 matrix products replace the host's
    metrics = probe_metrics(embed(probe_sentences).to(device), probe_pairs, tau=energy_tau)
    tasks = dev_tasks if full else {"STSBenchmark": dev_tasks["STSBenchmark"]}
    scores = score_sts(embed, tasks)["tasks"]
    scored = {"stsb_dev": scores["STSBenchmark"]["spearman"]}
    if full:
        scored["sickr_dev"] = scores["SICKRelatedness"]["spearman"]
    return {**scored, **metrics}


class TrainState:
    """What a resumed run needs beyond model/optimizer/scheduler/RNG (saved by accelerate)."""

    def __init__(self):
        self.step, self.best_step, self.best_metrics, self.train_seconds = 0, None, None, 0.0
        self.best_train_seconds, self.eval_seconds = None, 0.0  # training seconds up to best/; evaluation seconds
        # sums over the steps since the last `train` record (loss, InfoNCE, VNE, grad norm, lambda): saved, so
        # that the first record after a resume averages the same steps as the uninterrupted run's
        self.window, self.window_steps = [0.0] * 5, 0
        self.resumes = []  # {"step", "from", "changed"}: each resume and the flags it changed (summary.json)

    @property
    def best_score(self):
        return -math.inf if self.best_metrics is None else self.best_metrics["stsb_dev"]

    def state_dict(self):
        return dict(vars(self))

    def load_state_dict(self, state):
        vars(self).update(state)


def main(argv=None):
    """train(argv), with a full disk said in one line: every save is written aside and renamed into place,
    so all that was saved before is complete."""
    try:
        train(argv)
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"\nerror: no space left on the disk ({err.filename or 'while saving'}); training stopped. Every "
              "earlier save is complete (saves are written aside, then renamed into place): free space and "
              "resume with --resume_from_checkpoint latest", file=sys.stderr)
        raise SystemExit(2) from None


def train(argv=None):
    args = parse_args(argv)

    def say(message):  # on stderr, once (the main process) however many processes run
        if int(os.environ.get("RANK", "0")) == 0:
            print(message, file=sys.stderr)

    def fail(message):  # one clear line, exit code 2, nothing written is touched
        say(f"error: {message}")
        raise SystemExit(2)

    try:  # before accelerate makes any folder under it
        check_output_path(args.output_dir, "--output_dir", folder=True)
    except DataError as err:
        fail(str(err))
    for tracker in ("tensorboard", "wandb"):  # accelerate would only warn and train on without it
        if args.report_to == tracker and not (importlib.util.find_spec(tracker) or
                                              (tracker == "tensorboard" and importlib.util.find_spec("tensorboardX"))):
            fail(f"--report_to {tracker}: the {tracker} package is not installed (pip install {tracker})")
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, broadcast_object_list, set_seed
    from transformers import get_scheduler

    log_with = None if args.report_to == "none" else args.report_to
    # DDP leaves the methods' buffers alone: ESimCSE's queue and InfoCSE's BatchNorm statistics are per process
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu, log_with=log_with,
                              project_dir=args.output_dir,
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    main_process = accelerator.is_main_process

    # ---- output folder: one run, one process writing it; a new run never writes over an old one
    metrics_log = MetricsLog(os.path.join(args.output_dir, "metrics.jsonl"))
    best_dir = os.path.join(args.output_dir, "best")
    state_root = os.path.join(args.output_dir, "state")

    def check_folder():
        if args.resume_from_checkpoint is None and os.path.exists(metrics_log.path):
            fail(f"--output_dir {args.output_dir} already holds a run (metrics.jsonl); resume it with "
                 "--resume_from_checkpoint latest or choose another --output_dir")
        if args.resume_from_checkpoint is not None and not os.path.exists(metrics_log.path):
            fail(f"--output_dir {args.output_dir} holds no run to resume (no metrics.jsonl); a state is resumed "
                 "only into the run that saved it")

    check_folder()
    saved_run, lock = None, None
    try:
        if main_process:
            os.makedirs(args.output_dir, exist_ok=True)
            lock = FolderLock(args.output_dir)  # noqa: F841  held until the process ends
        check_folder()  # again under the lock: another process may have started a run meanwhile
        if args.resume_from_checkpoint:
            saved_run = read_run(args.output_dir)
            resume_candidates = resumable_states(args.resume_from_checkpoint, state_root)
            for path in resume_candidates:
                check_state(path, args.output_dir, saved_run and saved_run["run_id"])
    except RunFolderError as err:
        fail(str(err))
    changed_on_resume = {}
    if saved_run is not None:  # a resume continues the same training
        refused, changed_on_resume = compare_args(saved_run["args"], vars(args))
        if refused:
            fail("a resume must keep the run's training arguments; these differ from the saved run's: "
                 + ", ".join(f"--{k} {old} (now {new})" for k, (old, new) in refused.items())
                 + ". Pass the saved values, or start a new run in another --output_dir")
    if main_process:
        for folder in ("best", "peak", "peak.candidate"):
            recover_dir(os.path.join(args.output_dir, folder))

    # ---- data and evaluation sets: read (and checked) before any model is loaded
    try:
        sentences = read_sentences(args.train_file, note=say)
        dev_tasks = load_sts_tasks(args.eval_data_dir, "dev", flag="--eval_data_dir")
        check_dev_pairs(dev_tasks, args.eval_data_dir)
        probe_sentences, probe_pairs = stsb_probe(args.eval_data_dir, args.probe_split)
    except DataError as err:
        fail(str(err))
    set_seed(args.seed)
    try:
        encoder, tokenizer = load_pretrained(args.model_name_or_path)
    except ModelLoadError as err:
        fail(err.reason)
    problem = METHODS[args.method].check_tokenizer(tokenizer, args)
    if problem:
        fail(problem)
    if args.unpad_inputs and unsupported_reason(encoder):
        fail(f"--unpad_inputs cannot run {args.model_name_or_path}: {unsupported_reason(encoder)}")
    eval_max_length = default_max_length(tokenizer, encoder.config)
    if args.max_seq_length > eval_max_length:
        fail(f"--max_seq_length {args.max_seq_length} exceeds the model's limit of {eval_max_length} tokens")
    try:
        batches = SentenceBatches(sentences, tokenizer, args.per_device_train_batch_size, args.max_seq_length,
                                  args.seed, accelerator.num_processes, accelerator.process_index,
                                  args.pad_to_max_length)
    except DataError as err:
        fail(f"--train_file {args.train_file}: {err}")
    total_steps = args.max_train_steps or args.num_train_epochs * batches.steps_per_epoch
    problem = METHODS[args.method].check_run(args, total_steps)
    if problem:
        fail(problem)

    # ---- model, optimizer, schedule
    # evaluated and exported as is; on the device before the optimizer sees it (the fused kernel checks)
    raw_model = SimCSEModel(encoder, args.pooler_type, args.mlp_only_train, args.unpad_inputs)
    try:
        method = METHODS[args.method](args, raw_model, tokenizer, steps_per_epoch=batches.steps_per_epoch)
    except ValueError as err:  # a method flag that does not fit this model (named in the message)
        fail(str(err))
    raw_model.sentence_embedding = method.eval_embedding()  # recorded in every export's config.json
    training_model = TrainingModel(raw_model, method).to(accelerator.device)
    optimizer = make_optimizer(training_model, args.learning_rate, args.weight_decay, accelerator.device)
    # Not prepared: accelerate would step it once per process, but our step count is global already.
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=total_steps)
    model, optimizer = accelerator.prepare(training_model, optimizer)
    if args.torch_compile:  # after DDP wrapping, as accelerate itself does; evaluation runs raw_model
        model = torch.compile(model, mode=None if args.torch_compile == "default" else args.torch_compile)
    state = TrainState()
    detector = PeakDetector(args.phase_patience, args.phase_margin)
    rr_schedule = RRSchedule(args.rank_reduction, args.rr_schedule, total_steps, args.rr_decay_steps, args.rr_patience,
                             args.rr_gain, args.rr_anneal_lr)
    early_stopping = EarlyStopping(args.early_stopping_patience)
    accelerator.register_for_checkpointing(scheduler, state, detector, rr_schedule, early_stopping)
    peak_checkpoint = PeakCheckpoint(args.output_dir, keep=detector.window // 2 + 1) if args.save_peak_checkpoint else None

    if args.resume_from_checkpoint:
        for i, path in enumerate(resume_candidates):  # `latest`: newest first, a state that does not load is skipped
            try:
                accelerator.load_state(path)
                break
            except Exception as err:  # a cut or corrupted file: safetensors, pickle, torch.load errors
                problem = f"{path} cannot be loaded ({type(err).__name__}: {str(err).splitlines()[0][:200]})"
                if i + 1 == len(resume_candidates):
                    fail(f"--resume_from_checkpoint {args.resume_from_checkpoint}: {problem}"
                         + ("; no older saved state loads either" if i else ""))
                accelerator.print(f"note: {problem}; resuming from the next older state")
        if saved_run is None:
            accelerator.print("note: this run has no run.json (it started before train.py wrote one): the "
                              "arguments of the resume are not compared with the run's")
        if early_stopping.stopped:  # the run ended by its early stop; more steps or another patience go on
            if {"max_train_steps", "early_stopping_patience"} & changed_on_resume.keys():
                early_stopping.resume()
            else:
                accelerator.print(f"{args.output_dir}: this run has finished: it stopped early at step {state.step} "
                                  f"(STS-B dev had not improved since step {early_stopping.best_step}); a larger "
                                  "--max_train_steps trains it on")
                if os.path.exists(os.path.join(args.output_dir, "summary.json")):
                    return
        state.resumes.append({"step": state.step, "from": path,
                              "changed": {k: list(v) for k, v in changed_on_resume.items()}})
        if changed_on_resume:
            accelerator.print("resuming with " + ", ".join(f"--{k} {new} (was {old})"
                                                           for k, (old, new) in changed_on_resume.items()))
        if main_process:
            moved = metrics_log.truncate_after(state.step)
            accelerator.print(f"resumed from {path} at step {state.step}"
                              + (f" ({moved} later records moved to metrics.discarded.jsonl)" if moved else ""))
    if main_process:
        run_id = saved_run["run_id"] if saved_run else new_run(args.output_dir, vars(args))
    if log_with:
        accelerator.init_trackers("simcse", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in vars(args).items()})

    def evaluate(full: bool) -> dict:
        """in_training_eval on the main process, its metrics sent to all."""
        results = [None]
        if main_process:
            dev_model, dev_template = method.dev_embedder(raw_model)  # PromptBERT: the prompt's delta of these weights
            results = [in_training_eval(dev_model, tokenizer, dev_tasks, probe_sentences, probe_pairs, full,
                                        batch_size=args.eval_batch_size, max_length=eval_max_length,
                                        device=accelerator.device, energy_tau=args.energy_tau,
                                        template=dev_template)]
        broadcast_object_list(results)
        return results[0]

    def save_best(metrics):
        if main_process:
            with atomic_dir(best_dir) as tmp:
                raw_model.save_pretrained(tmp, tokenizer, eval_max_length)
                write_json_atomic(os.path.join(tmp, "best_metrics.json"), {"step": state.step, **metrics}, indent=2)
        accelerator.wait_for_everyone()

    def save_export():
        """checkpoints/step-NNNNNN/: the encoder exported as best/ is, plus the step and args (analyze_rank.py)."""
        if main_process:
            with atomic_dir(os.path.join(args.output_dir, "checkpoints", export_dir_name(state.step))) as tmp:
                raw_model.save_pretrained(tmp, tokenizer, eval_max_length)
                write_json_atomic(os.path.join(tmp, "checkpoint.json"), {"step": state.step, "args": vars(args)},
                                  indent=2)
        accelerator.wait_for_everyone()

    def save_state():
        path = os.path.join(state_root, state_dir_name(state.step))
        tmp = path + ".tmp"
        if main_process:
            os.makedirs(state_root, exist_ok=True)
            recover_dir(path)
        accelerator.wait_for_everyone()
        accelerator.save_state(tmp)
        accelerator.wait_for_everyone()
        if main_process:
            mark_state(tmp, run_id, state.step)
            publish_dir(tmp, path)
            if args.checkpoints_total_limit:
                import shutil

                for _, old in state_dirs(state_root)[: -args.checkpoints_total_limit]:
                    shutil.rmtree(old)
        accelerator.wait_for_everyone()
        return path

    def record(event):
        event = {"step": state.step, "epoch": round(state.step / batches.steps_per_epoch, 4), **event}
        if main_process:
            metrics_log.write(event)
        if log_with:
            accelerator.log({k: v for k, v in event.items() if isinstance(v, (int, float))}, step=state.step)

    def on_eval(full: bool) -> dict:
        eval_start = time.perf_counter()
        metrics = evaluate(full)
        event = detector.update(state.step, metrics[args.phase_metric])
        if peak_checkpoint is not None and main_process:
            peak_checkpoint.remember(state.step, raw_model)
            peak_checkpoint.on_event(event, raw_model, tokenizer, eval_max_length)
        if event["declared"]:
            accelerator.print(f"\nrank peak declared at step {state.step}: {args.phase_metric} peaked at step "
                              f"{detector.peak_step} ({detector.peak_value:.4g}); Phase 2 from here on")
        record({"event": "eval" if full else "rank", "phase": detector.phase, **metrics,
                "elapsed_s": round(state.train_seconds, 3)})
        if full and metrics["stsb_dev"] > state.best_score:
            state.best_step, state.best_metrics = state.step, {k: metrics[k] for k in ("stsb_dev", "sickr_dev")}
            state.best_train_seconds = state.train_seconds
            save_best(metrics)
        if (full or args.rr_watch == "every") and early_stopping.update(state.step, metrics.get("stsb_dev")):
            accelerator.print(f"\nearly stop: STS-B dev has not improved for {args.early_stopping_patience} "
                              f"evaluations (best {early_stopping.plateau.best:.2f} at step {early_stopping.best_step});"
                              f" the run ends at step {state.step}")
        if (full or args.rr_watch == "every") and rr_schedule.on_eval(state.step, metrics.get("stsb_dev")):
            then = "is steered by the batch VNE" if args.rr_schedule == "target" else "decays to 0"
            if args.rr_anneal_lr:
                then += " and the learning rate decays to 0"
            accelerator.print(f"\nRR schedule: STS-B dev has not improved for {args.rr_patience} evaluations; "
                              f"lambda {then} from step {state.step}")
        state.eval_seconds += time.perf_counter() - eval_start
        return metrics

    accelerator.print(
        f"{METHODS[args.method].label} | {len(sentences):,} sentences | {accelerator.num_processes} process(es) x "
        f"{args.per_device_train_batch_size} = {batches.global_batch_size} per batch "
        f"({batches.global_batch_size - 1} in-batch negatives) | {batches.steps_per_epoch:,} steps/epoch | "
        f"{total_steps:,} steps | eval pooler {raw_model.eval_pooler}")
    from tqdm.auto import tqdm

    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="train", unit="step")
    save_until = math.inf if args.save_steps_until is None else args.save_steps_until
    if state.step == 0:
        on_eval(full=True)  # the starting point: SimCSE curves begin here
        if args.save_steps:
            save_export()
    model.train()
    window = torch.tensor(state.window, device=accelerator.device)  # running sums, see TrainState
    window_start = time.perf_counter()
    status = "finished"
    while state.step < total_steps and not early_stopping.stopped:
        step_start = time.perf_counter()
        rr_weight = rr_schedule.weight(state.step, active=args.rr_start == "0" or detector.declared)
        if args.rr_anneal_lr:  # from the scheduler's own value each step, so a resumed run does not compound it
            for group, lr in zip(optimizer.param_groups, scheduler.get_last_lr()):
                group["lr"] = lr * rr_schedule.lr_factor(state.step)
        terms, finite = train_step(model, optimizer, scheduler, accelerator, method.views(batches(state.step), state.step),
                                   args.temp,
                                   rr_weight, args.rr_on, args.max_grad_norm, measure_vne=args.rank_reduction > 0,
                                   rr_solver=args.rr_solver)
        if not finite:
            loss_value, grad_norm = terms[0].item(), terms[3].item()
            what = f"the loss became {loss_value}" if not math.isfinite(loss_value) else \
                f"the gradient norm became {grad_norm} (loss {loss_value:.4g})"
            status = f"stopped: {what} at step {state.step + 1}"
            break
        state.step += 1
        if rr_schedule.reads_vne:  # the target schedule steers by every step's VNE (a value the host has waited for)
            rr_schedule.observe(terms[2].item())
        window += torch.cat([terms, terms.new_tensor([rr_weight])])
        state.window_steps += 1
        state.train_seconds += time.perf_counter() - step_start
        progress.update(1)

        if state.step % args.logging_steps == 0 or state.step == total_steps:
            seconds = time.perf_counter() - window_start
            loss_value, infonce_value, vne_value, grad_norm, mean_weight = (window / state.window_steps).tolist()
            rr = {}
            if args.rank_reduction > 0:
                rr = {"infonce": infonce_value, "rr_vne": vne_value, "rr_weight": rr_weight,
                      "rr_weight_mean": mean_weight,
                      "rr_share": mean_weight * vne_value / loss_value if loss_value else None}
            record({"event": "train", "phase": detector.phase, "loss": loss_value, **rr, "grad_norm": grad_norm,
                    "lr": scheduler.get_last_lr()[0] * rr_schedule.lr_factor(state.step),
                    "elapsed_s": round(state.train_seconds, 3),
                    "sentences_per_s": round(state.window_steps * batches.global_batch_size / seconds, 1)})
            progress.set_postfix(loss=f"{loss_value:.4f}")
            window.zero_()
            window_start, state.window_steps = time.perf_counter(), 0
        full = state.step % args.eval_steps == 0 or state.step == total_steps
        if full or (state.step <= args.rank_eval_until and state.step % args.rank_eval_steps == 0):
            metrics = on_eval(full)
            if full:
                progress.set_postfix(stsb_dev=f"{metrics['stsb_dev']:.2f}", best=f"{state.best_score:.2f}")
            window_start = time.perf_counter()
        if args.save_steps and state.step % args.save_steps == 0 and state.step <= save_until:
            save_export()
            window_start = time.perf_counter()
        if args.checkpointing_steps and state.step % args.checkpointing_steps == 0:
            state.window = window.tolist()
            save_state()
            window_start = time.perf_counter()
    progress.close()

    if early_stopping.stopped:
        status = "early_stopped"
    if status == "finished" and state.best_step is None:
        status = "stopped: no evaluation gave a finite STS-B dev score (check the evaluation files and the model)"
    state.window = window.tolist()
    # the last good state to resume from (an early stop's too: a resume with more steps trains on from it),
    # unless it is on disk already (saved at this step, or the state this process resumed from)
    last_state = None
    if status != "finished":
        last_state = os.path.join(state_root, state_dir_name(state.step))
        if not os.path.isdir(last_state):
            last_state = save_state()
    peak = None
    if main_process:  # the offline peak: the highest-rank evaluation of the whole run, earliest on ties
        evals = [r for r in metrics_log.read() if r.get("event") in ("eval", "rank")]
        peak = offline_peak([r["step"] for r in evals], [r.get(args.phase_metric) for r in evals])
        peak["description"] = describe_peak(peak, args.phase_metric)
        accelerator.print(peak["description"])
    summary = {
        "status": status,
        "method": args.method,
        "steps": state.step,
        "total_steps": total_steps,
        "best_step": state.best_step,
        "best": state.best_metrics,
        "best_dir": best_dir if state.best_step is not None else None,
        "train_seconds": round(state.train_seconds, 3),
        "train_step_seconds_mean": round(state.train_seconds / max(state.step, 1), 5),
        "compute": {"steps": state.step, "train_seconds": round(state.train_seconds, 3),
                    "eval_seconds": round(state.eval_seconds, 3), "best_step": state.best_step,
                    "best_train_seconds": None if state.best_train_seconds is None
                    else round(state.best_train_seconds, 3)},
        "early_stopping": {"patience": args.early_stopping_patience, "stopped_at_step": early_stopping.stopped_step,
                           "best_step": early_stopping.best_step},
        "rank": {
            "phase_metric": args.phase_metric,
            "offline_peak": peak,
            "online_peak": {"step": detector.peak_step, "value": detector.peak_value,
                            "declared_at_step": detector.declared_step} if detector.declared else None,
            "phase2_end_step": state.best_step,  # Phase 2 runs from the peak to the best STS-B dev checkpoint
            "peak_dir": peak_checkpoint.peak_dir if peak_checkpoint and os.path.isdir(peak_checkpoint.peak_dir) else None,
            "peak_checkpoint_note": peak_checkpoint.note if peak_checkpoint else None,
        },
        "rank_reduction": {"weight": args.rank_reduction, "on": args.rr_on, "start": args.rr_start,
                           "schedule": args.rr_schedule, "schedule_state": rr_schedule.state_dict()},
        "eval_pooler": raw_model.eval_pooler,
        "global_batch_size": batches.global_batch_size,
        "num_processes": accelerator.num_processes,
        "args": vars(args),
        "args_at_start": saved_run["args"] if saved_run else vars(args),
        "resumes": state.resumes,
        "versions": versions(),
    }
    if main_process:
        write_json_atomic(os.path.join(args.output_dir, "summary.json"), summary, indent=2)
    accelerator.end_training()
    if status not in ("finished", "early_stopped"):
        advice = "" if state.best_step is None and "evaluation" in status else (
            " To train on, start a new run (another --output_dir) with a lower --learning_rate, a higher --temp, "
            "--max_grad_norm 1, or --mixed_precision bf16 instead of fp16: a resume keeps this run's settings.")
        accelerator.print(f"error: {status}; the last good state is in {last_state}.{advice}", file=sys.stderr)
        raise SystemExit(1)
    accelerator.print(f"best STS-B dev {state.best_score:.2f} at step {state.best_step} -> {best_dir}")


if __name__ == "__main__":
    main()
