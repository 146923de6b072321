"""What the benchmarks share: the device, a meter of time and memory, the model they time, the
sentence-transformers peer, and the results record.

Every measured thing gets its time and its memory: the process's resident memory (RSS) at the end of its
timed spans and its growth over them, and on CUDA the peak memory allocated during them. The record is
written to --json after every measurement, so a run cut short keeps what it measured; a measurement that
raises is recorded under "failed" with its error's first line, and the others still run.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

from utils.cli import seed_number
from utils.data import DataError, check_output_path
from utils.files import write_json_atomic

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


def parser(doc: str, model: bool = True, seed: int = 0) -> argparse.ArgumentParser:
    """The flags every benchmark has (--cpu, --seed, --json) and, with `model`, the model's (--model or
    --config, --tokenizer)."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    if model:
        src = p.add_mutually_exclusive_group()
        src.add_argument("--model", default=None, help="a real checkpoint (local folder or hub name)")
        src.add_argument("--config", default="bert-base", choices=list(CONFIGS),
                         help="a random-init model of this shape (default bert-base)")
        p.add_argument("--tokenizer", default=None,
                       help="the tokenizer of --config (default: bert-base-uncased / roberta-base)")
    p.add_argument("--cpu", action="store_true", help="run on the CPU even where a GPU exists")
    p.add_argument("--seed", type=seed_number, default=seed, help=f"the random seed (default {seed})")
    p.add_argument("--json", default=None, help="also write the results here")
    return p


def device_of(args) -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_child(module: str, argv: list, env: dict | None = None) -> dict:
    """The JSON object `python -m module *argv` prints last, run from the repository root: a measurement in a
    process of its own, so that it counts no memory another left. A failed child raises with its last error line."""
    proc = subprocess.run([sys.executable, "-m", module, *argv], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1], env=env)
    if proc.returncode:
        raise RuntimeError(f"{module} {' '.join(argv[-2:])} exited with {proc.returncode}: "
                           + ((proc.stderr.strip().splitlines() or [""])[-1]))
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rss_mb() -> float:
    """This process's resident memory, MB."""
    import psutil  # accelerate's dependency

    return psutil.Process().memory_info().rss / 2**20


class Meter:
    """Time and memory of one measured thing over its timed spans (start .. stop, or `with meter:`):
    seconds summed, RSS at the end of the last span and its growth since the start of the first, and on
    CUDA the peak allocated during any span."""

    def __init__(self, device: torch.device):
        self.device, self.seconds = device, 0.0
        self.rss_start = self.rss_end = self.cuda_peak_mb = self.started = None

    def start(self) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        if self.rss_start is None:
            self.rss_start = rss_mb()
        self.started = time.perf_counter()

    def stop(self) -> None:
        sync(self.device)
        self.seconds += time.perf_counter() - self.started
        self.rss_end = rss_mb()
        if self.device.type == "cuda":
            self.cuda_peak_mb = max(self.cuda_peak_mb or 0.0, torch.cuda.max_memory_allocated(self.device) / 2**20)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    def result(self) -> dict:
        """{"seconds", "rss_mb", "rss_growth_mb"[, "cuda_peak_mb"]}"""
        out = {"seconds": self.seconds, "rss_mb": self.rss_end, "rss_growth_mb": self.rss_end - self.rss_start}
        return out if self.cuda_peak_mb is None else {**out, "cuda_peak_mb": self.cuda_peak_mb}


def memory_cells(r: dict) -> str:
    """The memory columns of a table row: RSS (growth) | CUDA peak."""
    cuda = f"{r['cuda_peak_mb']:,.0f}" if "cuda_peak_mb" in r else "-"
    return f"{r['rss_mb']:,.0f} ({r['rss_growth_mb']:+,.0f}) | {cuda}"


MEMORY_HEADER = "RSS, MB (growth) | CUDA peak, MB"


class Report:
    """One benchmark's results: the machine, the settings, the measurements, and what failed."""

    def __init__(self, json_path, device: torch.device, **settings):
        if json_path:
            try:
                check_output_path(json_path, "--json")
            except DataError as err:
                sys.exit(f"error: {err}")
        card = torch.cuda.get_device_name(device) if device.type == "cuda" else \
            f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        self.path = json_path
        self.data = {"device": card, "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, **settings}

    def save(self) -> None:
        if self.path:
            write_json_atomic(self.path, self.data, indent=2)

    def attempt(self, part: str, measure):
        """measure()'s result; a failure (a compiler error, say) is printed and recorded, and None returned."""
        try:
            return measure()
        except Exception as err:  # noqa: BLE001 - any failure of one measurement
            traceback.print_exc()
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            self.data.setdefault("failed", {})[part] = f"{type(err).__name__}: {first}"[:500]
            print(f"{part}: FAILED ({self.data['failed'][part]})", flush=True)
            return None
        finally:
            self.save()

    def finish(self, table: str) -> dict:
        """Print the table and the failures, write the JSON; return the results."""
        self.save()
        print("\n" + table)
        for part, reason in self.data.get("failed", {}).items():
            print(f"FAILED: {part}: {reason}")
        if self.path:
            print(f"\n-> {self.path}")
        return self.data


def model_dir(args, tmp: str) -> str:
    """--model as given, or a random-init --config model saved with its tokenizer under `tmp`."""
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


def model_name(args) -> str:
    return args.model or f"{args.config} (random init)"


def sts_test_sentences(data_dir) -> list:
    """The unique sentences of the STS test sets (STS12-16, STS-B, SICK-R); sys.exit naming a missing file."""
    from utils.sts import load_sts_tasks

    try:
        tasks = load_sts_tasks(data_dir, "test")
    except DataError as err:
        sys.exit(f"error: {err}")
    return list(dict.fromkeys(s for task in tasks.values() for s1, s2, _ in task.values() for s in (*s1, *s2)))


# ----------------------------------------------------------------------------- the sentence-transformers peer
def need_peer(modules, flag: str) -> None:
    """Exit naming a missing peer package (benchmark-only extras) before minutes of measurements."""
    for module in modules:
        try:
            __import__(module)
        except ImportError as err:  # the package itself, or one it imports (sentence-transformers needs datasets)
            sys.exit(f"error: the comparison with sentence-transformers needs the {err.name or module} package: pip install "
                     f"'sentence-transformers[train]' (requirements-dev.txt), or {flag}")


def st_model(path: str, pooling: str, max_seq_length: int, device: torch.device):
    """A SentenceTransformer of the checkpoint at `path` with `pooling` (float32 weights, as ours)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    transformer = Transformer(path, max_seq_length=max_seq_length, model_kwargs={"dtype": torch.float32})
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode=pooling)
    return SentenceTransformer(modules=[transformer, pooling], device=str(device))
