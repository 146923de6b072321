"""Time train.py's training step against sentence-transformers' SimCSE recipe, for train.py's speed flags,
with and without Rank Reduction.

    # a CPU, the one real encoder here (sentence-transformers[train] from requirements-dev.txt)
    python -m benchmarks.bench_step --model ../shared/models/all-MiniLM-L6-v2 --data_dir ../shared/data \\
        --train_file ../shared/data/train/wiki1m_for_simcse.first11914.txt --json step.json
    # a GPU, BERT-base shape with random weights (speed does not depend on them)
    python -m benchmarks.bench_step --config bert-base --data_dir data --json step-gpu.json

train.py's step is built from train.py's own objects, as its main() builds them: its flags (`train.parse_args`),
batches (`SentenceBatches`), optimizer, schedule and step (`utils.training.TrainStep`), and Rank Reduction
wrapping the method. With and without RR train the same weights and take turns in blocks of steps on the
same batches, so that their difference is not one of machine load or batch lengths. sentence-transformers
runs `SentenceTransformerTrainer` + `MultipleNegativesRankingLoss` (scale 1/τ = 20, the sentences as anchor
and positive) on the very same batches in the same order, timed from the trainer's own step callbacks.
MFU = model FLOPs of the batches' real tokens / step time / a large matmul's rate measured in the same run
and precision. Memory: benchmarks/timing.py.
"""

import argparse
import math
import sys
import tempfile
import time

import torch

from benchmarks.timing import MEMORY_HEADER, Meter, Report, device_of, memory_cells, model_dir, model_name, \
    need_peer, parser, st_model, sts_test_sentences, sync
from utils.cli import number
from utils.data import DataError, SentenceBatches, read_sentences

# train.py's speed flags, by name
VARIANTS = {
    "default": [],
    "unpad": ["--unpad_inputs"],
    "compile": ["--pad_to_max_length", "--torch_compile"],
    "compile-cudagraphs": ["--pad_to_max_length", "--torch_compile", "reduce-overhead"],
    "unpad+compile": ["--unpad_inputs", "--torch_compile"],
}


def add_step_arguments(p) -> None:
    """The flags of a timed training step (this script's, bench_methods' and bench_encode's)."""
    p.add_argument("--data_dir", required=True, help="SentEval data/ folder (the STS test sentences)")
    p.add_argument("--train_file", default=None,
                   help="training text, one sentence per line (default: the STS test sentences)")
    p.add_argument("--batch_size", type=number(int, 2), default=64, help="sentences per step, x 2 views (default 64)")
    p.add_argument("--max_seq_length", type=number(int, 2), default=32, help="tokens per sentence (default 32)")
    p.add_argument("--steps", type=number(int, 1), default=None, help="timed steps (default 30 on GPU, 12 on CPU)")
    p.add_argument("--warmup_steps", type=number(int, 1), default=None,
                   help="untimed steps first (default 10 on GPU, 2 on CPU)")
    p.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default=None,
                   help="autocast precision (default bf16 on GPU, no on CPU)")


def resolve(args, device) -> list:
    """Fill the device-dependent defaults; return the training sentences."""
    gpu = device.type == "cuda"
    args.steps = args.steps or (30 if gpu else 12)
    args.warmup_steps = args.warmup_steps or (10 if gpu else 2)
    args.mixed_precision = args.mixed_precision or ("bf16" if gpu else "no")
    try:
        return read_sentences(args.train_file) if args.train_file else sts_test_sentences(args.data_dir)
    except DataError as err:
        sys.exit(f"error: {err}")


def step_settings(args) -> dict:
    """The settings of the timed steps, as the results record them."""
    return dict(model=model_name(args), precision=args.mixed_precision, batch_size=args.batch_size,
                max_seq_length=args.max_seq_length, steps=args.steps, warmup_steps=args.warmup_steps,
                train_file=args.train_file or "STS test sentences")


def step_header(r: dict) -> str:
    """The first line of a table of timed steps: the machine and the settings."""
    return (f"{r['model']} | {r['device']} | torch {r['torch']} | {r['precision']} | batch {r['batch_size']} x 2 "
            f"views, max_len {r['max_seq_length']} | {r['train_file']} | {r['date']}")


