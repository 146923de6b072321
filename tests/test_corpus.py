"""The training corpus (utils/corpus.py): every format gives the text file's sentences and batches, the Arrow
copy in datasets' cache is reused until the file changes, hub datasets load through `datasets` (replaced here),
and each bad input is one error that names the flag and the file, line or row."""

import os

import pytest
import torch

from tests.conftest import convert_corpus, run_in_process, train_argv, write_corpus
from tests.test_data import WhitespaceTokenizer
from utils import corpus as corpus_module
from utils.corpus import open_corpus
from utils.data import DataError, SentenceBatches, read_sentences


@pytest.fixture()
def text_file(tmp_path):
    """A corpus with what the readers must treat alike: padding, a blank line, a line with no printable text,
    quotes, commas, tabs' neighbours and non-ASCII text."""
    path = write_corpus(tmp_path / "train.txt", lines=60)
    lines = path.read_text().splitlines()
    lines[3:3] = ["  padded on both sides  ", "", "\x00\u200b", 'a "quoted", comma', "caf\u00e9 \u4e2d\u6587"]
    path.write_text("\n".join(lines) + "\n")
    return path


def sentences(corpus) -> list[str]:
    return corpus.take(range(len(corpus)))


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_gives_the_text_files_sentences_and_batches(text_file, suffix, tmp_path):
    expected = read_sentences(str(text_file))
    as_text = open_corpus(str(text_file))
    assert sentences(as_text) == expected and len(expected) == 60 + 3
    path = convert_corpus(text_file, tmp_path / f"train{suffix}", column="sentence")
    notes = []
    corpus = open_corpus(str(path), "sentence", note=notes.append)
    assert sentences(corpus) == expected and corpus[4] == expected[4]
    assert notes == [f"note: --train_file {path}: skipped 1 blank row and 1 row with no printable text"]
    reference = SentenceBatches(expected, WhitespaceTokenizer(), 4, 16, seed=5)
    for source in (as_text, corpus):
        batches = SentenceBatches(source, WhitespaceTokenizer(), 4, 16, seed=5)
        for step in range(2 * batches.steps_per_epoch + 3):  # into the third epoch
            assert batches.texts(step) == reference.texts(step)
        assert all(torch.equal(batches(9)[k], reference(9)[k]) for k in reference(9))


def test_nulls_and_blank_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "one two"}\n{"text": null}\n\n{"text": " \\t "}\n{"text": "\\u0000\\u0001"}\n'
                    '{"text": " three "}\n')
    notes = []
    assert sentences(open_corpus(str(path), note=notes.append)) == ["one two", "three"]
    assert notes == [f"note: --train_file {path}: skipped 3 blank rows and 1 row with no printable text"]
    path.write_text('{"text": null}\n{"text": ""}\n')
    with pytest.raises(DataError, match=f"--train_file {path} holds only blank rows"):
        open_corpus(str(path))


def test_the_arrow_copy_is_reused_until_the_file_changes(text_file, tmp_path, monkeypatch, datasets_cache):
    path = convert_corpus(text_file, tmp_path / "train.parquet")
    first_notes, again_notes = [], []
    first = open_corpus(str(path), note=first_notes.append)
    arrow = first.dataset.cache_files[0]["filename"]
    written = os.stat(arrow).st_mtime_ns
    assert first.converted and arrow.startswith(str(datasets_cache / "corpus"))

    def read_again(*args):
        raise AssertionError("the source was read again")

    with monkeypatch.context() as patch:
        patch.setitem(corpus_module.READERS, "parquet", read_again)
        again = open_corpus(str(path), note=again_notes.append)
    assert not again.converted and again.dataset.cache_files[0]["filename"] == arrow
    assert os.stat(arrow).st_mtime_ns == written and sentences(again) == sentences(first)
    assert again_notes == first_notes and len(first_notes) == 1  # the conversion's notes, said again

    convert_corpus(write_corpus(tmp_path / "other.txt", lines=20, seed=9), path)  # the file changes: converted again
    os.utime(path, ns=(written + 10**9, written + 10**9))
    changed = open_corpus(str(path))
    assert changed.converted and sentences(changed) == read_sentences(str(tmp_path / "other.txt"))


def test_a_cache_that_cannot_be_written_is_one_error(text_file, tmp_path, monkeypatch):
    import datasets

    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", blocked)
    with pytest.raises(DataError, match=f"^--train_file {text_file}: it cannot be converted into {blocked / 'corpus'} "
                                        ".*set HF_DATASETS_CACHE to a folder with room$"):
        open_corpus(str(text_file))


