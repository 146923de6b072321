"""Shared fixtures: tiny random BERT/RoBERTa checkpoints saved to disk, and paths into ../shared."""

import os
import socket
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# One thread per process, for the tests and every script they start: two test workers run at once
# (pytest.ini), and two multi-threaded torch processes on two cores wait on each other's threads.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# No test reaches the network: a host name other than this machine's fails at once, as it does offline, where the
# hub client would retry it for half a minute; what a test needs from the hub is on disk or replaced in the test.
_resolve = socket.getaddrinfo


def _this_machine_only(host, *args, **kwargs):
    if host in (None, "", "localhost", "127.0.0.1", "::1") or str(host).startswith("127."):
        return _resolve(host, *args, **kwargs)
    raise socket.gaierror(socket.EAI_NONAME, f"{host}: the tests do not use the network")


socket.getaddrinfo = _this_machine_only

# ../shared holds the real data and the one real encoder these machines have (see README).
SHARED = Path(os.environ.get("SHARED_DIR", REPO.parent / "shared"))
SHARED_DATA = SHARED / "data"
MINILM = SHARED / "models" / "all-MiniLM-L6-v2"

WORDS = (
    "a the man woman child dog cat is are was playing riding eating guitar horse bike food "
    "on in with and of to . , ' s two people street park water ball red blue small big"
).split()


def _corpus():
    import random

    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) for _ in range(400)]


def make_tiny_model(path: Path, kind: str = "bert", seed: int = 0, **config_overrides) -> Path:
    """Save a random-init 2-layer encoder with a tokenizer trained on a toy corpus; return its folder."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    torch.manual_seed(seed)
    path.mkdir(parents=True, exist_ok=True)
    if kind == "bert":
        from transformers import BertConfig, BertModel, BertTokenizerFast

        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok.train_from_iterator(_corpus(), trainers.WordPieceTrainer(vocab_size=200, special_tokens=specials))
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")), ("[CLS]", tok.token_to_id("[CLS]")))
        tok.decoder = decoders.WordPiece()
        tokenizer = BertTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                      cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                      model_max_length=64)
        config = BertConfig(**{"vocab_size": tok.get_vocab_size(), "hidden_size": 32, "num_hidden_layers": 2,
                               "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
                               "pad_token_id": tokenizer.pad_token_id, **config_overrides})
        model = BertModel(config)
    elif kind == "roberta":
        from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=300, special_tokens=specials,
                                                               initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")))
        tok.decoder = decoders.ByteLevel()
        tokenizer = RobertaTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                         pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                         model_max_length=62)
        config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                               num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2,
                               **config_overrides)
        model = RobertaModel(config)
    else:
        raise ValueError(kind)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def datasets_cache(tmp_path_factory) -> Path:
    """datasets' cache (where training corpora are converted) in the session's temporary folder, for the tests
    and the scripts they start: the user's cache stays untouched and each session converts afresh."""
    path = tmp_path_factory.mktemp("datasets-cache")
    os.environ["HF_DATASETS_CACHE"] = str(path)
    if "datasets.config" in sys.modules:  # imported already: it read the variable then
        sys.modules["datasets.config"].HF_DATASETS_CACHE = path
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-bert"), "bert")


@pytest.fixture(scope="session")
def tiny_roberta(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-roberta"), "roberta")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "downstream" / "STS").is_dir():
        pytest.skip(f"real SentEval data not found at {SHARED_DATA} (set SHARED_DIR to the shared/ folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm() -> Path:
    if not (MINILM / "config.json").is_file():
        pytest.skip(f"all-MiniLM-L6-v2 not found at {MINILM} (set SHARED_DIR to the shared/ folder)")
    return MINILM


def write_fake_senteval(root: Path, pairs: int = 40, seed: int = 0) -> Path:
    """A SentEval data/ folder with STS-B and SICK-R files (all splits) made of toy sentences."""
    import random

    rng = random.Random(seed)
    sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))  # noqa: E731
    stsb = root / "downstream" / "STS" / "STSBenchmark"
    sick = root / "downstream" / "SICK"
    stsb.mkdir(parents=True, exist_ok=True)
    sick.mkdir(parents=True, exist_ok=True)
    for split in ("train", "dev", "test"):
        lines = [f"main-captions\tMSRvid\t2012test\t{i:04d}\t{rng.uniform(0, 5):.3f}\t{sent()}\t{sent()}"
                 for i in range(pairs)]
        (stsb / f"sts-{split}.csv").write_text("\n".join(lines) + "\n")
    for name in ("SICK_train.txt", "SICK_trial.txt", "SICK_test_annotated.txt"):
        lines = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"]
        lines += [f"{i}\t{sent()}\t{sent()}\t{rng.uniform(1, 5):.1f}\tNEUTRAL" for i in range(pairs)]
        (sick / name).write_text("\n".join(lines) + "\n")
    return root


