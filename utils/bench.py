"""Speed benchmark: train.py's training step and evaluate.py's encoder against sentence-transformers.

    # this CPU, the one real encoder here (set up as in the README; sentence-transformers is in
    # requirements-dev.txt, a benchmark/test-only dependency)
    python -m utils.bench --model ../shared/models/all-MiniLM-L6-v2 --data_dir ../shared/data --json bench.json

    # a GPU, BERT-base shape with random weights (speed does not depend on them: nothing to download
    # but a tokenizer; --tokenizer takes a local folder too)
    python -m utils.bench --config bert-base --data_dir data --json bench-h100.json

Measured in ONE run, on the same machine and settings (batch, max length, precision):
- train: ms per optimizer step of `train.train_step` (train.py's own step, batches from its own
  `SentenceBatches`), for each variant of train.py's speed flags, vs sentence-transformers' SimCSE recipe
  (`SentenceTransformerTrainer` + `MultipleNegativesRankingLoss`, the sentence list as anchor and positive:
  one forward per column), timed from the trainer's own step callbacks; sentences/s, real tokens/s, and
  MFU = model FLOPs of the real tokens / time / the matmul rate measured here in the same precision;
- RR: every variant with and without `--rank-reduction`, in alternating blocks on the same batches;
- encode: sentences/s of evaluate.py's `encode` vs `SentenceTransformer.encode` on the unique STS test
  sentences (same pooler, same max length), and the wall time of the full STS test suite;
- in-training evaluation: one STS-B dev + SICK-R trial + rank-probe evaluation, relative to the
  `--eval_steps` training steps between two evaluations, and one rank-probe-only evaluation relative to
  the 10 steps between two of them in train.py's dense early schedule.
Steps are timed back to back with one device sync at the end (the training loop never waits per step).
"""

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback

import torch

from utils.methods import METHODS

# random-init model shapes: speed depends on the shape only
CONFIGS = {
    "bert-base": dict(model_type="bert", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072),
    "bert-large": dict(model_type="bert", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                       intermediate_size=4096),
    "roberta-base": dict(model_type="roberta", hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                         intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1),
    "minilm-l6": dict(model_type="bert", hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                      intermediate_size=1536),
}
DEFAULT_TOKENIZER = {"bert": "bert-base-uncased", "roberta": "roberta-base"}

# train.py's speed flags, by name
VARIANTS = {
    "default": {},
    "unpad": {"unpad_inputs": True},
    "compile": {"pad_to_max_length": True, "torch_compile": "default"},
    "compile-cudagraphs": {"pad_to_max_length": True, "torch_compile": "reduce-overhead"},
    "unpad+compile": {"unpad_inputs": True, "torch_compile": "default"},
}
FLAGS = {"unpad_inputs": "--unpad_inputs", "pad_to_max_length": "--pad_to_max_length", "torch_compile": "--torch_compile"}


