"""Score a sentence encoder on SimCSE's STS and transfer tasks and SentEval's probing tasks, with SimCSE's
numbers (SentEval data and protocols, without SentEval).

    # the 7 test sets of SimCSE's STS table: STS12-16 ("all"), STS-B test, SICK-R test, and their Avg.
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode test --task_set sts --data_dir data

    # a sentence-transformers model with mean pooling, results also written to JSON
    python evaluate.py --model_name_or_path path/to/model --pooler avg --output_json results/sts.json

    # the dev sets training selects by, read with the embedding training read them with
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode dev --embedding dev --data_dir data

    # STS + the 7 transfer tasks + the probing tasks in a folder, SentEval's prototyping classifier setting
    python evaluate.py --model_name_or_path path/to/model --mode fasttest --task_set full --data_dir data \\
        --probing_dir data/probing

    # MTEB tasks (needs `pip install mteb`), read with the checkpoint's embedding; a local task as FILE.py:CLASS
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mteb STSBenchmark SICK-R my_tasks.py:MySTS

The embedding is what the checkpoint records (utils/embedding.py): train.py's exports name their pooler,
and PromptBERT's its text template and [MASK] state; `--embedding dev` reads the one training selected
checkpoints by, where a method has two. An explicit --pooler wins and drops any template. Exit status: 0
done; 2 a bad input, said in one line `error: ...` (a flag, a data file, an output path, a model folder
that cannot be loaded, a pooler this model lacks), before the model is loaded where possible.
"""

import argparse
import os
import sys
import time

import torch

from utils.classifier import CONFIGS
from utils.cli import number
from utils.data import DataError, check_output_path
from utils.embedding import WHICH, Embedding, checkpoint_embedder, read_embedding
from utils.encode import EmbeddingCache, default_max_length, encode, parse_device
from utils.files import write_json_atomic
from utils.model import ModelLoadError, load_pretrained
from utils.mteb_eval import load_tasks as load_mteb_tasks
from utils.mteb_eval import run_tasks as run_mteb_tasks
from utils.pooling import POOLERS
from utils.probing import load_probing_tasks
from utils.sts import format_table, load_sts_tasks, score_sts
from utils.transfer import format_table as format_scores
from utils.transfer import load_transfer_tasks, run_tasks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model_name_or_path", required=True, help="local folder (or hub name) of the encoder")
    p.add_argument("--pooler", choices=POOLERS, default=None, help="read this pooler instead of what the checkpoint records")
    p.add_argument("--embedding", choices=WHICH, default="test",
                   help="the checkpoint's test embedding, or the one training selected it by (dev)")
    p.add_argument("--mode", choices=["test", "dev", "fasttest"], default="test",
                   help="test or dev sets; the classifiers in SentEval's literature (test) or prototyping setting")
    p.add_argument("--task_set", choices=["sts", "transfer", "probing", "full"], default=None,
                   help="full = sts + transfer (+ probing with --probing_dir); default sts, none with --mteb")
    p.add_argument("--mteb", nargs="+", metavar="TASK", default=[],
                   help="MTEB tasks to score: names (`mteb available-tasks` lists them) or FILE.py:CLASS, a local task")
    p.add_argument("--data_dir", default="data", help="SentEval's data/ folder (the one holding downstream/)")
    p.add_argument("--probing_dir", default=None, help="folder of SentEval's probing files")
    p.add_argument("--seed", type=number(int, 0), default=1111, help="seeds the classifiers (SentEval: 1111)")
    p.add_argument("--batch_size", type=number(int, 1), default=128, help="sentences per encode batch")
    p.add_argument("--max_seq_length", type=number(int, 2), default=None,
                   help="truncate inputs to this many tokens (default: the longest the encoder accepts)")
    p.add_argument("--output_json", default=None, help="also write the results here")
    p.add_argument("--device", type=parse_device, default=None, help="cpu or cuda (default: cuda when available)")
    args = p.parse_args(argv)
    if args.task_set is None and not args.mteb:
        args.task_set = "sts"
    if args.task_set == "probing" and not args.probing_dir:
        p.error("--task_set probing needs --probing_dir (the folder holding e.g. sentence_length.txt)")
    return args


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def main(argv=None):
    args = parse_args(argv)
    run_sts = args.task_set in ("sts", "full")
    run_transfer = args.task_set in ("transfer", "full")
    run_probing = args.task_set == "probing" or (args.task_set == "full" and args.probing_dir is not None)

    # ---- data: read before the model, so a wrong --data_dir or --output_json fails in a second
    try:
        if args.output_json:
            check_output_path(args.output_json, "--output_json")
        tasks = load_sts_tasks(args.data_dir, "dev" if args.mode == "dev" else "test") if run_sts else None
        transfer_tasks = load_transfer_tasks(args.data_dir) if run_transfer else {}
        probing_tasks = load_probing_tasks(args.probing_dir) if run_probing else {}
        mteb_tasks = load_mteb_tasks(args.mteb) if args.mteb else []  # mteb's data: downloaded or cached here
    except DataError as err:
        fail(str(err))

    # ---- model and the embedding it is read with
    model, tokenizer, embedding, source, max_length, device = load_embedder(args)
    # each sentence is encoded once per run, however many tasks share it
    embed = EmbeddingCache(lambda sentences: encode(model, tokenizer, sentences, batch_size=args.batch_size,
                                                    max_length=max_length, device=device, progress=sys.stderr.isatty(),
                                                    template=embedding.template, period=embedding.period))
    record = {"model": args.model_name_or_path, "pooler": embedding.pooler, "pooler_source": source,
              "template": embedding.template, "period": embedding.period, "embedding": args.embedding,
              "denoise": embedding.denoise, "mode": args.mode, "task_set": args.task_set, "max_seq_length": max_length,
              "batch_size": args.batch_size, "device": str(device)}

    # ---- evaluate
    start = time.time()
    print(f"------ {args.mode} ------")
    if run_sts:
        try:
            result = score_sts(embed, tasks)
        except ValueError as err:  # e.g. --pooler cls on an encoder without a pooler layer
            fail(str(err))
        print(format_table(result))
        print(f"{result['n_pairs']} pairs, {result['n_sentences']} unique sentences, {time.time() - start:.1f} s")
        record.update(scores={task: t["spearman"] for task, t in result["tasks"].items()}, **result)
    key = "devacc" if args.mode == "dev" else "acc"  # SimCSE's tables: test accuracy; dev mode: the dev accuracy
    for name, task_set in (("transfer", transfer_tasks), ("probing", probing_tasks)):
        if not task_set:
            continue
        try:
            results = run_tasks(task_set, embed, CONFIGS[args.mode], seed=args.seed, device=device, key=key)
        except ValueError as err:
            fail(str(err))
        print(format_scores(results["scores"]))
        if "MRPC" in results["tasks"]:
            print(f"MRPC F1 {results['tasks']['MRPC']['f1']:.2f}")
        record[name] = {**results, "metric": key, "classifier": CONFIGS[args.mode].as_dict(), "seed": args.seed}
        if name == "probing":
            print(f"(probing files from {args.probing_dir}: compare encoders on the same files only)")
            record[name]["probing_dir"] = args.probing_dir
    if mteb_tasks:
        record["mteb"] = mteb_scores(mteb_tasks, embed, args)
    seconds = time.time() - start
    if transfer_tasks or probing_tasks or mteb_tasks:
        print(f"{seconds:.1f} s in all")
    if args.output_json:
        record["seconds"] = round(seconds, 2)
        os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
        write_json_atomic(args.output_json, record, indent=2)
        print(f"wrote {args.output_json}")
    return record


