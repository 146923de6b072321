"""Score a sentence encoder on SimCSE's STS and transfer tasks and SentEval's probing tasks, with SimCSE's
numbers (SentEval data and protocols, without SentEval).

    # the 7 test sets of SimCSE's STS table: STS12-16 ("all"), STS-B test, SICK-R test, and their Avg.
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode test --task_set sts --data_dir data

    # a sentence-transformers model with mean pooling, results also written to JSON
    python evaluate.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 --pooler avg --mode test \\
        --task_set sts --data_dir ../shared/data --output_json results/minilm_sts.json

    # the dev sets training watches: STS-B dev and SICK-R trial
    python evaluate.py --model_name_or_path runs/unsup-bert/best --mode dev --task_set sts --data_dir data

    # STS + the 7 transfer tasks + the probing tasks in a folder, SentEval's prototyping classifier setting
    python evaluate.py --model_name_or_path ../shared/models/all-MiniLM-L6-v2 --pooler avg --mode fasttest \\
        --task_set full --data_dir ../shared/data --probing_dir ../shared/data/probing

The embedding is the checkpoint's `config.sentence_embedding` where its export records one (a pooler, a
text template the sentences are put in, and whether a '.' ends them: PromptBERT's [MASK] state); else the
pooler is the checkpoint's `config.sentence_pooler` (train.py's export writes it), else SimCSE's default
`cls`. An explicit --pooler wins over both, and then no template is applied. What is scored is defined in utils/sts.py (STS),
utils/transfer.py and utils/probing.py (tasks), utils/classifier.py (the classifier protocols).
Exit status: 0 done; 2 a bad input, said in one line `error: ...` (a flag, a data file, an output path, a
model folder that cannot be loaded, a pooler this model lacks), before the model is loaded where possible.
"""

import argparse
import os
import sys
import time

import torch

from utils.classifier import CONFIGS
from utils.cli import number
from utils.data import DataError, check_output_path
from utils.encode import (EmbeddingCache, default_max_length, describe_template, encode, parse_device,
                          sentence_embedding_of)
from utils.model import ModelLoadError, load_pretrained
from utils.pooling import POOLERS, PooledEncoder
from utils.probing import load_probing_tasks
from utils.run_log import write_json_atomic
from utils.sts import format_table, load_sts_tasks, score_sts
from utils.transfer import load_transfer_tasks, run_tasks
from utils.transfer import format_table as format_scores

# ----------------------------------------------------------------------------- config
parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
parser.add_argument("--model_name_or_path", required=True, help="local folder (or hub name) of the encoder")
parser.add_argument("--pooler", choices=POOLERS, default=None,
                    help="default: the checkpoint's config.sentence_embedding (its pooler, text template and '.' "
                         "rule), else its config.sentence_pooler, else cls; a --pooler given here also drops "
                         "that template (mask: the state at the tokenizer's mask token, one per input)")
parser.add_argument("--mode", choices=["test", "dev", "fasttest"], default="test",
                    help="test: STS test sets, classifiers in SentEval's literature setting; fasttest: the same "
                         "tasks, its prototyping setting; dev: STS dev sets, prototyping setting, dev accuracies")
parser.add_argument("--task_set", choices=["sts", "transfer", "probing", "full"], default="sts",
                    help="full = sts + transfer (+ probing with --probing_dir)")
parser.add_argument("--data_dir", default="data", help="SentEval's data/ folder (the one holding downstream/)")
parser.add_argument("--probing_dir", default=None, help="folder of SentEval's probing files (tr/va/te lines)")
parser.add_argument("--seed", type=number(int, 0), default=1111,
                    help="classifiers: folds, held-out rows, initial weights, minibatch order (SentEval: 1111)")
parser.add_argument("--batch_size", type=number(int, 1), default=128, help="sentences per encode batch (on a GPU: a budget of this x 64 tokens)")
parser.add_argument("--max_seq_length", type=number(int, 2), default=None,
                    help="truncate inputs to this many tokens; default: the longest the encoder accepts")
parser.add_argument("--output_json", default=None, help="also write the results here (default: print only)")
parser.add_argument("--device", type=parse_device, default=None, help="cpu or cuda (default: cuda when available)")
args = parser.parse_args()
if args.task_set == "probing" and not args.probing_dir:
    parser.error("--task_set probing needs --probing_dir (the folder holding e.g. sentence_length.txt)")