def variant_flags(name: str) -> str:
    opts = VARIANTS[name]
    return " ".join(FLAGS[k] + ("" if v is True or v == "default" else f" {v}") for k, v in opts.items()) or "(none)"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default=None, help="a real checkpoint (local folder or hub name)")
    src.add_argument("--config", default="bert-base", choices=list(CONFIGS), help="random-init model of this shape")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer for --config (default: bert-base-uncased / roberta-base from the hub)")
    p.add_argument("--data_dir", required=True, help="SentEval data/ folder: STS sentences and the in-training eval")
    p.add_argument("--train_file", default=None,
                   help="training text, one sentence per line (default: the STS test sentences, shorter than wiki1m's)")
    p.add_argument("--batch_size", type=int, default=64, help="sentences per step (x 2 views)")
    p.add_argument("--max_seq_length", type=int, default=32)
    p.add_argument("--steps", type=int, default=None, help="timed steps per method (default: 30 on GPU, 12 on CPU)")
    p.add_argument("--warmup_steps", type=int, default=None,
                   help="untimed steps first, >= 1 (default: 10 on GPU, 2 on CPU)")
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=None,
                   help="train.py flag sets to time (default: default unpad; on GPU also compile, compile-cudagraphs)")
    p.add_argument("--rank_reduction", type=float, default=0.1, help="RR weight for the RR measurement")
    p.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                   help="instead: the training step of these train.py --method's (with and without RR) against "
                        "SimCSE's in the same run, with the first of --variants")
    p.add_argument("--mixed_precision", choices=["no", "bf16", "fp16"], default=None,
                   help="default: bf16 on GPU, no on CPU (applies to both methods)")
    p.add_argument("--encode_limit", type=int, default=None, help="encode only the first N unique STS test sentences")
    p.add_argument("--eval_batch_size", type=int, default=128, help="encode batch size (both methods)")
    p.add_argument("--eval_steps", type=int, default=125, help="training steps between two in-training evaluations")
    p.add_argument("--skip", nargs="+", default=[], choices=["sentence-transformers", "rr", "encode", "suite", "eval"],
                   help="leave these measurements out")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    if not args.rank_reduction > 0:
        p.error(f"argument --rank_reduction: must be > 0, got {args.rank_reduction} (use --skip rr to leave RR out)")
    for flag in ("batch_size", "max_seq_length", "steps", "warmup_steps", "encode_limit", "eval_batch_size", "eval_steps"):
        value = getattr(args, flag)
        # at least one warm-up step: the first step of every method pays for allocations (and compilation)
        if value is not None and value < (2 if flag == "batch_size" else 1):
            p.error(f"argument --{flag}: out of range: {value}")
    return args


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


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
    per_layer = 4 * h * h + 2 * h * inter  # Q, K, V, O and the feed-forward block
    return 6 * layers * per_layer + 6 * layers * seq_len * h