def variant_flags(name: str) -> str:
    return " ".join(VARIANTS[name]) or "(no speed flags)"


def train_flags(args) -> list:
    """train.py flags of the benchmark's settings."""
    return ["--per_device_train_batch_size", str(args.batch_size), "--max_seq_length", str(args.max_seq_length),
            "--seed", str(args.seed), "--mixed_precision", args.mixed_precision, *(["--cpu"] if args.cpu else [])]


class TrainPy:
    """train.py's training step on the checkpoint at `path`, built from train.py flags as train.main builds it.

    steps: {"": the method's TrainStep} and, with --rank-reduction > 0, {"rr": the same method under Rank
    Reduction}; both train the same weights with one optimizer. Also args, accelerator, tokenizer, model
    (the SimCSEModel), method and batches, for what else a benchmark runs on them.
    """

    def __init__(self, path: str, sentences, flags: list, total_steps: int):
        from accelerate import Accelerator
        from accelerate.utils import set_seed
        from transformers import get_scheduler

        from train import model_problem, parse_args
        from utils.encode import default_max_length
        from utils.methods import METHODS, TrainingModel
        from utils.model import SimCSEModel, load_pretrained
        from utils.rank_reduction import RankReduction
        from utils.training import TrainStep, make_optimizer

        self.args = args = parse_args(["--model_name_or_path", path, "--train_file", "-", "--eval_data_dir", "-",
                                       "--output_dir", "-", *flags])
        self.accelerator = Accelerator(mixed_precision=args.mixed_precision, cpu=args.cpu)
        set_seed(args.seed)
        encoder, self.tokenizer = load_pretrained(path)
        problem = model_problem(args, encoder, self.tokenizer, default_max_length(self.tokenizer, encoder.config)) \
            or METHODS[args.method].check_run(args, total_steps)
        if problem:
            raise ValueError(problem)
        self.batches = SentenceBatches(sentences, self.tokenizer, args.per_device_train_batch_size, args.max_seq_length,
                                       args.seed, pad_to_max_length=args.pad_to_max_length)
        self.model = SimCSEModel(encoder, args.pooler_type, args.mlp_only_train, args.unpad_inputs)
        self.method = METHODS[args.method](args, self.model, self.tokenizer,
                                           steps_per_epoch=self.batches.steps_per_epoch)
        self.rr = RankReduction(self.method, args, total_steps) if args.rank_reduction > 0 else None
        objectives = {"": self.method, **({"rr": self.rr} if self.rr else {})}
        models = [TrainingModel(self.model, o).to(self.accelerator.device) for o in objectives.values()]
        self.optimizer = make_optimizer(models[0], args.learning_rate, args.weight_decay, self.accelerator.device)
        self.scheduler = get_scheduler(args.lr_scheduler_type, self.optimizer, num_warmup_steps=args.warmup_steps,
                                       num_training_steps=total_steps)
        *models, self.optimizer = self.accelerator.prepare(*models, self.optimizer)
        self.steps = {}
        for key, prepared in zip(objectives, models):
            prepared.train()
            self.steps[key] = TrainStep(prepared, self.optimizer, self.scheduler, self.accelerator, args.temp,
                                        args.max_grad_norm, args.torch_compile)

    def run(self, key: str, step: int) -> None:
        """One optimizer step on global step `step`'s batch and views, as train.py draws them."""
        if key == "rr":
            self.rr.begin_step(step, True, self.optimizer, self.scheduler)
        terms, _ = self.steps[key](self.method.views(self.batches(step), step))
        if key == "rr":
            self.rr.end_step(terms[2])


