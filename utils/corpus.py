"""The training corpus: a text file (one sentence a line), a column of a CSV / TSV / JSON lines / Parquet file,
or a hub dataset's column, converted once into an Arrow file in datasets' cache and memory-mapped from there.

The first read of a source converts it: its rows are streamed, stripped, and those that are blank or hold no
printable text are skipped and counted (utils.data.Tally: the same reading as utils.data.read_sentences);
the sentences go to an Arrow file under $HF_DATASETS_CACHE/corpus/ named by a fingerprint of the source (a
file's real path, size, modification time and column; a hub dataset's name, split, column and datasets'
own fingerprint of it). A later read of the same source maps that file without reading the source again
and says the same notes. Processes that open one source at once convert it once: one converts, the others
wait for it. Batches read only their own rows from the mapped file, so the process's own memory does not
grow with the corpus (docs/data.md; measured in docs/speed.md).
"""

import csv
import functools
import hashlib
import json
import os
import re
from pathlib import Path

from utils.data import DataError, Tally, open_binary, print_note, read_lines, text_lines
from utils.files import write_json_atomic

COLUMN = "text"  # the converted corpus's one column; also --text_column's default
FORMATS = {".csv": "csv", ".tsv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".parquet": "parquet"}  # else: text
CONVERSION = 1  # part of the fingerprint: a change to how sources are read converts them again
HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")  # `name` or `owner/name`
BATCH_ROWS = 10_000  # rows read from a Parquet file or hub dataset at a time


class Corpus:
    """The sentences of a converted corpus: len(), [i] and take(rows), read from its memory-mapped Arrow file
    as they are asked for. `converted`: this read converted the source (False: it mapped the cached copy)."""

    def __init__(self, dataset, converted: bool):
        self.dataset, self.converted = dataset, converted

    def __len__(self) -> int:
        return self.dataset.num_rows

    def __getitem__(self, i: int) -> str:
        return self.dataset[int(i)][COLUMN]

    def take(self, rows) -> list[str]:
        """The sentences at `rows`, in one gather."""
        return self.dataset[list(rows)][COLUMN]


def open_corpus(source: str, text_column: str = COLUMN, split: str = "train", flag: str = "--train_file",
                note=None) -> Corpus:
    """The corpus at `source`: a local file (its format from its suffix: .csv, .tsv, .jsonl / .json, .parquet;
    any other is text, one sentence a line) or, where no such file exists, a hub dataset name. Notes (what was
    skipped) go through `note` (default: printed to stderr); a source that cannot be used raises DataError
    naming the flag and the file, line or row."""
    suffix = Path(source).suffix.lower()
    if os.path.exists(source) or not HUB_NAME.fullmatch(source) or suffix in (*FORMATS, ".txt"):
        kind = FORMATS.get(suffix, "text")
        if split != "train":
            raise DataError(f"--train_split {split}: only a hub dataset has splits, and {flag} {source} is a file")
        if kind == "text" and text_column != COLUMN:
            raise DataError(f"--text_column {text_column}: {flag} {source} is a text file, one sentence per line, "
                            "without columns")
        if os.path.isdir(source):
            raise DataError(f"{flag} {source} is a folder; it must be a file (text, CSV, JSON lines or Parquet)")
        with open_binary(source, f"{flag} ") as f:  # a missing or unreadable file is named here
            stat = os.fstat(f.fileno())
        key = [kind, os.path.realpath(source), stat.st_size, stat.st_mtime_ns, text_column]
        rows = functools.partial(READERS[kind], source, text_column, flag)
    else:
        dataset = _load_hub(source, text_column, split, flag)
        key = ["hub", source, split, text_column, dataset._fingerprint]  # datasets' own key of the data
        rows = functools.partial(_hub_rows, dataset, text_column, flag)
    return _convert(rows, key, f"{flag} {source}", "line" if key[0] == "text" else "row", note or print_note)


def _convert(rows, key: list, what: str, unit: str, note) -> Corpus:
    """The corpus of `rows(tally)`, converted into datasets' cache, or mapped from there where a conversion of
    the same `key` is already there; its notes said through `note`."""
    import datasets
    from filelock import FileLock

    fingerprint = hashlib.sha256(json.dumps([CONVERSION, *key]).encode()).hexdigest()[:32]
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "corpus"
    tally_path = folder / f"{fingerprint}.json"
    tally, ran = Tally(), []

    def sentences():
        ran.append(True)
        yield from ({COLUMN: sentence} for sentence in tally.clean(rows(tally)))
        tally.check(what, unit)
        write_json_atomic(str(tally_path), vars(tally))  # before datasets keeps the file: no copy without its notes

    try:
        folder.mkdir(parents=True, exist_ok=True)
        # one process converts (datasets' lock guards only the writing); the others wait, then map its copy
        with FileLock(str(folder / f"{fingerprint}.lock")):
            features = datasets.Features({COLUMN: datasets.Value("string")})
            try:
                dataset = datasets.Dataset.from_generator(sentences, features=features, cache_dir=str(folder),
                                                          fingerprint=fingerprint)
            except datasets.exceptions.DatasetGenerationError as err:
                if isinstance(err.__cause__, (DataError, OSError)):  # the source's own problem, or the disk's
                    raise err.__cause__ from None
                raise
    except OSError as err:  # a full disk, a cache folder that cannot be written
        raise DataError(f"{what}: it cannot be converted into {folder} ({err}); free space there, or set "
                        "HF_DATASETS_CACHE to a folder with room") from None
    if not ran and tally_path.exists():  # the notes of the conversion, said again
        tally = Tally(**json.loads(tally_path.read_text()))
    for line in tally.notes(what, unit):
        note(line)
    return Corpus(dataset, converted=bool(ran))


def _load_hub(name: str, column: str, split: str, flag: str):
    """The hub dataset `name`'s split, its `column` checked; DataError where it cannot be had."""
    import datasets

    try:
        dataset = datasets.load_dataset(name, split=split)
    except ValueError as err:  # a split or configuration the dataset does not have
        raise DataError(f"{flag} {name} (--train_split {split}): {_first_line(err)}") from None
    except OSError as err:  # offline, unknown or private: ConnectionError, DatasetNotFoundError, HTTP errors
        raise DataError(
            f"{flag} {name}: no such file, and no hub dataset of that name can be loaded "
            f"({type(err).__name__}: {_first_line(err)}); download it first where the hub can be reached "
            "(docs/data.md), or pass a local file") from None
    _check_column(column, list(dataset.column_names), f"{flag} {name}")
    if dataset.features[column] not in (datasets.Value("string"), datasets.Value("large_string")):
        raise DataError(f"--text_column {column}: {flag} {name} holds {dataset.features[column]} there, not text")
    return dataset


def _hub_rows(dataset, column: str, flag: str, tally: Tally):
    """A loaded hub dataset's column, BATCH_ROWS rows at a time."""
    for batch in dataset.select_columns([column]).iter(batch_size=BATCH_ROWS):
        yield from batch[column]


def _check_column(column: str, columns: list, where: str) -> None:
    if column not in columns:
        raise DataError(f"--text_column {column}: {where} has no such column; its columns: {', '.join(columns)}")


def _text_rows(path: str, column: str, flag: str, tally: Tally):
    return text_lines(path, flag, tally)


def _csv_rows(path: str, column: str, flag: str, tally: Tally):
    """A CSV file's column (a .tsv: tab-separated), its first row the header; a blank line is a blank row."""
    lines = (line for _, line in read_lines(path, f"{flag} "))
    reader = csv.reader(lines, delimiter="\t" if path.lower().endswith(".tsv") else ",")
    try:
        header = next(reader, None)
        if header is None:
            return
        _check_column(column, header, f"{flag} {path}")
        index = header.index(column)
        for row in reader:
            if row and len(row) != len(header):
                raise DataError(f"{flag} {path}: line {reader.line_num}: {len(row)} fields where its header has "
                                f"{len(header)}")
            yield row[index] if row else None
    except csv.Error as err:
        raise DataError(f"{flag} {path}: line {reader.line_num}: not readable as CSV ({err})") from None


def _jsonl_rows(path: str, column: str, flag: str, tally: Tally):
    """A JSON lines file's key `column`: one object a line; a blank line or a null is a blank row."""
    for number, line in read_lines(path, f"{flag} "):
        if not line.strip():
            yield None
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{flag} {path}: line {number}: not valid JSON ({err.msg}, column {err.colno}); "
                            "JSON lines hold one object a line") from None
        if not isinstance(row, dict):
            raise DataError(f"{flag} {path}: line {number}: not a JSON object; JSON lines hold one object a line")
        _check_column(column, list(row), f"{flag} {path}: line {number}")
        if row[column] is not None and not isinstance(row[column], str):
            raise DataError(f"{flag} {path}: line {number}: the value of {column!r} is "
                            f"{json.dumps(row[column])[:40]}, not a string")
        yield row[column]


def _parquet_rows(path: str, column: str, flag: str, tally: Tally):
    """A Parquet file's column (a string column), BATCH_ROWS rows at a time; a null is a blank row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{flag} {path}: not a Parquet file it can read ({_first_line(err)})") from None
    _check_column(column, table.schema_arrow.names, f"{flag} {path}")
    kind = table.schema_arrow.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"--text_column {column}: {flag} {path} holds {kind} there, not text")
    done = 0
    try:
        for batch in table.iter_batches(batch_size=BATCH_ROWS, columns=[column]):
            yield from batch.column(0).to_pylist()
            done += batch.num_rows
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"{flag} {path}: row {done + 1} on cannot be read ({_first_line(err)})") from None


READERS = {"text": _text_rows, "csv": _csv_rows, "jsonl": _jsonl_rows, "parquet": _parquet_rows}


def _first_line(err: Exception) -> str:
    return (str(err).strip().splitlines() or [""])[0][:300]