def add_fake_sts_years(root: Path, pairs: int = 6) -> Path:
    """STS12-16 files (every subset SentEval reads) with toy sentences, so --sts_test can run."""
    import random

    from utils.sts import STS_YEARS

    rng = random.Random(3)
    sent = lambda: " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))  # noqa: E731
    for year, subsets in STS_YEARS.items():
        folder = root / "downstream" / "STS" / f"{year}-en-test"
        folder.mkdir(parents=True, exist_ok=True)
        for name in subsets:
            (folder / f"STS.input.{name}.txt").write_text("".join(f"{sent()}\t{sent()}\n" for _ in range(pairs)))
            (folder / f"STS.gs.{name}.txt").write_text("".join(f"{rng.uniform(0, 5):.2f}\n" for _ in range(pairs)))
    return root


def write_corpus(path: Path, lines: int = 300, seed: int = 1) -> Path:
    import random

    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 14)))
                              for _ in range(lines)) + "\n")
    return path


def convert_corpus(text_file: Path, path: Path, column: str = "text") -> Path:
    """The lines of `text_file` as a CSV / TSV / JSON lines / Parquet file (by `path`'s suffix): an `id` column,
    and the lines, as they are, in `column`."""
    import csv
    import json

    lines = text_file.read_bytes().decode("utf-8").removesuffix("\n").split("\n")
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"id": list(range(len(lines))), column: lines}), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": i, column: line}) + "\n" for i, line in enumerate(lines)))
    else:
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writerows([["id", column], *enumerate(lines)])
    return path


@pytest.fixture(scope="session")
def fake_senteval(tmp_path_factory) -> Path:
    return write_fake_senteval(tmp_path_factory.mktemp("senteval-data"))


@pytest.fixture(scope="session")
def fake_senteval_sts(tmp_path_factory) -> Path:
    """A toy SentEval folder with every STS test set too: what evaluate.py --mode test and run.sh read."""
    return add_fake_sts_years(write_fake_senteval(tmp_path_factory.mktemp("senteval-sts-data")))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "train.txt")


# ----------------------------------------------------------------------------- scripts in this process


class Ran(NamedTuple):
    returncode: int
    stdout: str
    stderr: str


def run_in_process(main, argv) -> Ran:
    """A script's main(argv) called here, as a process would end: its exit status (SystemExit's code; a
    message as the code is printed to stderr with status 1, as Python does) and what it printed."""
    import contextlib
    import io

    out, err, code = io.StringIO(), io.StringIO(), 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
            if isinstance(code, str):
                print(code, file=err)
                code = 1
            code = code or 0
    return Ran(code, out.getvalue(), err.getvalue())


# ----------------------------------------------------------------------------- train.py

# the small settings of the tests' runs (a tiny model learns something at this rate)
TRAIN_ARGS = ("--per_device_train_batch_size", "8", "--max_seq_length", "16", "--learning_rate", "1e-3",
              "--logging_steps", "2", "--seed", "7")


def train_argv(model, corpus, data, out, *extra) -> list[str]:
    return ["--model_name_or_path", str(model), "--train_file", str(corpus), "--eval_data_dir", str(data),
            "--output_dir", str(out), *TRAIN_ARGS, *extra]


def fresh_train_main(argv) -> None:
    """train.main in this process as a new process would start it: accelerate's per-process state reset first."""
    from accelerate.state import AcceleratorState

    import train

    AcceleratorState._reset_state(reset_partial_state=True)
    train.main(argv)


def train_in_process(model, corpus, data, out, *extra) -> None:
    """train.main in this process (SystemExit as the script's exit)."""
    fresh_train_main(train_argv(model, corpus, data, out, *extra))


# ----------------------------------------------------------------------------- two CPU processes


def _gloo_entry(rank, world, port, fn, args):
    import torch.distributed as dist

    # the parent owns the store, so no worker's exit pulls it from under the other
    store = dist.TCPStore("127.0.0.1", port, world_size=world, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        fn(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # The spawned interpreter's own teardown aborts now and then (SIGABRT, "terminate called without an
    # active exception": 2 in 15 runs here, with or without the barrier/destroy); fn's work is done
    # and its files are closed, so skip that teardown.
    os._exit(0)


def run_gloo(fn, *args, world: int = 2):
    """Run fn(rank, world, *args) in `world` spawned processes joined by a gloo process group."""
    import torch.distributed as dist
    import torch.multiprocessing as mp

    store = dist.TCPStore("127.0.0.1", 0, world_size=world + 1, is_master=True, wait_for_workers=False)
    mp.start_processes(_gloo_entry, args=(world, store.port, fn, args), nprocs=world, start_method="spawn")
