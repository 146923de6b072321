"""Resident memory and time of reading a training corpus: into a list (utils.data.read_sentences) against the
Arrow copy train.py maps from datasets' cache (utils.corpus.open_corpus), on a synthetic text file.

    python -m benchmarks.bench_corpus --json corpus.json                    # 10,000,000 lines, in a temporary folder
    python -m benchmarks.bench_corpus --lines 1000000 --workdir /tmp/corpus --json corpus.json

The corpus (--lines lines of 5 to 40 words drawn from a fixed vocabulary with Zipf-like frequencies, by
--seed) is written once; each reader then runs in a process of its own, so that none counts what another
left: `list` reads it into a list of str, `arrow-first` converts it into an empty datasets cache under the
work folder, `arrow-cached` maps that copy again. Each reports the seconds of the read and the process's
resident memory (RSS) before and after it, with the part that is its own (anonymous memory: RSS less the
pages of mapped files, which the kernel drops under pressure), then the same after drawing --batches
batches of --batch_size sentences in train.py's order (SentenceBatches.texts: the epoch's shuffle, the rows
read and cut; no tokenizer).
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np

from benchmarks.timing import Report, device_of, in_child, parser
from utils.cli import number

READERS = ("list", "arrow-first", "arrow-cached")
WORDS = ("the of and to a in is was for on as with by he it at from his an were are which this be or has had "
         "one not but first new their after also its who they two been her she have more other all time into "
         "city year world war school between during when most only than some three over where state film "
         "team may would later under known about people since album series river music season government "
         "called second used while until national both many made before part such including family "
         "university century house played area life work system").split()


def parse_args(argv=None):
    p = parser(__doc__, model=False)
    p.add_argument("--lines", type=number(int, 1), default=10_000_000,
                   help="lines of the synthetic corpus (default 10,000,000)")
    p.add_argument("--workdir", default=None,
                   help="folder for the corpus and its datasets cache (default: a temporary one, removed after)")
    p.add_argument("--batches", type=number(int, 1), default=300, help="batches drawn after the read (default 300)")
    p.add_argument("--batch_size", type=number(int, 1), default=64, help="sentences per batch (default 64)")
    p.add_argument("--readers", nargs="+", choices=READERS, default=list(READERS),
                   help="the readers to measure (default: all three)")
    p.add_argument("--one", choices=READERS, default=None, help=argparse.SUPPRESS)  # a child's reader
    return p.parse_args(argv)


def write_corpus(path: str, lines: int, seed: int) -> None:
    """`lines` sentence-like lines: 5 to 40 words each, frequent words more often (about 105 bytes a line, where
    wiki1m has 120)."""
    rng = np.random.default_rng(seed)
    weights = 1 / np.arange(1, len(WORDS) + 1) ** 0.5
    words = np.array(WORDS, dtype=object)
    with open(path, "w", encoding="utf-8") as f:
        for start in range(0, lines, 100_000):
            lengths = rng.integers(5, 41, size=min(100_000, lines - start))
            drawn = words[rng.choice(len(WORDS), size=int(lengths.sum()), p=weights / weights.sum())]
            ends = np.cumsum(lengths)
            f.write("".join(" ".join(drawn[end - n:end]).capitalize() + " .\n" for n, end in zip(lengths, ends)))


def memory_mb() -> dict:
    """{"rss_mb", "own_mb"}: resident memory, and its anonymous part (RSS less mapped files' pages)."""
    import psutil  # accelerate's dependency

    info = psutil.Process().memory_info()
    return {"rss_mb": info.rss / 2**20, "own_mb": (info.rss - info.shared) / 2**20}


def measure(args) -> dict:
    """In this process, the reader `args.one` on the corpus in args.workdir: its read and its batches."""
    from utils.data import SentenceBatches, read_sentences

    path = os.path.join(args.workdir, "corpus.txt")
    if args.one != "list":
        import datasets  # imported before the read: its libraries are not the corpus

        from utils.corpus import open_corpus
        datasets.disable_progress_bars()
    before = memory_mb()
    started = time.perf_counter()
    sentences = read_sentences(path) if args.one == "list" else open_corpus(path)
    out = {"read_s": time.perf_counter() - started, "sentences": len(sentences), "before": before, "read": memory_mb(),
           "converted": getattr(sentences, "converted", None)}
    batches = SentenceBatches(sentences, None, args.batch_size, 32, args.seed)  # train.py's default max length
    started = time.perf_counter()
    for step in range(args.batches):
        batches.texts(step)
    return {**out, "batches_s": time.perf_counter() - started, "batches": memory_mb()}


def main(argv=None):
    args = parse_args(argv)
    if args.one:  # a child: one reader, its result on stdout
        print(json.dumps(measure(args)))
        return None
    report = Report(args.json, device_of(args), lines=args.lines, batches=args.batches, batch_size=args.batch_size)
    work = args.workdir or tempfile.mkdtemp(prefix="bench-corpus-")
    try:
        os.makedirs(work, exist_ok=True)
        cache = os.path.join(work, "datasets-cache")
        shutil.rmtree(cache, ignore_errors=True)  # the first read converts
        started = time.perf_counter()
        write_corpus(os.path.join(work, "corpus.txt"), args.lines, args.seed)
        report.data["corpus"] = {"file_mb": os.path.getsize(os.path.join(work, "corpus.txt")) / 2**20,
                                 "write_s": time.perf_counter() - started}
        print(f"corpus: {args.lines:,} lines, {report.data['corpus']['file_mb']:,.0f} MB", flush=True)
        env = {**os.environ, "HF_DATASETS_CACHE": cache}
        rows = report.data.setdefault("readers", {})
        for reader in args.readers:
            child = ["--lines", str(args.lines), "--batches", str(args.batches), "--batch_size", str(args.batch_size),
                     "--seed", str(args.seed), "--workdir", work, "--one", reader]
            result = report.attempt(reader, lambda: in_child("benchmarks.bench_corpus", child, env))
            if result is not None:
                rows[reader] = result
                print(f"{reader}: read in {result['read_s']:.1f} s, RSS {result['read']['rss_mb']:,.0f} MB", flush=True)
        report.data["corpus"]["arrow_mb"] = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names
                                                in os.walk(cache) for name in names if name.endswith(".arrow")) / 2**20
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return report.finish(format_table(report.data))


def format_table(r: dict) -> str:
    corpus = r.get("corpus", {})
    lines = [f"{r['lines']:,} lines ({corpus.get('file_mb', 0):,.0f} MB of text"
             + (f", {corpus['arrow_mb']:,.0f} MB as Arrow" if corpus.get("arrow_mb") else "") + f") | {r['device']} | "
             f"{r['batches']} batches of {r['batch_size']} | {r['date']}", "",
             "| reader | read, s | RSS before → after the read, MB | own before → after, MB | batches, ms each "
             "| RSS after the batches, MB (own) |", "|---|---|---|---|---|---|"]
    names = {"list": "list (`read_sentences`)", "arrow-first": "Arrow, first read (converts)",
             "arrow-cached": "Arrow, cached copy"}
    for reader, v in r.get("readers", {}).items():
        lines.append(f"| {names[reader]} | {v['read_s']:,.1f} | "
                     f"{v['before']['rss_mb']:,.0f} → {v['read']['rss_mb']:,.0f} | "
                     f"{v['before']['own_mb']:,.0f} → {v['read']['own_mb']:,.0f} | "
                     f"{1000 * v['batches_s'] / r['batches']:,.2f} | {v['batches']['rss_mb']:,.0f} "
                     f"({v['batches']['own_mb']:,.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
