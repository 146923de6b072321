"""Unsupervised SimCSE and its follow-ups: fine-tune a pretrained encoder so that two views of a sentence agree,
with the representation rank tracked through training and, optionally, Rank Reduction.

Each batch is encoded twice in one forward pass (the batch stacked on itself: dropout makes the two views)
and the loss is InfoNCE over cosine / temp with in-batch negatives; --method mixcse | esimcse | promptbert |
infocse trains one of the paper's other methods instead (utils/methods/). At step 0 and every --eval_steps
the encoder is scored on STS-B dev and SICK-R trial, and the best STS-B dev checkpoint is kept in
OUTPUT_DIR/best/; the rank metrics of a probe set are logged at those evaluations and densely early on.

    python train.py --model_name_or_path bert-base-uncased --train_file data/wiki1m_for_simcse.txt \\
        --eval_data_dir data --output_dir runs/unsup-simcse-bert                      # SimCSE's recipe
    python train.py --method esimcse ... --rank-reduction 0.1                        # another method, with RR
    accelerate launch --num_processes 4 train.py ... --per_device_train_batch_size 16  # 4 GPUs, 64 per batch
    python train.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 \\
        --train_file ../shared/data/train/wiki1m_for_simcse.first11914.txt --eval_data_dir ../shared/data \\
        --max_train_steps 20 --eval_steps 10 --per_device_train_batch_size 16 --output_dir runs/smoke  # a CPU smoke run

Outputs (docs/train.md): metrics.jsonl, summary.json, best/ (README.md: its model card; --push_to_hub uploads
it), and with their flags checkpoints/step-NNNNNN/ (--save_steps), peak/ (--save_peak_checkpoint) and
state/step_NNNNNNN/ (--checkpointing_steps; resume with --resume_from_checkpoint latest).
"""

import argparse
import importlib.util
import math
import os
import sys
import time

import torch

