"""Training text and its batches; checks of input and output paths whose errors name the flag.

The order of training examples is a pure function of (seed, epoch, step): a resumed run needs only the
step to continue on the exact next batch, and N processes together see the same global batches as one
process would (each takes its slice), so the loss does not depend on the process count.
"""

import itertools
import os
import sys

import numpy as np
import torch


CHARS_PER_TOKEN = 64  # SentenceBatches' cut before tokenizing: 10x the widest tokens of real text


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and says what to do."""


def read_text(path: str, prefix: str = "") -> str:
    """A UTF-8 file's text; errors name the file (after `prefix`, e.g. the flag) and the bad line/byte."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{prefix}{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{prefix}{path}: cannot read it ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise DataError(
            f"{prefix}{path}: line {line}, byte {column}: not valid UTF-8 "
            f"({raw[err.start:err.start + 4]!r}); re-encode the file as UTF-8 (e.g. with iconv)"
        ) from None


def check_output_path(path: str, flag: str, folder: bool = False) -> None:
    """Raise DataError unless `path` can be written later: a file (or, with `folder`, a folder, made
    with its parents if missing). Checked before the work so that a bad path costs a second, not a run;
    nothing is created."""
    want = "folder" if folder else "file"
    if not path:
        raise DataError(f"{flag} is empty; it must name a {want}")
    if os.path.isdir(path) != folder and os.path.exists(path):
        raise DataError(f"{flag} {path} is a {'file' if folder else 'folder'}; it must name a {want}")
    parent = os.path.abspath(path if folder and os.path.isdir(path) else os.path.dirname(os.path.abspath(path)))
    while not os.path.exists(parent):  # the folders the script will make
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise DataError(f"{flag} {path}: {parent} is a file, so no {want} can be made under it")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise DataError(f"{flag} {path}: the folder {parent} is not writable")


def read_sentences(path: str, flag: str = "--train_file", note=None) -> list[str]:
    """One sentence per line, surrounding white space stripped, blank lines skipped.

    Lines end at "\\n" (a "\\r" before it is white space and stripped). A file with bare "\\r" line
    endings (old Mac) and no "\\n" at all is split at "\\r", as Python's own universal newlines read it,
    rather than taken as one sentence. Lines with no printable text (only NUL, other control or format
    characters, white space) are skipped like blank lines: they would tokenize to [CLS] [SEP] alone.
    Both are said in one line each through `note` (default: printed to stderr).
    """
    if os.path.isdir(path):
        raise DataError(f"{flag} {path} is a folder; it must be a text file, one sentence per line")
    text = read_text(path, prefix=f"{flag} ").lstrip("\ufeff")
    note = note or (lambda message: print(message, file=sys.stderr))
    bare_cr = "\n" not in text and "\r" in text.strip()
    lines = [s.strip() for s in text.split("\r" if bare_cr else "\n")]
    sentences = [s for s in lines if s and _has_text(s)]
    if bare_cr:
        note(f"note: {flag} {path}: its line endings are bare CR (old Mac): read as {len(sentences)} lines")
    unprintable = sum(1 for s in lines if s) - len(sentences)
    if unprintable:
        note(f"note: {flag} {path}: skipped {unprintable} lines with no printable text")
    if not sentences:
        what = "is empty" if not text else "holds only blank lines" if not unprintable else "holds no printable text"
        raise DataError(f"{flag} {path} {what}: it needs one training sentence per line")
    return sentences


def _has_text(line: str) -> bool:
    """Some character that is neither white space nor one str.isprintable rejects (control, format,
    private-use, unassigned: BERT's tokenizer drops most of them). The common case, all printable, is one call."""
    return line.isprintable() or any(c.isprintable() and not c.isspace() for c in line)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of one epoch, from its own generator (the global RNG stays untouched)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


class SentenceBatches:
    """Tokenized training batches for one process, addressed by global step.

    Every step draws a global batch of `per_device_batch_size * num_processes` sentences (the last,
    incomplete global batch of each epoch is dropped so all processes get equal, full shards); this
    process takes its contiguous slice.
    """

    def __init__(self, sentences, tokenizer, per_device_batch_size: int, max_length: int, seed: int,
                 num_processes: int = 1, process_index: int = 0, pad_to_max_length: bool = False):
        self.sentences = sentences
        self.tokenizer = tokenizer
        self.batch_size = per_device_batch_size
        self.global_batch_size = per_device_batch_size * num_processes
        self.max_length = max_length
        self.seed = seed
        self.process_index = process_index
        self.padding = "max_length" if pad_to_max_length else "longest"
        self.steps_per_epoch = len(sentences) // self.global_batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"the training file has {len(sentences)} sentences, fewer than one global batch "
                f"({per_device_batch_size} per device x {num_processes} processes); "
                "lower --per_device_train_batch_size or add sentences"
            )
        self._order = (None, None)  # (epoch, order): one epoch's permutation cached

    def indices(self, step: int) -> list[int]:
        """Example indices of this process's shard of global step `step` (0-based)."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._order[0] != epoch:
            self._order = (epoch, epoch_order(len(self.sentences), self.seed, epoch))
        start = k * self.global_batch_size + self.process_index * self.batch_size
        return self._order[1][start : start + self.batch_size].tolist()

    def __call__(self, step: int) -> dict:
        """Tokenized shard of global step `step`: input_ids, attention_mask (, token_type_ids)."""
        # Tokenizers read the whole text before truncating (a 20 MB line takes gigabytes), so lines are cut
        # at CHARS_PER_TOKEN characters a token first. A line within that budget is passed whole (tokens
        # unchanged); a longer one keeps its first max_length tokens unless its first `budget` characters
        # hold fewer, over CHARS_PER_TOKEN characters a token: long runs of white space or of characters
        # the tokenizer drops, not text (wiki1m's first 32 MiniLM tokens span at most 211 characters).
        budget = self.max_length * CHARS_PER_TOKEN
        texts = [self.sentences[i][:budget] for i in self.indices(step)]
        return dict(self.tokenizer(texts, padding=self.padding, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))


def pad_batch(columns: dict, rows, pad_id: int) -> dict:
    """Right-pad rows `rows` of tokenized columns ({'input_ids': [[...], ...], ...}) into (len(rows), longest)
    int64 tensors, in one vectorised copy per column (a Python loop per row costs more than a small model)."""
    lengths = np.fromiter((len(columns["input_ids"][i]) for i in rows), dtype=np.int64, count=len(rows))
    filled = np.arange(lengths.max()) < lengths[:, None]  # row-major: each row's tokens in order
    batch = {}
    for key, column in columns.items():
        out = np.full(filled.shape, pad_id if key == "input_ids" else 0, dtype=np.int64)
        out[filled] = np.fromiter(itertools.chain.from_iterable(column[i] for i in rows), dtype=np.int64,
                                  count=int(lengths.sum()))
        batch[key] = torch.from_numpy(out)
    return batch
