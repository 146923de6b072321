"""A user's own dev set: sentence pairs with a gold similarity score, in any language, from a CSV or TSV file.

Which columns hold the two sentences and the score: the names or 0-based numbers given (`--dev_columns`),
else a header row with the columns `sentence1`, `sentence2` and `score`, else SentEval's STS-B layout
(tab-separated, no header: genre, file, year, id, score, sentence 1, sentence 2), the layout STS-B dev
itself has. A file whose first line holds a tab is read as SentEval reads its files, split at every tab (no
quoting; STS-B's own `sts-dev.csv` is one); any other as comma-separated CSV, with its quoting.
"""

import csv
import io
import math

from utils.data import DataError, read_text
from utils.sts import MIN_PAIRS

HEADER = ("sentence1", "sentence2", "score")
STSB_LAYOUT = (5, 6, 4)  # sentence 1, sentence 2, score


def _rows(path: str, flag: str) -> list[list[str]]:
    text = read_text(path, prefix=f"{flag} ").lstrip("\ufeff")
    if "\t" not in text.split("\n", 1)[0]:  # STS-B's own sts-dev.csv is tab-separated
        return list(csv.reader(io.StringIO(text, newline="")))
    return [line.rstrip("\r").split("\t") for line in text.split("\n")]


def _columns(rows: list, columns, path: str, flag: str) -> tuple[tuple[int, int, int], bool]:
    """((sentence 1, sentence 2, score) column numbers, whether the first row is a header)."""
    first = [c.strip() for c in rows[0]] if rows else []
    if columns is None:
        lower = [c.lower() for c in first]
        if all(name in lower for name in HEADER):
            return tuple(lower.index(name) for name in HEADER), True
        if rows and len(first) > max(STSB_LAYOUT) and _is_number(first[STSB_LAYOUT[2]]):
            return STSB_LAYOUT, False
        raise DataError(f"{flag} {path}: cannot tell which columns hold the two sentences and the score: give "
                        f"--dev_columns (header names or 0-based numbers), or a header row with the columns "
                        f"{', '.join(HEADER)}")
    if all(c.isdigit() for c in columns):  # numbers: a first row whose score is not a number is a header
        numbers = tuple(int(c) for c in columns)
        header = bool(rows) and len(first) > numbers[2] and not _is_number(first[numbers[2]])
        return numbers, header
    missing = [c for c in columns if c not in first]
    if missing:
        raise DataError(f"{flag} {path}: no column {missing[0]!r} in its header row (--dev_columns); its columns "
                        f"are {', '.join(map(repr, first))}")
    return tuple(first.index(c) for c in columns), True


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def read_scored_pairs(path: str, columns=None, flag: str = "--dev_file") -> tuple[list, list, list]:
    """(sentences 1, sentences 2, gold scores) of a scored-pairs file, white space collapsed as utils.sts reads
    SentEval's files; blank lines skipped. DataError names the file, the line and what is wrong: a missing
    column, a row too short, an empty sentence, a score that is not a finite number, fewer than MIN_PAIRS
    pairs, or scores that are all equal (no ranking to correlate with)."""
    numbered = [(line, row) for line, row in enumerate(_rows(path, flag), start=1) if any(c.strip() for c in row)]
    if not numbered:
        raise DataError(f"{flag} {path} is empty: it needs sentence pairs with a gold score")
    (c1, c2, cs), header = _columns([row for _, row in numbered], columns, path, flag)
    need = max(c1, c2, cs) + 1
    s1, s2, gold = [], [], []
    for line, row in numbered[1:] if header else numbered:
        if len(row) < need:
            raise DataError(f"{flag} {path}: line {line}: expected at least {need} fields, got {len(row)}")
        a, b = " ".join(row[c1].split()), " ".join(row[c2].split())
        if not a or not b:
            raise DataError(f"{flag} {path}: line {line}: an empty sentence")
        if not _is_number(row[cs]):
            raise DataError(f"{flag} {path}: line {line}: score {row[cs]!r} is not a finite number")
        s1.append(a)
        s2.append(b)
        gold.append(float(row[cs]))
    if len(gold) < MIN_PAIRS:
        raise DataError(f"{flag} {path}: {len(gold)} scored pairs; the in-training evaluation needs at least "
                        f"{MIN_PAIRS}")
    if len(set(gold)) == 1:
        raise DataError(f"{flag} {path}: every pair has the score {gold[0]}; a dev set needs scores to rank")
    return s1, s2, gold


def high_pairs(s1: list, s2: list, gold: list, share: float = 0.2) -> list[tuple[str, str]]:
    """The pairs scored in the top `share` of the score range: SimCSE's alignment pairs (STS-B's 0-5 scale,
    the pairs above 4) on any scale."""
    low, high = min(gold), max(gold)
    cut = high - share * (high - low)
    return [(a, b) for a, b, g in zip(s1, s2, gold) if g > cut]