from utils import methods, scoring
from utils.cli import number, seed_number
from utils.corpus import COLUMN, open_corpus
from utils.data import DataError, SentenceBatches, check_output_path
from utils.encode import default_max_length
from utils.methods import METHODS, TrainingModel
from utils.model import ModelLoadError, SimCSEModel, load_pretrained
from utils.model_card import push_folder, repo_problem, token_note, write_model_card
from utils.phase import RankTracker, describe_peak, segment
from utils.plateau import EarlyStopping
from utils.pooling import SIMCSE_POOLERS
from utils.rank_reduction import RankReduction
from utils.run_folder import RunFolder, RunFolderError, one_run, versions
from utils.scoring import evaluate_in_training, load_eval_sets
from utils.training import TrainState, TrainStep, Window, make_optimizer
from utils.unpad import unsupported_reason


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("model and data")
    g.add_argument("--model_name_or_path", default="bert-base-uncased", help="hub name or local folder")
    g.add_argument("--pooler_type", default="cls", choices=SIMCSE_POOLERS, help="the sentence embedding in training")
    g.add_argument("--mlp_only_train", action=argparse.BooleanOptionalAction, default=True,
                   help="`cls`: the MLP on [CLS] in training only, the raw [CLS] at evaluation")
    g.add_argument("--train_file", required=True,
                   help="text file (one sentence per line), CSV / TSV / JSON lines / Parquet file, or hub dataset name")
    g.add_argument("--text_column", default=COLUMN, help="the column of --train_file that holds the sentences")
    g.add_argument("--train_split", default="train", help="the split of --train_file where it names a hub dataset")
    g.add_argument("--max_seq_length", type=number(int, 2), default=32, help="tokens per sentence, longer is cut")
    g.add_argument("--eval_data_dir", default=None, help="SentEval data/ folder (STS-B dev, SICK-R trial); optional with --dev_file")
    g = p.add_argument_group("optimisation")
    g.add_argument("--temp", type=number(float, 0, inclusive=False), default=0.05, help="softmax temperature")
    g.add_argument("--per_device_train_batch_size", type=number(int, 2), default=64,
                   help="sentences per process and step")
    g.add_argument("--learning_rate", type=number(float, 0, inclusive=False), default=3e-5, help="AdamW's peak rate")
    g.add_argument("--weight_decay", type=number(float, 0), default=0.0, help="AdamW weight decay")
    g.add_argument("--num_train_epochs", type=number(int, 1), default=1, help="passes over --train_file")
    g.add_argument("--max_train_steps", type=number(int, 1), default=None, help="total steps (wins over epochs)")
    g.add_argument("--lr_scheduler_type", default="linear", choices=["linear", "cosine", "constant", "constant_with_warmup"],
                   help="the learning-rate schedule over the total steps")
    g.add_argument("--warmup_steps", type=number(int, 0), default=0, help="linear warm-up steps")
    g.add_argument("--max_grad_norm", type=number(float, 0), default=1.0, help="gradient clipping norm (0: off)")
    g.add_argument("--seed", type=seed_number, default=42, help="seeds the head's init, dropout and the data order")
    g = p.add_argument_group("speed (docs/speed.md)")
    g.add_argument("--mixed_precision", default="no", choices=["no", "fp16", "bf16"], help="autocast through accelerate")
    g.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU exists")
    g.add_argument("--unpad_inputs", action="store_true", help="run the token-wise layers on the real tokens only")
    g.add_argument("--pad_to_max_length", action="store_true", help="pad every batch to --max_seq_length")
    g.add_argument("--torch_compile", nargs="?", const="default", default=None,
                   choices=["default", "reduce-overhead", "max-autotune"], help="torch.compile the training step")
    g = p.add_argument_group("evaluation, records and saves")
    g.add_argument("--eval_steps", type=number(int, 1), default=125, help="STS-B dev and SICK-R trial every N steps")
    g.add_argument("--eval_batch_size", type=number(int, 1), default=128, help="sentences per encode batch")
    g.add_argument("--early_stopping_patience", type=number(int, 0), default=0,
                   help="end the run once STS-B dev has not improved for N evaluations (0: off)")
    g.add_argument("--logging_steps", type=number(int, 1), default=10, help="a loss record every N steps")
    g.add_argument("--output_dir", required=True, help="the run's folder")
    g.add_argument("--checkpointing_steps", type=number(int, 1), default=None, help="save the training state every N steps")
    g.add_argument("--checkpoints_total_limit", type=number(int, 1), default=None, help="keep the newest N states")
    g.add_argument("--resume_from_checkpoint", default=None, help="a state/step_NNNNNNN folder, or `latest`")
    g.add_argument("--save_steps", type=number(int, 1), default=None, help="export the encoder every N steps")
    g.add_argument("--save_steps_until", type=number(int, 0), default=None, help="the last step --save_steps exports")
    g.add_argument("--report_to", default="none", choices=["none", "tensorboard", "wandb", "all"],
                   help="also send the records to these trackers")
    g.add_argument("--push_to_hub", default=None, metavar="OWNER/NAME",
                   help="upload best/ to this Hugging Face Hub repo at the end (token: HF_TOKEN or hf auth login)")
    g.add_argument("--hub_private", action="store_true", help="with --push_to_hub: a repo it creates is private")
    methods.add_arguments(p)
    RankReduction.add_arguments(p)
    RankTracker.add_arguments(p)
    scoring.add_arguments(p)
    args = p.parse_args(argv)
    for problem in (methods.resolve_arguments(args), RankReduction.check_arguments(args),
                    RankTracker.check_arguments(args), scoring.check_arguments(args, args.eval_data_dir, "--eval_data_dir"),
                    tracker_problem(args.report_to), repo_problem(args.push_to_hub, args.hub_private)):
        if problem:
            p.error(problem)
    args.mlp_only_train = args.mlp_only_train and args.pooler_type == "cls"  # only `cls` has an MLP
    return args


def tracker_problem(report_to: str) -> str | None:
    """accelerate would only warn about a missing tracker and train on without it."""
    for tracker in ("tensorboard", "wandb"):
        if report_to in (tracker, "all") and not (importlib.util.find_spec(tracker) or (
                tracker == "tensorboard" and importlib.util.find_spec("tensorboardX"))):
            return f"argument --report_to: the {tracker} package is not installed (pip install {tracker})"
    return None


