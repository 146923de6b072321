"""Training text and its batches.

The order of training examples is a pure function of (seed, epoch, step): a resumed run needs only the
step to continue on the exact next batch, and N processes together see the same global batches as one
process would (each takes its slice), so the loss does not depend on the process count.
"""

import os

import torch


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


def read_sentences(path: str, flag: str = "--train_file") -> list[str]:
    """One sentence per line, surrounding white space stripped, blank lines skipped."""
    if os.path.isdir(path):
        raise DataError(f"{flag} {path} is a folder; it must be a text file, one sentence per line")
    text = read_text(path, prefix=f"{flag} ")
    sentences = [s.strip() for s in text.lstrip("\ufeff").split("\n")]
    sentences = [s for s in sentences if s]
    if not sentences:
        what = "is empty" if not text else "holds only blank lines"
        raise DataError(f"{flag} {path} {what}: it needs one training sentence per line")
    return sentences


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
        texts = [self.sentences[i] for i in self.indices(step)]
        return dict(self.tokenizer(texts, padding=self.padding, truncation=True,
                                   max_length=self.max_length, return_tensors="pt"))
