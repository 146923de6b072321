"""Time evaluation: evaluate.py's encode against SentenceTransformer.encode, the full STS test suite, and
train.py's in-training evaluation as a share of training time.

    python -m benchmarks.bench_encode --model ../shared/models/all-MiniLM-L6-v2 --data_dir ../shared/data \\
        --train_file ../shared/data/train/wiki1m_for_simcse.first11914.txt --json encode.json
    python -m benchmarks.bench_encode --config bert-base --data_dir data --variant compile-cudagraphs \
        --json encode-gpu.json

- encode: sentences/s of evaluate.py's encoder (utils.embedding.checkpoint_embedder + utils.encode.encode) and
  of SentenceTransformer.encode on the unique STS test sentences, with the same embedding (the raw [CLS]), max
  length and batch size (on a GPU sentence-transformers runs in its default float32, evaluate.py in bf16
  autocast), each after an untimed warm-up (on a GPU a whole pass);
- suite: the wall time of the full STS test suite (STS12-16, STS-B, SICK-R) as evaluate.py scores it;
- in-training evaluation: utils.scoring.evaluate_in_training on the model train.py trains, a full one (STS-B dev,
  SICK-R trial, the rank probe) and a rank-only one, after an untimed one (the steady state), against the
  train.py steps between two: --eval_steps, and train.py's --rank_eval_steps while its dense rank schedule
  lasts. The step is bench_step's, with --variant's flags. Memory: benchmarks/timing.py.
"""

import tempfile

from benchmarks.bench_step import VARIANTS, TrainPy, add_step_arguments, resolve, step_header, step_settings, \
    time_steps, train_flags, variant_flags
from benchmarks.timing import MEMORY_HEADER, Meter, Report, device_of, memory_cells, model_dir, need_peer, parser, \
    st_model, sts_test_sentences
from utils.cli import number

PARTS = ("encode", "suite", "eval")


def parse_args(argv=None):
    p = parser(__doc__)
    add_step_arguments(p)
    p.add_argument("--variant", choices=list(VARIANTS), default="default",
                   help="train.py speed flags of the step the evaluation is compared with (default: default)")
    p.add_argument("--encode_limit", type=number(int, 1), default=None,
                   help="encode only the first N unique STS test sentences")
    p.add_argument("--eval_batch_size", type=number(int, 1), default=128,
                   help="sentences per encode batch of both encoders (default 128)")
    p.add_argument("--eval_steps", type=number(int, 1), default=125,
                   help="training steps between two in-training evaluations (default 125)")
    p.add_argument("--skip", nargs="+", default=[], choices=PARTS, help="leave these measurements out")
    return p.parse_args(argv)


def evaluate_py_encoder(path: str, args, device):
    """embed(sentences) as evaluate.py reads the raw [CLS] of the checkpoint (--pooler cls_before_pooler), and
    its max length."""
    from utils.embedding import Embedding, checkpoint_embedder
    from utils.encode import default_max_length, encode
    from utils.model import load_pretrained

    encoder, tokenizer = load_pretrained(path)
    model = checkpoint_embedder(encoder.to(device), tokenizer, Embedding("cls_before_pooler")).to(device)
    max_length = default_max_length(tokenizer, encoder.config)
    return (lambda s: encode(model, tokenizer, s, batch_size=args.eval_batch_size, max_length=max_length,
                             device=device)), max_length


def time_encode(path: str, sentences, args, device) -> dict:
    """{"evaluate.py", "sentence-transformers": Meter.result() + "sentences_per_s"; "sentences", "max_length"}"""
    ours, max_length = evaluate_py_encoder(path, args, device)
    st = st_model(path, "cls", max_length, device)
    runs = {"evaluate.py": ours, "sentence-transformers": lambda s: st.encode(
        s, batch_size=args.eval_batch_size, convert_to_tensor=True, show_progress_bar=False)}
    out = {"sentences": len(sentences), "max_length": max_length}
    for name, run in runs.items():
        # warm-up: on a GPU a whole pass, so that every batch shape has met the allocator and the kernels
        run(sentences if device.type == "cuda" else sentences[: args.eval_batch_size])
        with Meter(device) as meter:
            run(sentences)
        out[name] = {**meter.result(), "sentences_per_s": len(sentences) / meter.seconds}
    return out


def time_sts_suite(path: str, args, device) -> dict:
    """Meter.result() of the full STS test suite as evaluate.py runs it (files read, each sentence encoded once)."""
    from utils.encode import EmbeddingCache
    from utils.sts import load_sts_tasks, score_sts

    embed, _ = evaluate_py_encoder(path, args, device)
    with Meter(device) as meter:
        score_sts(EmbeddingCache(embed), load_sts_tasks(args.data_dir, "test"))
    return meter.result()