def say(message: str) -> None:
    """On stderr, once however many processes run."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr)


def fail(message: str):
    """One clear line and exit code 2; nothing written is touched."""
    say(f"error: {message}")
    raise SystemExit(2)


def model_problem(args, encoder, tokenizer, max_length: int) -> str | None:
    """What about this model the flags cannot serve, named by flag (before any training)."""
    if args.unpad_inputs and unsupported_reason(encoder):
        return f"--unpad_inputs cannot run {args.model_name_or_path}: {unsupported_reason(encoder)}"
    if args.max_seq_length > max_length:
        return f"--max_seq_length {args.max_seq_length} exceeds the model's limit of {max_length} tokens"
    if args.pooler_type == "cls" and not args.mlp_only_train and getattr(encoder, "pooler", None) is None:
        return (f"--no-mlp_only_train: the MLP is read at evaluation, and {type(encoder).__name__} has no pooler layer "
                "for the export to hold it; use --mlp_only_train (or another --pooler_type)")
    return METHODS[args.method].check_tokenizer(tokenizer, args)


def build_model(args, encoder, tokenizer, steps_per_epoch: int, total_steps: int):
    """(the model evaluated and exported, the method that trains it, RR around it or None); a flag that does not
    fit this model fails here, before any training."""
    problem = (model_problem(args, encoder, tokenizer, default_max_length(tokenizer, encoder.config))
               or METHODS[args.method].check_run(args, total_steps))
    if problem:
        fail(problem)
    model = SimCSEModel(encoder, args.pooler_type, args.mlp_only_train, args.unpad_inputs)
    try:
        method = METHODS[args.method](args, model, tokenizer, steps_per_epoch=steps_per_epoch)
    except ValueError as err:  # a method flag that does not fit this model (named in the message)
        fail(str(err))
    method.resolve_args(args)  # the run records (and a resume compares) model-dependent defaults as resolved
    model.sentence_embedding = method.eval_embedding()  # recorded in every export's config.json
    rank_reduction = RankReduction(method, args, total_steps) if args.rank_reduction > 0 else None
    return model, method, rank_reduction


@one_run
def main(argv=None):
    args = parse_args(argv)
    folder = RunFolder(args.output_dir, args.resume_from_checkpoint, write_model_card)  # exports with their cards
    try:  # before accelerate makes any folder under it
        check_output_path(args.output_dir, "--output_dir", folder=True)
        folder.check()
    except (DataError, RunFolderError) as err:
        fail(str(err))
    note = token_note(args.push_to_hub, folder.best_dir)  # said now: a push without a token fails at the end
    if note:
        say(note)
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    # DDP leaves the methods' buffers alone: ESimCSE's queue and InfoCSE's BatchNorm statistics are per process
    accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu, project_dir=args.output_dir,
                              log_with=None if args.report_to == "none" else args.report_to,
                              kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
    try:
        folder.open(accelerator)
        # data and evaluation sets before any model; the corpus is mapped from datasets' cache, not held in memory
        sentences = open_corpus(args.train_file, args.text_column, args.train_split, note=say)
        eval_sets = load_eval_sets(args.eval_data_dir, args.probe_split, dev_file=args.dev_file,
                                   dev_columns=args.dev_columns, probe_file=args.probe_file)
    except (DataError, RunFolderError) as err:
        fail(str(err))

    # ---- model, method, optimizer, schedule
    set_seed(args.seed)
    try:
        encoder, tokenizer = load_pretrained(args.model_name_or_path)
    except ModelLoadError as err:
        fail(err.reason)
    eval_max_length = default_max_length(tokenizer, encoder.config)
    try:
        batches = SentenceBatches(sentences, tokenizer, args.per_device_train_batch_size, args.max_seq_length,
                                  args.seed, accelerator.num_processes, accelerator.process_index,
                                  args.pad_to_max_length)
    except DataError as err:
        fail(f"--train_file {args.train_file}: {err}")
    total_steps = args.max_train_steps or args.num_train_epochs * batches.steps_per_epoch
    model, method, rank_reduction = build_model(args, encoder, tokenizer, batches.steps_per_epoch, total_steps)
    training_model = TrainingModel(model, rank_reduction or method).to(accelerator.device)
    optimizer = make_optimizer(training_model, args.learning_rate, args.weight_decay, accelerator.device)
    # not prepared: accelerate would step it once per process, and our step count is global already
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=total_steps)
    prepared, optimizer = accelerator.prepare(training_model, optimizer)
    prepared.train()  # the evaluations leave each module in the mode they found it in
    train_step = TrainStep(prepared, optimizer, scheduler, accelerator, args.temp, args.max_grad_norm, args.torch_compile)
    tracker, stopper = RankTracker(args, total_steps), EarlyStopping(args.early_stopping_patience)
    state, window = TrainState(), Window(accelerator.device)
    accelerator.register_for_checkpointing(scheduler, state, window, tracker, stopper,
                                           *([rank_reduction.schedule] if rank_reduction else []))
    if args.save_peak_checkpoint:
        folder.keep_peak(keep=tracker.detector.window // 2 + 1)

    # ---- a resume continues the same training, from its newest state that loads
    resumed_from, finished = resume(args, folder, state, stopper, accelerator)
    if finished:
        return
    if folder.start(vars(args), state.step if resumed_from else None):
        accelerator.print(f"the records after step {state.step} moved to metrics.discarded.jsonl")
    if args.report_to != "none":
        accelerator.init_trackers("simcse", config={k: v if isinstance(v, (int, float, str, bool)) else str(v)
                                                    for k, v in vars(args).items()})
    accelerator.print(describe_run(method, rank_reduction, len(sentences), batches, total_steps, model, eval_sets))

    # ---- the loop: evaluations, exports and saves of the step just reached, then one optimizer step
    progress = tqdm(total=total_steps, initial=state.step, disable=not accelerator.is_local_main_process,
                    desc="train", unit="step")
    while True:
        if state.done_step != state.step:  # a resumed run's step was evaluated and saved before its state was
            kind = tracker.due(state.step)
            if kind:
                started = time.perf_counter()
                metrics = evaluate_in_training(method, model, tokenizer, eval_sets, kind == "eval", args, accelerator)
                event = tracker.update(state.step, metrics)
                folder.on_peak(state.step, event, model, tokenizer, eval_max_length)
                record = {"step": state.step, "epoch": round(state.step / batches.steps_per_epoch, 4),
                          "event": kind, "phase": tracker.phase, **metrics, "elapsed_s": round(state.train_seconds, 3)}
                folder.log(record)
                if kind == "eval" and state.improves(metrics):
                    folder.save_best(model, tokenizer, eval_max_length, state.step, metrics)
                for note in eval_notes(args, state.step, kind, metrics, event, tracker, rank_reduction, stopper):
                    accelerator.print(f"\n{note}")
                progress.set_postfix(stsb_dev=f"{metrics['stsb_dev']:.2f}", best=f"{state.best_score:.2f}")
                state.eval_seconds += time.perf_counter() - started
            if args.save_steps and state.step % args.save_steps == 0 and state.step <= (args.save_steps_until or math.inf):
                folder.export(model, tokenizer, eval_max_length, state.step, vars(args))
            state.done_step = state.step
            if args.checkpointing_steps and state.step and state.step % args.checkpointing_steps == 0:
                folder.save_state(state.step, args.checkpoints_total_limit)
        if state.step >= total_steps or stopper.stopped:
            break
        started = time.perf_counter()
        weight = rank_reduction.begin_step(state.step, tracker.declared, optimizer, scheduler) if rank_reduction else 0.0
        terms, finite = train_step(method.views(batches(state.step), state.step))  # a non-finite update is skipped
        if rank_reduction:
            rank_reduction.end_step(terms[2])
        state.step += 1
        state.train_seconds += time.perf_counter() - started
        window.add(terms, finite, state.step, weight, time.perf_counter() - started)
        progress.update(1)
        if state.step % args.logging_steps == 0 or state.step == total_steps:
            if window.failure():  # read with the record: the host does not wait on every step
                break
            folder.log(train_record(state, window, batches, scheduler, rank_reduction, tracker.phase))
    progress.close()

    # ---- the end: the last state where it is needed, the summary
    status = final_status(window, stopper, state)
    last_state = None if status == "finished" else last_state_saved(folder, state.step, args.checkpoints_total_limit)
    summary = run_summary(args, status, state, total_steps, folder, tracker, stopper, rank_reduction, model, batches,
                          eval_sets.names)
    accelerator.print(summary["rank"]["offline_peak"]["description"])
    folder.write_summary(summary)
    folder.describe_best(summary)  # best/README.md, now with the outcome, the rank peak and the phases
    accelerator.end_training()
    say_outcome(args, status, state, last_state, folder.best_dir, accelerator)


def resume(args, folder, state, stopper, accelerator) -> tuple[str | None, bool]:
    """(the state resumed from or None, finished): load the newest state that loads (with
    --resume_from_checkpoint) and record the resume; finished where the run already ended by its early stop
    and nothing changed that would train it on."""
    try:
        changed = folder.check_resume(vars(args))
        resumed_from = folder.load_state(note=say) if args.resume_from_checkpoint else None
    except RunFolderError as err:
        fail(str(err))
    if resumed_from and stopper.stopped:  # it ended by its early stop; more steps or another patience go on
        if {"max_train_steps", "early_stopping_patience"} & changed.keys():
            stopper.resume()
        else:
            accelerator.print(f"{args.output_dir}: this run has finished: it stopped early at step {state.step} "
                              f"(STS-B dev had not improved since step {stopper.best_step}); a larger "
                              "--max_train_steps trains it on")
            if folder.summary_exists():
                return resumed_from, True
    if resumed_from:
        state.resumes.append({"step": state.step, "from": resumed_from, "changed": {k: list(v) for k, v in changed.items()}})
        accelerator.print(f"resumed from {resumed_from} at step {state.step}" + "".join(
            f", --{k} {new} (was {old})" for k, (old, new) in changed.items()))
    return resumed_from, False


def describe_run(method, rank_reduction, n_sentences: int, batches, total_steps: int, model, eval_sets) -> str:
    """The run's first lines: what trains on what, in which batches, evaluated on which sets."""
    return (f"{method.label}{' + RR' if rank_reduction else ''} | {n_sentences:,} sentences | "
            f"{batches.num_processes} process(es) x {batches.batch_size} = {batches.global_batch_size} per batch | "
            f"{batches.steps_per_epoch:,} steps/epoch | {total_steps:,} steps | eval pooler {model.eval_pooler}\n"
            f"dev set {eval_sets.names['dev']} | probe set {eval_sets.names['probe']}")


