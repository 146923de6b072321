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