@pytest.fixture()
def hub(monkeypatch):
    """datasets.load_dataset replaced: "someone/corpus" holds a train split, any other name is unreachable."""
    import datasets

    calls = []

    def load_dataset(name, split):
        calls.append((name, split))
        if name != "someone/corpus":
            raise ConnectionError(f"Couldn't reach '{name}' on the Hub (LocalEntryNotFoundError)")
        if split != "train":
            raise ValueError(f"Unknown split \"{split}\". Should be one of ['train'].")
        return datasets.Dataset.from_dict({"label": [0, 1, 0, 1], "sentence": ["a man", "", "a dog", "\x00"]})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_a_hub_dataset_loads_through_datasets_and_its_copy_is_reused(hub):
    notes = []
    corpus = open_corpus("someone/corpus", "sentence", note=notes.append)
    assert hub == [("someone/corpus", "train")] and sentences(corpus) == ["a man", "a dog"] and corpus.converted
    assert notes == ["note: --train_file someone/corpus: skipped 1 blank row and 1 row with no printable text"]
    assert not open_corpus("someone/corpus", "sentence").converted
    with pytest.raises(DataError, match="--text_column text: --train_file someone/corpus has no such column; "
                                        "its columns: label, sentence$"):
        open_corpus("someone/corpus")
    with pytest.raises(DataError, match=r"--train_file someone/corpus \(--train_split dev\): Unknown split"):
        open_corpus("someone/corpus", "sentence", "dev")
    with pytest.raises(DataError, match="--text_column label: --train_file someone/corpus holds .*int64.*, not text"):
        open_corpus("someone/corpus", "label")


def test_an_unreachable_hub_dataset_says_to_download_it_first(hub, tmp_path):
    with pytest.raises(DataError) as err:
        open_corpus("nobody/corpus")
    message = str(err.value)
    assert message.startswith("--train_file nobody/corpus: no such file, and no hub dataset of that name can be loaded")
    assert "ConnectionError" in message and "download it first" in message and "pass a local file" in message
    for path in (tmp_path / "gone.csv", tmp_path / "gone" / "corpus"):  # a path is never looked up on the hub
        with pytest.raises(DataError, match=f"--train_file {path}: no such file$"):
            open_corpus(str(path))
    assert hub == [("nobody/corpus", "train")]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_a_missing_column_names_the_columns_there_are(text_file, tmp_path, suffix):
    path = convert_corpus(text_file, tmp_path / f"train{suffix}")
    where = f"{path}: line 1" if suffix == ".jsonl" else str(path)
    with pytest.raises(DataError, match=f"^--text_column sentence: --train_file {where} has no such column; "
                                        "its columns: id, text$"):
        open_corpus(str(path), "sentence")


@pytest.mark.parametrize("name, content, message", [
    ("t.csv", b"id,text\n1,fine\n2,bad \xff byte\n", "line 3, byte 7: not valid UTF-8"),
    ("t.csv", b'id,text\n1,"two\nlines"\n2,x,y\n', "line 4: 3 fields where its header has 2"),
    ("t.jsonl", b'{"text": "fine"}\n{"text": oops}\n', "line 2: not valid JSON"),
    ("t.jsonl", b'["a list"]\n', "line 1: not a JSON object"),
    ("t.jsonl", b'{"text": "fine"}\n{"text": 5}\n', "line 2: the value of 'text' is 5, not a string"),
    ("t.parquet", b"not parquet at all", "not a Parquet file it can read"),
])
def test_an_unreadable_row_names_the_file_and_its_line(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=f"^--train_file {path}: {message}"):
        open_corpus(str(path))


def test_a_non_text_column_and_flags_that_do_not_fit_the_source_are_refused(tmp_path, text_file):
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = tmp_path / "numbers.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), numbers)
    with pytest.raises(DataError, match=f"--text_column text: --train_file {numbers} holds int64 there, not text"):
        open_corpus(str(numbers))
    with pytest.raises(DataError, match=f"--train_split dev: only a hub dataset has splits, and --train_file "
                                        f"{text_file}"):
        open_corpus(str(text_file), split="dev")
    with pytest.raises(DataError, match=f"--text_column sentence: --train_file {text_file} is a text file"):
        open_corpus(str(text_file), "sentence")
    with pytest.raises(DataError, match=f"--train_file {tmp_path} is a folder"):
        open_corpus(str(tmp_path))


@pytest.mark.parametrize("source, extra, message", [
    ("train.csv", ("--text_column", "sentence"), "--text_column sentence: --train_file {source} has no such column"),
    ("nobody/corpus", (), "--train_file nobody/corpus: no such file, and no hub dataset"),
])
def test_train_py_says_a_bad_corpus_in_one_line_before_any_model_loads(hub, text_file, tmp_path, fake_senteval,
                                                                       source, extra, message):
    import train

    if source.endswith(".csv"):
        source = str(convert_corpus(text_file, tmp_path / source))
    # no model at that path: an error about the corpus shows it was read first
    argv = train_argv(tmp_path / "no-model", source, fake_senteval, tmp_path / "out", *extra)
    proc = run_in_process(train.main, argv)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: " + message.format(source=source))