def eval_notes(args, step: int, kind: str, metrics: dict, event, tracker, rank_reduction, stopper) -> list[str]:
    """What an evaluation changed, to print: the rank peak, RR's schedule, the early stop (updated here, in this
    order)."""
    notes = [tracker.note(step, event),
             rank_reduction.on_eval(step, metrics["stsb_dev"], kind == "eval") if rank_reduction else None,
             stopper.update(step, metrics["stsb_dev"]) if kind == "eval" or args.rr_watch == "every" else None,
             stopper.stop(step, "the learning rate has reached 0 (--rr_anneal_lr)")
             if rank_reduction and rank_reduction.annealed(step) and not stopper.stopped else None]
    return [note for note in notes if note]


def last_state_saved(folder, step: int, total_limit) -> str:
    """The state of the last step, saved where it is not yet: an early stop resumes from it with more steps, a
    failure from its last good step."""
    path = folder.state_path(step)
    return path if os.path.isdir(path) else folder.save_state(step, total_limit)


def final_status(window, stopper, state) -> str:
    """How the run ended: a non-finite step, its early stop, no usable evaluation, or finished."""
    if window.failure():  # its update, and any later non-finite one, was skipped: the weights are the last good
        return f"stopped: {window.failure()}"
    if stopper.stopped:
        return "early_stopped"
    if state.best_step is None:
        return "stopped: no evaluation gave a finite STS-B dev score (check the evaluation files and the model)"
    return "finished"