def time_in_training_eval(path: str, sentences, args, device) -> dict:
    """{"full", "rank_only": Meter.result(), "step": the step's, and each evaluation's share of training time}"""
    from utils.scoring import evaluate_in_training, load_eval_sets

    flags = [*VARIANTS[args.variant], *train_flags(args), "--eval_batch_size", str(args.eval_batch_size),
             "--eval_steps", str(args.eval_steps)]
    train = TrainPy(path, sentences, flags, args.warmup_steps + args.steps)
    step = time_steps(train, args.warmup_steps, args.steps, device)[""]
    step_s = step["seconds"] / step["steps"]
    sets = load_eval_sets(args.data_dir, train.args.probe_split, flag="--data_dir")
    out = {"step": {**step, "ms_per_step": 1000 * step_s, "flags": variant_flags(args.variant)},
           "eval_steps": args.eval_steps, "rank_eval_steps": train.args.rank_eval_steps}

    def evaluate(full: bool) -> None:
        evaluate_in_training(train.method, train.model, train.tokenizer, sets, full, train.args, train.accelerator)

    evaluate(True)  # untimed: training evaluates every --eval_steps, so the steady state is what counts
    for kind, full in (("full", True), ("rank_only", False)):
        with Meter(device) as meter:
            evaluate(full)
        out[kind] = meter.result()
    between = {"full": args.eval_steps * step_s, "rank_only": train.args.rank_eval_steps * step_s}
    for kind, key in (("full", "fraction_of_training_time"), ("rank_only", "rank_eval_fraction_while_dense")):
        out[key] = out[kind]["seconds"] / (out[kind]["seconds"] + between[kind])
    return out


def main(argv=None):
    args = parse_args(argv)
    device = device_of(args)
    if "encode" not in args.skip:
        need_peer(("sentence_transformers",), "--skip encode")
    train_sentences = resolve(args, device)
    sentences = sts_test_sentences(args.data_dir)[: args.encode_limit]
    report = Report(args.json, device, **step_settings(args), eval_batch_size=args.eval_batch_size)
    r = report.data
    with tempfile.TemporaryDirectory() as tmp:
        path = model_dir(args, tmp)
        if "encode" not in args.skip:
            enc = report.attempt("encode", lambda: time_encode(path, sentences, args, device))
            if enc is not None:
                r["encode"] = enc
                r["encode_speedup_vs_sentence_transformers"] = \
                    enc["evaluate.py"]["sentences_per_s"] / enc["sentence-transformers"]["sentences_per_s"]
                print(f"encode {enc['sentences']} STS test sentences: evaluate.py "
                      f"{enc['evaluate.py']['sentences_per_s']:.0f}/s, sentence-transformers "
                      f"{enc['sentence-transformers']['sentences_per_s']:.0f}/s", flush=True)
        if "suite" not in args.skip:
            suite = report.attempt("suite", lambda: time_sts_suite(path, args, device))
            if suite is not None:
                r["sts_test_suite"] = suite
                print(f"full STS test suite: {suite['seconds']:.1f} s", flush=True)
        if "eval" not in args.skip:
            ev = report.attempt("eval", lambda: time_in_training_eval(path, train_sentences, args, device))
            if ev is not None:
                r["in_training_eval"] = ev
    return report.finish(format_table(r))


def format_table(r: dict) -> str:
    lines = [f"{step_header(r)} | encode batch {r['eval_batch_size']}", ""]
    if "encode" in r:
        e = r["encode"]
        lines += [f"| encode ({e['sentences']} STS test sentences) | seconds | sentences/s | {MEMORY_HEADER} |",
                  "|---|---|---|---|---|"]
        lines += [f"| {name} | {e[name]['seconds']:.2f} | {e[name]['sentences_per_s']:.0f} | {memory_cells(e[name])} |"
                  for name in ("evaluate.py", "sentence-transformers")]
        lines.append(f"encode speed-up vs sentence-transformers: {r['encode_speedup_vs_sentence_transformers']:.2f}x")
    rows = []
    if "sts_test_suite" in r:
        rows.append(("full STS test suite (STS12-16, STS-B, SICK-R)", r["sts_test_suite"], "-"))
    if "in_training_eval" in r:
        ev = r["in_training_eval"]
        rows += [("in-training evaluation (STS-B dev, SICK-R trial, rank probe)", ev["full"],
                  f"{100 * ev['fraction_of_training_time']:.1f} % at --eval_steps {ev['eval_steps']}"),
                 ("rank-probe-only evaluation", ev["rank_only"], f"{100 * ev['rank_eval_fraction_while_dense']:.1f} % "
                  f"while the dense rank schedule lasts (--rank_eval_steps {ev['rank_eval_steps']})")]
    if rows:
        lines += ["", f"| evaluation | seconds | share of training time | {MEMORY_HEADER} |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {t['seconds']:.2f} | {share} | {memory_cells(t)} |" for name, t, share in rows]
    if "in_training_eval" in r:
        step = r["in_training_eval"]["step"]
        lines.append(f"(the training step: train.py {step['flags']}, {step['ms_per_step']:.1f} ms)")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