def time_steps(train: TrainPy, warmup: int, steps: int, device) -> dict:
    """{key of train.steps: Meter.result() + "steps", "real_tokens"}: each key's warm-up (and compilation),
    then blocks of up to 5 steps in turn on the same batches, timed from a device sync to a device sync."""
    for key in train.steps:
        for step in range(warmup):
            train.run(key, step)
    meters = {key: Meter(device) for key in train.steps}
    block, tokens = max(1, min(5, steps // 2)), 0
    for first in range(warmup, warmup + steps, block):
        span = range(first, min(first + block, warmup + steps))
        tokens += sum(int(train.batches(step)["attention_mask"].sum()) for step in span)
        for key, meter in meters.items():
            with meter:
                for step in span:
                    train.run(key, step)
    return {key: {**meter.result(), "steps": steps, "real_tokens": tokens} for key, meter in meters.items()}


def time_sentence_transformers(path: str, sentences, args, device) -> dict:
    """Meter.result() + "steps" of sentence-transformers' SimCSE recipe through its own trainer."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    model = st_model(path, "cls", args.max_seq_length, device)
    loss = MultipleNegativesRankingLoss(model, scale=20.0)  # scale = 1 / temperature 0.05
    batches = SentenceBatches(sentences, None, args.batch_size, args.max_seq_length, args.seed)  # train.py's order
    texts = [sentences[i] for step in range(args.warmup_steps + args.steps) for i in batches.indices(step)]
    meter = Meter(device)

    def in_order(dataset, batch_size, drop_last, **_):
        return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(len(dataset))), batch_size,
                                             drop_last)

    class Clock(TrainerCallback):  # the trainer's own step boundaries: its data loading counts too
        def on_step_end(self, targs, state, control, **kw):
            if state.global_step == args.warmup_steps:
                meter.start()
            elif state.global_step == args.warmup_steps + args.steps:
                meter.stop()

    with tempfile.TemporaryDirectory() as out:
        precision = args.mixed_precision
        targs = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup_steps + args.steps,
            learning_rate=3e-5, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device.type == "cpu",
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=args.seed,
            dataloader_drop_last=True, batch_sampler=in_order)
        data = Dataset.from_dict({"anchor": texts, "positive": texts})
        SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss, callbacks=[Clock()]).train()
    return {**meter.result(), "steps": args.steps}


def matmul_rate(device, precision: str) -> float:
    """FLOP/s of a large square matmul in the training precision (the MFU denominator), best of 5."""
    n = 4096 if device.type == "cuda" else 1024
    dtype = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    best = math.inf
    for _ in range(5):
        sync(device)
        start = time.perf_counter()
        for _ in range(4):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - start) / 4)
    return 2 * n ** 3 / best


def model_flops_per_token(config, seq_len: float) -> float:
    """Training FLOPs per token (forward + backward = 3 x forward): 6 x non-embedding parameters plus the
    attention scores and values, 6 x layers x seq_len x hidden (Kaplan et al. 2020)."""
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    return 6 * layers * (4 * h * h + 2 * h * inter) + 6 * layers * seq_len * h


class Rates:
    """ms/step, sentences/s, real tokens/s and MFU of a timing. Every row trains on the same batches, so the
    real tokens (the useful work) of train.py's batches count for all."""

    def __init__(self, config, batch_size: int, matmul_tflops: float):
        self.config, self.batch_size, self.matmul_tflops = config, batch_size, matmul_tflops

    def __call__(self, t: dict, flags: str, real_tokens: int | None = None) -> dict:
        seconds, steps, real_tokens = t["seconds"], t["steps"], real_tokens or t["real_tokens"]
        per_step = real_tokens / steps
        flops = 2 * per_step * model_flops_per_token(self.config, per_step / self.batch_size)  # 2 views
        return {**t, "real_tokens": real_tokens, "flags": flags, "ms_per_step": 1000 * seconds / steps,
                "sentences_per_s": self.batch_size * steps / seconds, "real_tokens_per_s": 2 * real_tokens / seconds,
                "mfu": flops / (seconds / steps) / (self.matmul_tflops * 1e12)}


def parse_args(argv=None):
    p = parser(__doc__)
    add_step_arguments(p)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="train.py flag sets to time (default: default unpad; on GPU also compile, compile-cudagraphs)")
    p.add_argument("--rank_reduction", type=number(float, 0), default=0.1,
                   help="RR's λ in the RR timing, 0 for none (default 0.1)")
    p.add_argument("--sentence_transformers", action=argparse.BooleanOptionalAction, default=True,
                   help="time sentence-transformers' recipe too (default yes)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = device_of(args)
    if args.sentence_transformers:
        need_peer(("sentence_transformers", "datasets"), "--no-sentence_transformers")
    sentences = resolve(args, device)
    gpu_only = ["compile", "compile-cudagraphs"] if device.type == "cuda" else []
    variants = args.variants or ["default", "unpad", *gpu_only]
    report = Report(args.json, device, **step_settings(args), rank_reduction=args.rank_reduction)
    r = report.data
    r["matmul_tflops"] = matmul_rate(device, args.mixed_precision) / 1e12
    with tempfile.TemporaryDirectory() as tmp:
        from transformers import AutoConfig

        path = model_dir(args, tmp)
        rates = Rates(AutoConfig.from_pretrained(path), args.batch_size, r["matmul_tflops"])
        print(f"{r['model']} | {r['device']} | {r['precision']} | batch {args.batch_size} x 2 views, max_len "
              f"{args.max_seq_length} | {args.steps} timed steps after {args.warmup_steps} | matmul "
              f"{r['matmul_tflops']:.2f} TFLOP/s", flush=True)

        train = r["train"] = {}
        total = args.warmup_steps + args.steps
        for name in variants:
            flags = [*VARIANTS[name], *train_flags(args), "--rank-reduction", str(args.rank_reduction)]
            timed = report.attempt(f"train.py {name}", lambda: time_steps(TrainPy(path, sentences, flags, total),
                                                                          args.warmup_steps, args.steps, device))
            if timed is None:
                continue
            train[name] = rates(timed[""], variant_flags(name))
            line = f"train.py {train[name]['flags']}: {train[name]['ms_per_step']:.1f} ms/step"
            if "rr" in timed:
                rr_flags = f"{' '.join(VARIANTS[name])} --rank-reduction {args.rank_reduction:g}".strip()
                rr = rates(timed["rr"], rr_flags)
                rr["rr_overhead_fraction"] = rr["ms_per_step"] / train[name]["ms_per_step"] - 1
                train[f"{name} + rank-reduction"] = rr
                line += f", with --rank-reduction {args.rank_reduction}: {rr['ms_per_step']:.1f}"
            print(line, flush=True)
        if not set(variants) & set(train):
            sys.exit("error: no variant of train.py's step ran (see the errors above)")
        fastest = min((n for n in variants if n in train), key=lambda n: train[n]["ms_per_step"])
        r.update(fastest_variant=fastest, fastest_variant_flags=train[fastest]["flags"])
        if f"{fastest} + rank-reduction" in train:
            r["rr_overhead_fraction"] = train[f"{fastest} + rank-reduction"]["rr_overhead_fraction"]
        if args.sentence_transformers:
            st = report.attempt("sentence-transformers",
                                lambda: time_sentence_transformers(path, sentences, args, device))
            if st is not None:
                train["sentence-transformers"] = rates(st, "MNRL, its trainer", train[fastest]["real_tokens"])
                print(f"sentence-transformers (MNRL): {train['sentence-transformers']['ms_per_step']:.1f} ms/step")
                st_ms = train["sentence-transformers"]["ms_per_step"]
                r["train_speedup_vs_sentence_transformers"] = st_ms / train[fastest]["ms_per_step"]
                if "default" in train:
                    r["train_speedup_default_flags"] = st_ms / train["default"]["ms_per_step"]
    return report.finish(format_table(r))


def format_table(r: dict) -> str:
    lines = [step_header(r), "",
             "| training step | ms/step | sentences/s | real tokens/s | MFU | vs sentence-transformers | "
             f"{MEMORY_HEADER} |",
             "|---|---|---|---|---|---|---|---|"]
    st = r["train"].get("sentence-transformers")
    for name, t in r["train"].items():
        label = name if name == "sentence-transformers" else f"train.py {t['flags']}"
        speed = f"{st['ms_per_step'] / t['ms_per_step']:.2f}x" if st else "-"
        lines.append(f"| {label} | {t['ms_per_step']:.1f} | {t['sentences_per_s']:.0f} | "
                     f"{t['real_tokens_per_s']:.0f} | {100 * t['mfu']:.1f} % | {speed} | {memory_cells(t)} |")
    lines += [f"Rank Reduction adds {100 * t['rr_overhead_fraction']:+.1f} % to the step of train.py "
              f"{r['train'][name.split(' + ')[0]]['flags']} (the same batches, in alternating blocks)"
              for name, t in r["train"].items() if "rr_overhead_fraction" in t]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