def say_outcome(args, status: str, state, last_state, best_dir: str, accelerator) -> None:
    """The run's last lines: the error and how to train on (exit 1), or the best score and the push (exit 3 where
    only the upload failed)."""
    if status not in ("finished", "early_stopped"):
        advice = "" if state.best_step is None and "evaluation" in status else (
            " To train on, start a new run (another --output_dir) with a lower --learning_rate, a higher --temp, "
            "--max_grad_norm 1, or --mixed_precision bf16 instead of fp16: a resume keeps this run's settings.")
        say(f"error: {status}; the last good state is in {last_state}.{advice}")
        raise SystemExit(1)
    accelerator.print(f"best dev score {state.best_score:.2f} at step {state.best_step} -> {best_dir}")
    if args.push_to_hub and accelerator.is_main_process:
        url, problem = push_folder(best_dir, args.push_to_hub, args.hub_private)
        if problem:  # the run is finished and complete on disk: only the upload is missing (exit code 3)
            say(f"error: {problem}")
            raise SystemExit(3)
        accelerator.print(f"pushed {best_dir} to {url}")


def train_record(state, window, batches, scheduler, rank_reduction, phase: int) -> dict:
    """The `train` record: the window's means (with RR its terms and λ), the learning rate and the speed."""
    seconds = window.seconds
    steps = window.steps
    means = window.means()
    record = {"step": state.step, "epoch": round(state.step / batches.steps_per_epoch, 4), "event": "train",
              "phase": phase, "loss": means["loss"]}
    if rank_reduction:
        record.update(infonce=means["infonce"], rr_vne=means["rr_vne"], rr_weight=rank_reduction.weight,
                      rr_weight_mean=means["rr_weight_mean"],
                      rr_share=means["rr_weight_mean"] * means["rr_vne"] / means["loss"] if means["loss"] else None)
    factor = rank_reduction.lr_factor(state.step) if rank_reduction else 1.0
    record.update(grad_norm=means["grad_norm"], lr=scheduler.get_last_lr()[0] * factor,
                  elapsed_s=round(state.train_seconds, 3),
                  sentences_per_s=round(steps * batches.global_batch_size / seconds, 1) if seconds else None)
    return record


