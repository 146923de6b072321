import pytest
import torch

from utils.data import DataError, SentenceBatches, epoch_order, read_sentences


class WhitespaceTokenizer:
    """Enough of a tokenizer for SentenceBatches: ids are word lengths, padded with 0."""

    def __call__(self, texts, padding, truncation, max_length, return_tensors):
        rows = [[len(w) for w in t.split()][:max_length] for t in texts]
        width = max_length if padding == "max_length" else max(map(len, rows))
        ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
        return {"input_ids": ids, "attention_mask": (ids > 0).long()}


def test_read_sentences_skips_blank_lines_and_strips(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\ufefffirst one\n\n  second  \r\n   \nthird")
    assert read_sentences(str(f)) == ["first one", "second", "third"]


@pytest.mark.parametrize("content, words", [(b"", "is empty"), (b"\n  \n\t\n", "only blank lines")])
def test_read_sentences_rejects_empty_files(tmp_path, content, words):
    f = tmp_path / "t.txt"
    f.write_bytes(content)
    with pytest.raises(DataError, match=words) as err:
        read_sentences(str(f))
    assert str(f) in str(err.value)


def test_read_sentences_names_file_and_line_of_bad_bytes(tmp_path):
    f = tmp_path / "t.txt"
    f.write_bytes(b"good line\nalso good\nbad \xff byte here\n")
    with pytest.raises(DataError, match=r"line 3, byte 5: not valid UTF-8") as err:
        read_sentences(str(f))
    assert str(f) in str(err.value)


def test_read_sentences_missing_file(tmp_path):
    with pytest.raises(DataError, match="--train_file .*no such file"):
        read_sentences(str(tmp_path / "nope.txt"))


def test_epoch_order_is_deterministic_and_leaves_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a, b = epoch_order(100, seed=1, epoch=0), epoch_order(100, seed=1, epoch=0)
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(100))
    assert not torch.equal(a, epoch_order(100, seed=1, epoch=1))
    assert torch.equal(before, torch.get_rng_state())


def test_process_shards_concatenate_to_the_single_process_batch():
    sentences = [f"s{i}" for i in range(50)]
    one = SentenceBatches(sentences, WhitespaceTokenizer(), 8, 32, seed=3)
    two = [SentenceBatches(sentences, WhitespaceTokenizer(), 4, 32, seed=3, num_processes=2, process_index=r)
           for r in range(2)]
    assert one.steps_per_epoch == two[0].steps_per_epoch == 50 // 8
    for step in range(3 * one.steps_per_epoch):  # crosses two epoch boundaries
        assert one.indices(step) == two[0].indices(step) + two[1].indices(step)
    epoch0 = [i for s in range(one.steps_per_epoch) for i in one.indices(s)]
    assert len(set(epoch0)) == len(epoch0) == 48  # no repeats; the last 2 sentences wait for the next epoch


def test_batches_pad_and_refuse_tiny_files():
    batches = SentenceBatches(["a bb ccc", "dddd"] * 4, WhitespaceTokenizer(), 2, 5, seed=0, pad_to_max_length=True)
    assert batches(0)["input_ids"].shape == (2, 5)
    with pytest.raises(DataError, match="fewer than one global batch"):
        SentenceBatches(["a", "b", "c"], WhitespaceTokenizer(), 2, 5, seed=0, num_processes=2)


def test_lines_with_no_printable_text_are_skipped_and_counted(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_bytes("first\n\x00\x00\x00\nsecond \x00 with a NUL\n\x01\x7f\t\u200b\n\nthird\n".encode())
    assert read_sentences(str(f)) == ["first", "second \x00 with a NUL", "third"]
    assert capsys.readouterr().err == f"note: --train_file {f}: skipped 1 blank line and 2 lines with no printable text\n"
    f.write_bytes(b"\x00\n\x00\x00\n")
    with pytest.raises(DataError, match="holds no printable text"):
        read_sentences(str(f))


def test_ordinary_files_get_no_note(tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("caf\u00e9 au lait\r\n\u4e2d\u6587\tand tabs\r\n")
    assert read_sentences(str(f)) == ["caf\u00e9 au lait", "\u4e2d\u6587\tand tabs"]
    assert capsys.readouterr().err == ""


def test_bare_cr_line_endings_are_split_with_a_note(tmp_path, capsys):
    f = tmp_path / "mac.txt"
    f.write_bytes(b"one sentence\rtwo sentences\r\rthree\r")
    assert read_sentences(str(f), flag="--x") == ["one sentence", "two sentences", "three"]
    assert capsys.readouterr().err == (f"note: --x {f}: its line endings are bare CR (old Mac): read as 3 lines\n"
                                       f"note: --x {f}: skipped 1 blank line\n")
    f.write_bytes(b"a lone\r carriage return\nis kept inside its line\n")  # any \n: lines end at \n only
    assert read_sentences(str(f)) == ["a lone\r carriage return", "is kept inside its line"]


class RecordingTokenizer(WhitespaceTokenizer):
    def __init__(self):
        self.longest = 0

    def __call__(self, texts, **kwargs):
        self.longest = max(self.longest, *map(len, texts))
        return super().__call__(texts, **kwargs)


def test_batches_cut_long_lines_before_tokenizing():
    from utils.data import CHARS_PER_TOKEN

    tokenizer = RecordingTokenizer()
    batches = SentenceBatches(["word " * 4_000_000, "a bb"], tokenizer, 2, 8, seed=0)  # a 20 MB line
    assert batches(0)["input_ids"].shape == (2, 8)
    assert tokenizer.longest == 8 * CHARS_PER_TOKEN


def test_long_line_cut_keeps_real_tokens(tiny_bert, tiny_roberta, corpus):
    """Normal lines give the tokens of the uncut text; a 20 MB line is fast and gives max_length tokens."""
    import time

    from transformers import AutoTokenizer

    lines = corpus.read_text().split("\n")[:64]
    lines[3] = " ".join(lines[:40]) * 5  # longer than the budget, text all the way
    for path in (tiny_bert, tiny_roberta):
        tokenizer = AutoTokenizer.from_pretrained(path)
        batches = SentenceBatches(lines, tokenizer, 64, 32, seed=0)
        rows = batches.indices(0)
        full = tokenizer([lines[i] for i in rows], padding="longest", truncation=True, max_length=32,
                         return_tensors="pt")
        got = batches(0)
        assert len(lines[3]) > 32 * 64 and got.keys() == full.keys()
        assert all(torch.equal(got[k], full[k]) for k in got)
        start = time.perf_counter()
        huge = SentenceBatches(["a man is playing guitar . " * 800_000], tokenizer, 1, 32, seed=0)(0)
        assert time.perf_counter() - start < 2.0 and huge["attention_mask"].sum() == 32