def load_embedder(args):
    """(module, tokenizer, Embedding, where the embedding came from, max_length, device): the checkpoint read with
    its recorded embedding, or --pooler's; a checkpoint or embedding that cannot be read fails with its message."""
    try:
        encoder, tokenizer = load_pretrained(args.model_name_or_path)
        embedding, source = read_embedding(encoder.config, args.embedding)
    except ModelLoadError as err:
        fail(err.reason)
    except ValueError as err:
        fail(f"{args.model_name_or_path}/{err}")
    if args.pooler:
        embedding, source = Embedding(args.pooler), "--pooler" + (", the checkpoint's template not applied" if
                                                                  embedding.template else "")
    device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        model = checkpoint_embedder(encoder.to(device), tokenizer, embedding).to(device)
    except ValueError as err:  # the mask pooler on a tokenizer without a mask token, a template too long
        fail(f"{args.model_name_or_path}: {err}")
    max_length = args.max_seq_length or default_max_length(tokenizer, encoder.config)
    shown = f" | {embedding.describe()}" if embedding.describe() else ""
    print(f"model {args.model_name_or_path} | pooler {embedding.pooler} ({source}){shown} | max_seq_length "
          f"{max_length} | {device}")
    return model, tokenizer, embedding, source, max_length, device


def mteb_scores(mteb_tasks, embed, args) -> dict:
    """The MTEB tasks' results with this embedding, printed as a table."""
    try:
        results = run_mteb_tasks(mteb_tasks, embed, args.model_name_or_path, args.batch_size,
                                 progress=sys.stderr.isatty())
    except ValueError as err:
        fail(str(err))
    print(format_scores({task: 100 * r["score"] for task, r in results.items()}, avg=False))
    print("(MTEB's main scores x 100: " + ", ".join(f"{task} {r['main_score']}" for task, r in results.items()) + ")")
    return results


if __name__ == "__main__":
    main()