def run_summary(args, status, state, total_steps, folder, tracker, stopper, rank_reduction, model, batches,
                eval_sets: dict) -> dict:
    """summary.json (docs/train.md#outputs): the outcome, the compute spent, the phases, the settings."""
    evals = [r for r in folder.metrics.read() if r.get("event") in ("eval", "rank")] \
        if folder.accelerator.is_main_process else []
    phases = segment([r["step"] for r in evals], [r.get(args.phase_metric) for r in evals], state.best_step)
    peak = {k: v for k, v in phases["peak"].items()}
    peak["description"] = describe_peak(peak, args.phase_metric)
    detector = tracker.detector
    peak_checkpoint = folder.peak
    return {
        "status": status, "method": args.method, "method_label": METHODS[args.method].label, "steps": state.step,
        "total_steps": total_steps,
        "best_step": state.best_step, "best": state.best_metrics, "eval_sets": eval_sets,
        "best_dir": folder.best_dir if state.best_step is not None else None,
        "train_seconds": round(state.train_seconds, 3),
        "train_step_seconds_mean": round(state.train_seconds / max(state.step, 1), 5),
        "compute": {"steps": state.step, "train_seconds": round(state.train_seconds, 3),
                    "eval_seconds": round(state.eval_seconds, 3), "best_step": state.best_step,
                    "best_train_seconds": None if state.best_train_seconds is None else round(state.best_train_seconds, 3)},
        "early_stopping": {"patience": args.early_stopping_patience, "stopped_at_step": stopper.stopped_step,
                           "best_step": stopper.best_step},
        "rank": {
            "phase_metric": args.phase_metric, "offline_peak": peak,
            **{name: {k: v for k, v in phases[name].items() if k != "indices"} for name in ("phase1", "phase2")},
            "online_peak": {"step": detector.peak_step, "value": detector.peak_value,
                            "declared_at_step": detector.declared_step} if detector.declared else None,
            "phase2_end_step": state.best_step,  # Phase 2 runs from the peak to the best STS-B dev checkpoint
            "peak_dir": peak_checkpoint.peak_dir if peak_checkpoint and os.path.isdir(peak_checkpoint.peak_dir) else None,
            "peak_checkpoint_note": peak_checkpoint.note if peak_checkpoint else None,
        },
        "rank_reduction": RankReduction.summary(args, rank_reduction),
        "eval_pooler": model.eval_pooler, "global_batch_size": batches.global_batch_size,
        "num_processes": folder.accelerator.num_processes,
        "args": vars(args), "args_at_start": folder.saved["args"] if folder.saved else vars(args),
        "resumes": state.resumes, "versions": versions(),
    }


if __name__ == "__main__":
    main()