run_sts = args.task_set in ("sts", "full")
run_transfer = args.task_set in ("transfer", "full")
run_probing = args.task_set == "probing" or (args.task_set == "full" and args.probing_dir is not None)


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ----------------------------------------------------------------------------- data
# Read before loading the model: a wrong --data_dir or --output_json fails in a second, not after the model.
try:
    if args.output_json:
        check_output_path(args.output_json, "--output_json")
    tasks = load_sts_tasks(args.data_dir, "dev" if args.mode == "dev" else "test") if run_sts else None
    transfer_tasks = load_transfer_tasks(args.data_dir) if run_transfer else {}
    probing_tasks = load_probing_tasks(args.probing_dir) if run_probing else {}
except DataError as err:
    fail(str(err))

# ----------------------------------------------------------------------------- model
try:
    encoder, tokenizer = load_pretrained(args.model_name_or_path)
except ModelLoadError as err:
    fail(err.reason)
try:
    embedding = sentence_embedding_of(encoder.config)
except ValueError as err:
    fail(f"{args.model_name_or_path}/{err}")
template, period = None, False
if args.pooler:
    pooler, why = args.pooler, "--pooler" + (", the checkpoint's template not applied" if embedding else "")
elif embedding:
    pooler, why = embedding["pooler"], "the checkpoint's config.sentence_embedding"
    template, period = embedding["template"], embedding["period"]
elif getattr(encoder.config, "sentence_pooler", None):
    pooler, why = encoder.config.sentence_pooler, "the checkpoint's config.sentence_pooler"
else:
    pooler, why = "cls", "SimCSE's default; no --pooler and no config.sentence_pooler"
if pooler not in POOLERS:
    fail(f"{args.model_name_or_path}/config.json: sentence_pooler {pooler!r} is not one of {', '.join(POOLERS)}")
device = args.device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
try:
    model = PooledEncoder(encoder, pooler, mask_token_id=tokenizer.mask_token_id).to(device)
except ValueError as err:  # the mask pooler on a tokenizer without a mask token
    fail(f"{args.model_name_or_path}: {err}")
max_length = args.max_seq_length or default_max_length(tokenizer, encoder.config)
shown = f" | {describe_template(template, period)}" if template or period else ""
print(f"model {args.model_name_or_path} | pooler {pooler} ({why}){shown} | max_seq_length {max_length} | {device}")

# ----------------------------------------------------------------------------- evaluate
# Each sentence is encoded once per run (a sentence shared by tasks is not encoded again).
embed = EmbeddingCache(lambda sentences: encode(model, tokenizer, sentences, batch_size=args.batch_size,
                                             max_length=max_length, device=device, progress=sys.stderr.isatty(),
                                             template=template, period=period))
config = CONFIGS[args.mode]
record = {"model": args.model_name_or_path, "pooler": pooler, "pooler_source": why, "template": template,
          "period": period, "mode": args.mode,
          "task_set": args.task_set, "max_seq_length": max_length, "batch_size": args.batch_size,
          "device": str(device)}
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

# SimCSE's tables report test accuracy; in dev mode, the dev accuracy that picked the L2 penalty.
key = "devacc" if args.mode == "dev" else "acc"
for name, task_set in (("transfer", transfer_tasks), ("probing", probing_tasks)):
    if not task_set:
        continue
    try:
        results = run_tasks(task_set, embed, config, seed=args.seed, device=device, key=key)
    except ValueError as err:
        fail(str(err))
    print(format_scores(results["scores"]))
    if "MRPC" in results["tasks"]:
        print(f"MRPC F1 {results['tasks']['MRPC']['f1']:.2f}")
    record[name] = {**results, "metric": key, "classifier": config.as_dict(), "seed": args.seed}
    if name == "probing":
        print(f"(probing files from {args.probing_dir}: compare encoders on the same files only)")
        record[name]["probing_dir"] = args.probing_dir
seconds = time.time() - start
if transfer_tasks or probing_tasks:
    print(f"{seconds:.1f} s in all")

if args.output_json:
    record["seconds"] = round(seconds, 2)
    os.makedirs(os.path.dirname(os.path.abspath(args.output_json)), exist_ok=True)
    write_json_atomic(args.output_json, record, indent=2)
    print(f"wrote {args.output_json}")
