"""Recorded runs: a tiny CPU run of each method (with and without RR, and one with an RR schedule, exports and
the peak checkpoint) must write what it wrote when the fixtures were recorded: metrics.jsonl without its
wall-clock fields, summary.json's keys and values (less timings, paths and versions), and a digest of the
weights of best/ and of every export.

Floating-point results are exact only on the same kind of machine: the comparison runs where the torch and
transformers versions and the CPU's kernel set (torch.backends.cpu.get_cpu_capability) are the recorded
ones, and is skipped with that reason elsewhere. Record again (after a change that is meant to change the
numbers) with `python -m tests.test_fixtures --record`.
"""

import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, WORDS, write_corpus, write_fake_senteval

FIXTURE = REPO / "tests" / "fixtures" / "runs.json"
COMMON = ("--per_device_train_batch_size", "8", "--max_seq_length", "16", "--learning_rate", "1e-4",
          "--logging_steps", "2", "--seed", "7", "--max_train_steps", "6", "--eval_steps", "3",
          "--rank_eval_steps", "1", "--rank_eval_until", "3")
METHOD_ARGS = {"esimcse": ("--queue_size", "16")}
TIMING = {"elapsed_s", "sentences_per_s", "train_seconds", "train_step_seconds_mean", "eval_seconds",
          "best_train_seconds"}
PATHS = {"best_dir", "peak_dir", "output_dir", "train_file", "eval_data_dir", "model_name_or_path", "from"}


def runs() -> dict:
    """{name: train.py flags} of the recorded runs."""
    from utils.methods import METHODS

    out = {}
    for method in METHODS:
        extra = ("--method", method, *METHOD_ARGS.get(method, ()))
        out[f"{method}-baseline"] = extra
        out[f"{method}-rr"] = (*extra, "--rank-reduction", "0.5")
    out["simcse-rr-target-exports"] = ("--rank-reduction", "0.5", "--rr_schedule", "target", "--rr_patience", "1",
                                       "--save_steps", "2", "--save_peak_checkpoint", "--phase_patience", "1",
                                       "--max_train_steps", "10", "--eval_steps", "2", "--rank_eval_until", "6")
    return out


def environment() -> dict:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability()}


def strip(obj):
    """A summary or record without wall-clock fields, paths and versions (they differ from run to run)."""
    if isinstance(obj, dict):
        return {k: strip(v) for k, v in obj.items() if k not in TIMING | PATHS | {"versions"}}
    if isinstance(obj, list):
        return [strip(v) for v in obj]
    return obj


def weights_digest(folder: Path) -> str:
    """sha256 over the tensors of a folder's model.safetensors, in name order (independent of the file layout)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode() + b"\0" + tensors[name].contiguous().numpy().tobytes())
    return digest.hexdigest()


def capture(out: Path) -> dict:
    with open(out / "metrics.jsonl") as f:
        records = [strip(json.loads(line)) for line in f]
    summary = strip(json.load(open(out / "summary.json")))
    weights = {"best": weights_digest(out / "best")}
    for folder in sorted((out / "checkpoints").glob("step-*")) + [out / "peak"]:
        if (folder / "model.safetensors").is_file():
            weights[folder.name] = weights_digest(folder)
    return {"records": records, "summary": summary, "weights": weights}


def train_in_process(argv) -> None:
    from accelerate.state import AcceleratorState

    import train

    AcceleratorState._reset_state(reset_partial_state=True)
    train.main(list(argv))


def fixture_model(path: Path) -> Path:
    """A 2-layer random BERT whose tokenizer is a fixed word list (conftest's trained tokenizers number their
    tokens differently from one process to the next), with weights wide enough for a rank that moves."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    chars = sorted(set("".join(WORDS)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *chars, *(f"##{c}" for c in chars)]
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), model_max_length=64)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, initializer_range=0.2)
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def record_all(root: Path) -> dict:
    model = fixture_model(root / "tiny-bert")
    corpus = write_corpus(root / "train.txt")
    data = write_fake_senteval(root / "senteval")
    results = {}
    for name, flags in runs().items():
        out = root / name
        train_in_process(["--model_name_or_path", str(model), "--train_file", str(corpus), "--eval_data_dir",
                          str(data), "--output_dir", str(out), *COMMON, *flags])
        results[name] = capture(out)
    return results


def test_the_recorded_runs_write_what_they_wrote(tmp_path):
    recorded = json.load(open(FIXTURE))
    if recorded["environment"] != environment():
        pytest.skip(f"the fixtures were recorded with {recorded['environment']}; this machine has {environment()}, "
                    "where floating-point results may differ in the last bits")
    assert sorted(recorded["runs"]) == sorted(runs())
    now = record_all(tmp_path)
    for name, then in recorded["runs"].items():
        assert now[name]["records"] == then["records"], name
        assert now[name]["summary"] == then["summary"], name
        assert now[name]["weights"] == then["weights"], name


if __name__ == "__main__":
    if sys.argv[1:] != ["--record"]:
        sys.exit("usage: python -m tests.test_fixtures --record")
    import tempfile

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with tempfile.TemporaryDirectory() as tmp:
        data = {"environment": environment(), "runs": record_all(Path(tmp))}
    FIXTURE.parent.mkdir(exist_ok=True)
    FIXTURE.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}: {len(data['runs'])} runs")