def build_model_dir(args, tmp: str) -> str:
    """--model as given, or a random-init --config model saved with its tokenizer (both methods load it)."""
    if args.model:
        return args.model
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    shape = dict(CONFIGS[args.config])
    model_type = shape.pop("model_type")
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or DEFAULT_TOKENIZER[model_type])
    extra = {"pad_token_id": tokenizer.pad_token_id} if model_type == "roberta" else {}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), **shape, **extra)
    torch.manual_seed(args.seed)
    path = os.path.join(tmp, args.config)
    AutoModel.from_config(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# ----------------------------------------------------------------------------- training steps
def time_train_py(model_dir, sentences, args, device, precision, variant: str, rr_weights=(0.0,),
                  method: str = "simcse") -> dict:
    """Timing of train.py's step (train_step, make_optimizer, SentenceBatches) with the flags of `variant`:
    {rr_weight: {"seconds", "steps", "real_tokens"}}. The RR weights take turns in blocks of steps on the
    same model and the same batches, so that their difference is not one of machine load or batch lengths."""
    from accelerate import Accelerator
    from transformers import get_scheduler

    from train import make_optimizer, parse_args, train_step
    from utils.data import SentenceBatches
    from utils.methods import METHODS, TrainingModel
    from utils.model import SimCSEModel, load_pretrained

    opts = VARIANTS[variant]
    accelerator = Accelerator(mixed_precision=precision, cpu=device.type == "cpu")
    torch.manual_seed(args.seed)
    encoder, tokenizer = load_pretrained(model_dir)
    # the method's published knobs, as train.py would resolve them
    method_args = parse_args(["--method", method, "--train_file", "-", "--eval_data_dir", "-", "--output_dir", "-",
                              "--seed", str(args.seed), "--max_seq_length", str(args.max_seq_length),
                              "--per_device_train_batch_size", str(args.batch_size)])
    sentence_model = SimCSEModel(encoder, "cls", METHODS[method].recipe["mlp_only_train"],
                                 unpad=opts.get("unpad_inputs", False))
    raw = TrainingModel(sentence_model, METHODS[method](method_args, sentence_model, tokenizer)).to(accelerator.device)
    optimizer = make_optimizer(raw, 3e-5, 0.0, accelerator.device)
    scheduler = get_scheduler("constant", optimizer)
    model, optimizer = accelerator.prepare(raw, optimizer)
    if opts.get("torch_compile"):
        mode = opts["torch_compile"]
        model = torch.compile(model, mode=None if mode == "default" else mode)
    model.train()
    batches = SentenceBatches(sentences, tokenizer, args.batch_size, args.max_seq_length, args.seed,
                              pad_to_max_length=opts.get("pad_to_max_length", False))

    def run(steps, weight):
        for step in steps:
            inputs = raw.method.views(batches(step % batches.steps_per_epoch), step)
            train_step(model, optimizer, scheduler, accelerator, inputs, 0.05, weight, method_args.rr_on)

    for weight in rr_weights:  # warm-up (and compilation) of every path
        run(range(args.warmup_steps), weight)
    out = {w: {"seconds": 0.0, "steps": args.steps, "real_tokens": 0} for w in rr_weights}
    block = max(1, min(5, args.steps // 2))
    for first in range(args.warmup_steps, args.warmup_steps + args.steps, block):
        steps = range(first, min(first + block, args.warmup_steps + args.steps))
        tokens = sum(int(batches(s % batches.steps_per_epoch)["attention_mask"].sum()) for s in steps)
        for weight in rr_weights:
            sync(device)
            start = time.perf_counter()
            run(steps, weight)
            sync(device)
            out[weight]["seconds"] += time.perf_counter() - start
            out[weight]["real_tokens"] += tokens
    return out


def time_sentence_transformers(model_dir, sentences, args, device, precision) -> dict:
    """ms/step of sentence-transformers' SimCSE recipe through its own trainer."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer
    from sentence_transformers import SentenceTransformerTrainingArguments
    try:
        from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from utils.data import SentenceBatches

    model = SentenceTransformer(modules=_st_modules(model_dir, "cls", args.max_seq_length), device=str(device))
    loss = MultipleNegativesRankingLoss(model, scale=20.0)  # scale = 1 / temperature 0.05
    # exactly train.py's batches, in order: the same sentences and padding for both methods
    batches = SentenceBatches(sentences, None, args.batch_size, args.max_seq_length, args.seed)
    texts = [sentences[i] for step in range(args.warmup_steps + args.steps)
             for i in batches.indices(step % batches.steps_per_epoch)]
    data = Dataset.from_dict({"anchor": texts, "positive": texts})

    def in_order(dataset, batch_size, drop_last, **_):
        return torch.utils.data.BatchSampler(torch.utils.data.SequentialSampler(range(len(dataset))), batch_size,
                                             drop_last)

    class Clock(TrainerCallback):  # the trainer's own step boundaries: its data loading counts too
        def __init__(self):
            self.marks = []

        def on_step_end(self, targs, state, control, **kw):
            if state.global_step in (args.warmup_steps, args.warmup_steps + args.steps):
                sync(device)
                self.marks.append(time.perf_counter())

    clock = Clock()

    with tempfile.TemporaryDirectory() as out:
        targs = SentenceTransformerTrainingArguments(
            output_dir=out, per_device_train_batch_size=args.batch_size, max_steps=args.warmup_steps + args.steps,
            learning_rate=3e-5, bf16=precision == "bf16", fp16=precision == "fp16", use_cpu=device.type == "cpu",
            report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, seed=args.seed,
            dataloader_drop_last=True, batch_sampler=in_order)
        trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=data, loss=loss,
                                             callbacks=[clock])
        trainer.train()
    start, end = clock.marks
    return {"seconds": end - start, "steps": args.steps}


def _st_modules(model_dir, pooling: str, max_seq_length: int):
    try:
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Pooling, Transformer
    try:
        transformer = Transformer(model_dir, max_seq_length=max_seq_length, model_kwargs={"dtype": torch.float32})
    except TypeError:  # sentence-transformers < 6: model_args
        transformer = Transformer(model_dir, max_seq_length=max_seq_length, model_args={"torch_dtype": torch.float32})
    dim = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension  # v6 / v5
    return [transformer, Pooling(dim(), pooling_mode=pooling)]


def time_eigh(device, sizes=(64, 128, 256, 512)) -> dict:
    """ms of one eigh of an n x n Gram matrix (Rank Reduction's, n = global batch): in float32 on `device`,
    and through the host in float64 (copies included), the choice utils.rank.HOST_EIGH_MAX makes on a GPU."""
    out = {}
    for n in sizes:
        z = torch.randn(n, 768, device=device)
        K = z @ z.T / n
        row = {}
        for where, fn in (("device", lambda: torch.linalg.eigh(K)),
                          ("host_float64", lambda: [t.to(device) for t in torch.linalg.eigh(K.to("cpu", torch.float64))])):
            fn()
            sync(device)
            start = time.perf_counter()
            for _ in range(10):
                fn()
            sync(device)
            row[where] = 1000 * (time.perf_counter() - start) / 10
        out[n] = row
    return out


# ----------------------------------------------------------------------------- encoding and evaluation
def sts_test_sentences(data_dir) -> list:
    from utils.sts import load_sts_tasks

    unique = {}
    for task in load_sts_tasks(data_dir, "test").values():
        for s1, s2, _ in task.values():
            unique.update(dict.fromkeys(s1))
            unique.update(dict.fromkeys(s2))
    return list(unique)


def time_encode(model_dir, sentences, args, device) -> dict:
    """sentences/s of evaluate.py's encode and of SentenceTransformer.encode, same pooler and max length."""
    from sentence_transformers import SentenceTransformer

    from utils.encode import default_max_length, encode
    from utils.model import load_pretrained
    from utils.pooling import PooledEncoder

    encoder, tokenizer = load_pretrained(model_dir)
    max_length = default_max_length(tokenizer, encoder.config)
    ours = PooledEncoder(encoder, "cls_before_pooler").to(device)
    st = SentenceTransformer(modules=_st_modules(model_dir, "cls", max_length), device=str(device))
    results = {}
    for name, run in {
        "evaluate.py": lambda s: encode(ours, tokenizer, s, batch_size=args.eval_batch_size, max_length=max_length,
                                        device=device),
        "sentence-transformers": lambda s: st.encode(s, batch_size=args.eval_batch_size, convert_to_tensor=True,
                                                     show_progress_bar=False),
    }.items():
        # warm-up: on a GPU a whole pass, so that every batch shape has met the allocator and the kernels
        run(sentences if device.type == "cuda" else sentences[: args.eval_batch_size])
        sync(device)
        start = time.perf_counter()
        run(sentences)
        sync(device)
        seconds = time.perf_counter() - start
        results[name] = {"seconds": seconds, "sentences_per_s": len(sentences) / seconds}
    results["sentences"] = len(sentences)
    results["max_length"] = max_length
    return results


def time_sts_suite(model_dir, args, device) -> float:
    """Wall seconds of the full STS test suite (STS12-16, STS-B, SICK-R) as evaluate.py runs it."""
    from utils.encode import EmbeddingCache, encode
    from utils.model import load_pretrained
    from utils.pooling import PooledEncoder
    from utils.sts import evaluate_sts

    encoder, tokenizer = load_pretrained(model_dir)
    model = PooledEncoder(encoder, "cls_before_pooler").to(device)
    sync(device)
    start = time.perf_counter()
    evaluate_sts(EmbeddingCache(lambda s: encode(model, tokenizer, s, batch_size=args.eval_batch_size, device=device)),
                 args.data_dir, mode="test")
    sync(device)
    return time.perf_counter() - start


def time_in_training_eval(model_dir, args, device) -> dict:
    """Seconds of train.py's full evaluation (STS-B dev, SICK-R trial, rank probe) and of a rank-only one."""
    from train import in_training_eval
    from utils.encode import default_max_length
    from utils.model import SimCSEModel, load_pretrained
    from utils.rank import stsb_probe
    from utils.sts import load_sts_tasks

    encoder, tokenizer = load_pretrained(model_dir)
    dev_tasks = load_sts_tasks(args.data_dir, "dev")
    model = SimCSEModel(encoder, "cls", True).to(device)
    probe_sentences, probe_pairs = stsb_probe(args.data_dir, "dev")
    kwargs = dict(batch_size=args.eval_batch_size, max_length=default_max_length(tokenizer, encoder.config),
                  device=device)
    # one untimed evaluation first: training evaluates every --eval_steps, so the steady state is what counts
    in_training_eval(model, tokenizer, dev_tasks, probe_sentences, probe_pairs, True, **kwargs)
    out = {}
    for kind, full in (("full", True), ("rank_only", False)):
        sync(device)
        start = time.perf_counter()
        in_training_eval(model, tokenizer, dev_tasks, probe_sentences, probe_pairs, full, **kwargs)
        sync(device)
        out[f"{kind}_seconds"] = time.perf_counter() - start
    return out


# ----------------------------------------------------------------------------- the run
def time_methods(model_dir, sentences, args, device, precision, variant: str, attempt) -> dict:
    """{method: {"ms_per_step", "rr_ms_per_step", "vs_simcse", "rr_vs_simcse"}}: each method's train.py step on
    the same batches, SimCSE first (the reference); a method that fails is recorded by `attempt` and skipped."""
    weights = (0.0,) if "rr" in args.skip else (0.0, args.rank_reduction)
    out = {}
    for name in ["simcse"] + [m for m in args.methods if m != "simcse"]:
        timed = attempt(f"train.py --method {name}", lambda: time_train_py(model_dir, sentences, args, device, precision,
                                                                           variant, weights, method=name))
        if timed is None:
            continue
        row = {"ms_per_step": 1000 * timed[0.0]["seconds"] / timed[0.0]["steps"]}
        if len(weights) == 2:
            row["rr_ms_per_step"] = 1000 * timed[weights[1]]["seconds"] / timed[weights[1]]["steps"]
        out[name] = row
        print(f"train.py --method {name} [{variant_flags(variant)}]: {row['ms_per_step']:.1f} ms/step"
              + (f", with --rank-reduction {args.rank_reduction}: {row['rr_ms_per_step']:.1f}" if len(weights) == 2
                 else ""), flush=True)
    if "simcse" in out:
        for row in out.values():
            row["vs_simcse"] = row["ms_per_step"] / out["simcse"]["ms_per_step"]
            if "rr_ms_per_step" in row:
                row["rr_vs_simcse"] = row["rr_ms_per_step"] / out["simcse"]["ms_per_step"]
    return out


def format_methods_table(r: dict) -> str:
    lines = [f"{r['model']} | {r['device']} | torch {r['torch']} | {r['precision']} | batch {r['batch_size']} x 2 "
             f"views, max_len {r['max_seq_length']} | train.py {r['methods_variant_flags']} | {r['date']}", "",
             "| method | ms/step | x SimCSE | with RR, ms/step | with RR, x SimCSE |", "|---|---|---|---|---|"]
    for name, t in r["methods"].items():
        rr = (f"{t['rr_ms_per_step']:.1f} | {t['rr_vs_simcse']:.2f}x" if "rr_ms_per_step" in t and "rr_vs_simcse" in t
              else "- | -")
        vs = f"{t['vs_simcse']:.2f}x" if "vs_simcse" in t else "-"
        lines.append(f"| {METHODS[name].label} | {t['ms_per_step']:.1f} | {vs} | {rr} |")
    lines.append("(every method on the same batches of the same size, so per step = per sentence)")
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    gpu = device.type == "cuda"
    precision = args.mixed_precision or ("bf16" if gpu else "no")
    args.steps = args.steps or (30 if gpu else 12)
    args.warmup_steps = (10 if gpu else 2) if args.warmup_steps is None else args.warmup_steps
    variants = args.variants or (["default", "unpad", "compile", "compile-cudagraphs"] if gpu else ["default", "unpad"])

    from transformers import AutoConfig

    from utils.data import DataError, read_sentences

    # the peer's packages, checked before minutes of measurements (they are benchmark-only extras)
    needs = {"sentence-transformers": ("sentence_transformers", "datasets"), "encode": ("sentence_transformers",)}
    for part, modules in needs.items():
        if part not in args.skip:
            for module in modules:
                try:
                    __import__(module)
                except ImportError:
                    sys.exit(f"error: the {part} comparison needs the {module} package: pip install "
                             f"'sentence-transformers[train]' (requirements-dev.txt), or --skip {part}")

    try:
        sts_sentences = sts_test_sentences(args.data_dir)
        train_sentences = read_sentences(args.train_file) if args.train_file else sts_sentences
    except DataError as err:
        sys.exit(f"error: {err}")
    card = torch.cuda.get_device_name(device) if gpu else f"{platform.processor() or platform.machine()}, " \
        f"{torch.get_num_threads()} threads"
    results = {"device": card, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__,
               "precision": precision, "batch_size": args.batch_size, "max_seq_length": args.max_seq_length,
               "steps": args.steps, "warmup_steps": args.warmup_steps,
               "train_file": args.train_file or "STS test sentences"}
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = build_model_dir(args, tmp)
        config = AutoConfig.from_pretrained(model_dir)
        results["model"] = args.model or f"{args.config} (random init)"
        results["matmul_tflops"] = matmul_rate(device, precision) / 1e12
        print(f"{results['model']} | {card} | {precision} | batch {args.batch_size} x 2 views, max_len "
              f"{args.max_seq_length} | {args.steps} timed steps after {args.warmup_steps} | matmul "
              f"{results['matmul_tflops']:.2f} TFLOP/s", flush=True)

        def finish(r, real_tokens):
            """ms/step, sentences/s, real tokens/s and MFU; every method trains on the same batches, so the
            real tokens (the useful work) of train.py's batches count for all."""
            r["ms_per_step"] = 1000 * r["seconds"] / r["steps"]
            r["sentences_per_s"] = args.batch_size * r["steps"] / r["seconds"]
            tokens = real_tokens / r["steps"]
            flops = 2 * tokens * model_flops_per_token(config, tokens / args.batch_size)  # 2 views
            r["real_tokens_per_s"] = 2 * real_tokens / r["seconds"]
            r["mfu"] = flops / (r["ms_per_step"] / 1000) / (results["matmul_tflops"] * 1e12)
            return r

        def save():  # after every measurement: a run cut short keeps what it measured
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)

        def attempt(part: str, measure):
            """One measurement; a failure (a compiler error, say) is recorded and printed, and the others run."""
            try:
                return measure()
            except Exception as err:  # noqa: BLE001 - any failure of one measurement
                traceback.print_exc()
                reason = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"[:500]
                results.setdefault("failed", {})[part] = reason
                print(f"{part}: FAILED ({reason})", flush=True)
                return None
            finally:
                save()

        if args.methods:  # the methods' step times only: the rest of the bench does not depend on the method
            results["methods_variant_flags"] = variant_flags(variants[0])
            results["methods"] = time_methods(model_dir, train_sentences, args, device, precision, variants[0], attempt)
            save()
            return print_table(format_methods_table(results), results, args.json)

        train, rr_of = {}, {}
        results["train"] = train
        weights = (0.0,) if "rr" in args.skip else (0.0, args.rank_reduction)
        for name in variants:
            timed = attempt(f"train.py {name}",
                            lambda: time_train_py(model_dir, train_sentences, args, device, precision, name, weights))
            if timed is None:
                continue
            train[name] = finish(timed[0.0], timed[0.0]["real_tokens"])
            line = f"train.py [{variant_flags(name)}]: {train[name]['ms_per_step']:.1f} ms/step"
            if len(weights) == 2:
                rr_of[name] = finish(timed[weights[1]], timed[weights[1]]["real_tokens"])
                line += f", with --rank-reduction {args.rank_reduction}: {rr_of[name]['ms_per_step']:.1f}"
            print(line, flush=True)
        if not train:
            sys.exit("error: no variant of train.py's step ran (see the errors above)")
        real_tokens = next(iter(train.values()))["real_tokens"]
        fastest = min(train, key=lambda n: train[n]["ms_per_step"])
        if "sentence-transformers" not in args.skip:
            st = attempt("sentence-transformers", lambda: finish(
                time_sentence_transformers(model_dir, train_sentences, args, device, precision), real_tokens))
            if st is not None:
                train["sentence-transformers"] = st
                print(f"sentence-transformers (MNRL): {st['ms_per_step']:.1f} ms/step", flush=True)
        for name, r in rr_of.items():
            r["rr_overhead_fraction"] = r["ms_per_step"] / train[name]["ms_per_step"] - 1
            train[f"{name} + rank-reduction"] = r
        if rr_of:  # the RR penalty alone, forward + backward, each solver (train.py --rr_solver)
            from utils.matrix_entropy import time_solvers

            solvers = attempt("rr solvers", lambda: time_solvers((64, 256, 512), config.hidden_size, device=device))
            if solvers is not None:
                results["rr_solver_ms"] = solvers
                print("RR penalty fwd+bwd ms (B: " + ", ".join(solvers) + "): " + ", ".join(
                    f"{b}: " + " / ".join(f"{solvers[s][b]:.2f}" for s in solvers) for b in (64, 256, 512)), flush=True)
        if rr_of and gpu:
            eigh = attempt("eigh", lambda: time_eigh(device))
            if eigh is not None:
                results["rr_eigh_ms"] = eigh
                print("RR eigh ms (n: device float32 / host float64): " + ", ".join(
                    f"{n}: {t['device']:.2f} / {t['host_float64']:.2f}" for n, t in eigh.items()), flush=True)
        results["fastest_variant"] = fastest
        results["fastest_variant_flags"] = variant_flags(fastest)
        if "sentence-transformers" in train:
            st_ms = train["sentence-transformers"]["ms_per_step"]
            results["train_speedup_vs_sentence_transformers"] = st_ms / train[fastest]["ms_per_step"]
            if "default" in train:
                results["train_speedup_default_flags"] = st_ms / train["default"]["ms_per_step"]
        if rr_of:
            results["rr_overhead_fraction"] = rr_of[fastest]["rr_overhead_fraction"]
        save()

        if "encode" not in args.skip:
            subset = sts_sentences[: args.encode_limit] if args.encode_limit else sts_sentences
            enc = attempt("encode", lambda: time_encode(model_dir, subset, args, device))
            if enc is not None:
                results["encode"] = enc
                results["encode_speedup_vs_sentence_transformers"] = \
                    enc["evaluate.py"]["sentences_per_s"] / enc["sentence-transformers"]["sentences_per_s"]
                print(f"encode {enc['sentences']} STS test sentences: evaluate.py "
                      f"{enc['evaluate.py']['sentences_per_s']:.0f}/s, sentence-transformers "
                      f"{enc['sentence-transformers']['sentences_per_s']:.0f}/s", flush=True)
        if "suite" not in args.skip:
            seconds = attempt("suite", lambda: time_sts_suite(model_dir, args, device))
            if seconds is not None:
                results["sts_test_suite_seconds"] = seconds
                print(f"full STS test suite: {seconds:.1f} s", flush=True)
        if "eval" not in args.skip:
            ev = attempt("eval", lambda: time_in_training_eval(model_dir, args, device))
            if ev is not None:
                between = args.eval_steps * train[fastest]["ms_per_step"] / 1000
                ev["eval_steps"] = args.eval_steps
                ev["fraction_of_training_time"] = ev["full_seconds"] / (ev["full_seconds"] + between)
                # train.py's dense rank schedule (every 10 steps until step 500) costs more while it lasts
                dense = 10 * train[fastest]["ms_per_step"] / 1000
                ev["rank_eval_fraction_while_dense"] = ev["rank_only_seconds"] / (ev["rank_only_seconds"] + dense)
                results["in_training_eval"] = ev
                save()
    return print_table(format_table(results), results, args.json)


def print_table(table: str, results: dict, json_path) -> dict:
    """The benchmark's last words: its table, where the JSON went; returns the results."""
    print()
    print(table)
    if json_path:
        print(f"\n-> {json_path}")
    return results


def format_table(r: dict) -> str:
    lines = [f"{r['model']} | {r['device']} | torch {r['torch']} | {r['precision']} | batch {r['batch_size']} x 2 "
             f"views, max_len {r['max_seq_length']} | {r['train_file']} | {r['date']}", "",
             "| training step | ms/step | sentences/s | real tokens/s | MFU | vs sentence-transformers |",
             "|---|---|---|---|---|---|"]
    st = r["train"].get("sentence-transformers")
    for name, t in r["train"].items():
        label = name if name == "sentence-transformers" else f"train.py {variant_flags(name.split(' + ')[0])}" + \
            (f" --rank-reduction" if "rank-reduction" in name else "")
        mfu = f"{100 * t['mfu']:.1f} %"
        speed = f"{st['ms_per_step'] / t['ms_per_step']:.2f}x" if st else "-"
        lines.append(f"| {label} | {t['ms_per_step']:.1f} | {t['sentences_per_s']:.0f} | "
                     f"{t['real_tokens_per_s']:.0f} | {mfu} | {speed} |")
    for name, t in r["train"].items():
        if "rr_overhead_fraction" in t:
            lines.append(f"Rank Reduction adds {100 * t['rr_overhead_fraction']:+.1f} % to the step of train.py "
                         f"{variant_flags(name.split(' + ')[0])} (the same batches, in alternating blocks).")
    if "rr_solver_ms" in r:
        solvers = r["rr_solver_ms"]
        lines.append("RR penalty alone, forward + backward, ms by batch rows (" + " / ".join(solvers) + "): " + ", ".join(
            f"B={b}: " + " / ".join(f"{solvers[s][b]:.2f}" for s in solvers) for b in next(iter(solvers.values()))))
    if "rr_eigh_ms" in r:
        lines.append("RR's eigh of the n x n batch Gram matrix, ms (on the device in float32 / through the host in "
                     "float64): " + ", ".join(f"n={n}: {t['device']:.2f} / {t['host_float64']:.2f}"
                                            for n, t in r["rr_eigh_ms"].items()))
    if "encode" in r:
        e = r["encode"]
        lines.append(f"\n| encode ({e['sentences']} STS test sentences) | seconds | sentences/s |\n|---|---|---|")
        for name in ("evaluate.py", "sentence-transformers"):
            lines.append(f"| {name} | {e[name]['seconds']:.1f} | {e[name]['sentences_per_s']:.0f} |")
        lines.append(f"encode speed-up vs sentence-transformers: {r['encode_speedup_vs_sentence_transformers']:.2f}x")
    if "sts_test_suite_seconds" in r:
        lines.append(f"full STS test suite (STS12-16, STS-B, SICK-R): {r['sts_test_suite_seconds']:.1f} s")
    if "in_training_eval" in r:
        ev = r["in_training_eval"]
        lines.append(f"in-training evaluation: {ev['full_seconds']:.2f} s = {100 * ev['fraction_of_training_time']:.1f} % "
                     f"of training time at --eval_steps {ev['eval_steps']}; rank probe only: "
                     f"{ev['rank_only_seconds']:.2f} s = {100 * ev['rank_eval_fraction_while_dense']:.1f} % while the "
                     f"dense rank schedule lasts (--rank_eval_steps 10, until step 500 by default)")
    for part, reason in r.get("failed", {}).items():
        lines.append(f"FAILED: {part}: {reason}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
