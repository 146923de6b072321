"""Training text and its batches; checks of input and output paths whose errors name the flag.

The order of training examples is a pure function of (seed, epoch, step): a resumed run needs only the
step to continue on the exact next batch, and N processes together see the same global batches as one
process would (each takes its slice), so the loss does not depend on the process count.
"""

import dataclasses
import itertools
import os
import sys

import numpy as np
import torch


CHARS_PER_TOKEN = 64  # SentenceBatches' cut before tokenizing: 10x the widest tokens of real text


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and says what to do."""


def open_binary(path: str, prefix: str = ""):
    """The file opened for reading bytes; errors name the file (after `prefix`, e.g. the flag)."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise DataError(f"{prefix}{path}: no such file") from None
    except OSError as err:
        raise DataError(f"{prefix}{path}: cannot read it ({err.strerror})") from None


def _not_utf8(prefix: str, path: str, line: int, column: int, bad: bytes) -> DataError:
    return DataError(f"{prefix}{path}: line {line}, byte {column}: not valid UTF-8 ({bad!r}); re-encode the file "
                     "as UTF-8 (e.g. with iconv)")


def read_text(path: str, prefix: str = "") -> str:
    """A UTF-8 file's text; errors name the file (after `prefix`, e.g. the flag) and the bad line/byte."""
    with open_binary(path, prefix) as f:
        try:
            raw = f.read()
        except OSError as err:
            raise DataError(f"{prefix}{path}: cannot read it ({err.strerror})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise _not_utf8(prefix, path, line, column, raw[err.start:err.start + 4]) from None


def read_lines(path: str, prefix: str = ""):
    """(number, line) of a UTF-8 file, streamed, each line with its "\\n" (a multi-byte character never holds
    that byte, so lines are split before decoding); a leading byte-order mark is dropped. Errors name the
    file (after `prefix`) and the bad line and byte."""
    with open_binary(path, prefix) as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise _not_utf8(prefix, path, number, err.start + 1, raw[err.start:err.start + 4]) from None
            yield number, line.lstrip("\ufeff") if number == 1 else line


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


@dataclasses.dataclass
class Tally:
    """What reading a corpus kept and skipped: its rows, those skipped as blank (an empty cell too) or as
    holding no printable text (only NUL, other control or format characters, white space: they would
    tokenize to [CLS] [SEP] alone), and whether its line endings were bare CR. Said in notes, one line each."""

    rows: int = 0
    blank: int = 0
    unprintable: int = 0
    bare_cr: bool = False

    def clean(self, values):
        """The sentences of `values` (str, or None for an empty cell) in order, surrounding white space stripped."""
        for value in values:
            self.rows += 1
            text = value.strip() if value else ""
            if not text:
                self.blank += 1
            elif _has_text(text):
                yield text
            else:
                self.unprintable += 1

    def check(self, what: str, unit: str) -> None:
        """DataError naming `what` (the flag and the source) unless some sentence was kept."""
        if self.rows == self.blank + self.unprintable:
            state = "is empty" if not self.rows else f"holds only blank {unit}s" if not self.unprintable \
                else "holds no printable text"
            raise DataError(f"{what} {state}: it needs one training sentence per {unit}")

    def notes(self, what: str, unit: str) -> list[str]:
        """The notes on what was skipped, and on bare-CR line endings."""
        kept = self.rows - self.blank - self.unprintable
        notes = [f"note: {what}: its line endings are bare CR (old Mac): read as {kept} {unit}s"] if self.bare_cr \
            else []
        skipped = [f"{n} {kind}{unit}{'s' if n > 1 else ''}{rest}" for n, kind, rest in
                   ((self.blank, "blank ", ""), (self.unprintable, "", " with no printable text")) if n]
        return notes + ([f"note: {what}: skipped {' and '.join(skipped)}"] if skipped else [])


def text_lines(path: str, flag: str, tally: Tally):
    """The lines of a UTF-8 text file, streamed, as they are (Tally.clean strips them).

    Lines end at "\\n" (a "\\r" before it is white space and stripped). A file with bare "\\r" line endings
    (old Mac) and no "\\n" at all is split at "\\r", as Python's own universal newlines read it, rather than
    taken as one sentence (tally.bare_cr). A final line ending starts no line.
    """
    if os.path.isdir(path):
        raise DataError(f"{flag} {path} is a folder; it must be a text file, one sentence per line")
    for number, line in read_lines(path, f"{flag} "):
        if number == 1 and not line.endswith("\n") and "\r" in line.strip():  # the whole file, with no \n
            tally.bare_cr = True
            yield from line.removesuffix("\r").split("\r")
        else:
            yield line


def read_sentences(path: str, flag: str = "--train_file", note=None) -> list[str]:
    """A text file's sentences in a list: one a line, stripped, blank lines and lines with no printable text
    skipped (utils.data.Tally), each said in one line through `note` (default: printed to stderr).
    utils.corpus.open_corpus reads a file the same way but maps its sentences from disk instead."""
    tally = Tally()
    sentences = list(tally.clean(text_lines(path, flag, tally)))
    tally.check(f"{flag} {path}", "line")
    for line in tally.notes(f"{flag} {path}", "line"):
        (note or print_note)(line)
    return sentences


def print_note(message: str) -> None:
    """Notes' default: printed to stderr."""
    print(message, file=sys.stderr)


def _has_text(line: str) -> bool:
    """Some character that is neither white space nor one str.isprintable rejects (control, format,
    private-use, unassigned: BERT's tokenizer drops most of them). The common case, all printable, is one call."""
    return line.isprintable() or any(c.isprintable() and not c.isspace() for c in line)


def epoch_order(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The shuffled example order of one epoch, from its own generator (the global RNG stays untouched)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_examples, generator=generator)


class SentenceBatches:
    """Tokenized training batches for one process, addressed by global step, from `sentences`: a list of str,
    or a utils.corpus.Corpus (len(), and take(rows) for a batch's sentences).

    Every step draws a global batch of `per_device_batch_size * num_processes` sentences (the last,
    incomplete global batch of each epoch is dropped so all processes get equal, full shards); this
    process takes its contiguous slice.
    """

    def __init__(self, sentences, tokenizer, per_device_batch_size: int, max_length: int, seed: int,
                 num_processes: int = 1, process_index: int = 0, pad_to_max_length: bool = False):
        self.sentences = sentences
        self.tokenizer = tokenizer
        self.batch_size = per_device_batch_size
        self.num_processes = num_processes
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

    def texts(self, step: int) -> list[str]:
        """The sentences of this process's shard of global step `step`, as they are tokenized."""
        rows = self.indices(step)
        take = getattr(self.sentences, "take", None)  # utils.corpus.Corpus: the rows in one read of its file
        # Tokenizers read the whole text before truncating (a 20 MB line takes gigabytes), so lines are cut
        # at CHARS_PER_TOKEN characters a token first. A line within that budget is passed whole (tokens
        # unchanged); a longer one keeps its first max_length tokens unless its first `budget` characters
        # hold fewer, over CHARS_PER_TOKEN characters a token: long runs of white space or of characters
        # the tokenizer drops, not text (wiki1m's first 32 MiniLM tokens span at most 211 characters).
        budget = self.max_length * CHARS_PER_TOKEN
        return [text[:budget] for text in (take(rows) if take else [self.sentences[i] for i in rows])]

    def __call__(self, step: int) -> dict:
        """Tokenized shard of global step `step`: input_ids, attention_mask (, token_type_ids)."""
        return dict(self.tokenizer(self.texts(step), padding=self.padding, truncation=True,
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
