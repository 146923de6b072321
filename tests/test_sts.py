"""utils/sts.py on a hand-made SentEval folder, with an `embed` whose cosine similarities are known.

`fake_embed` maps "ref ..." to (1, 0) and any other sentence ending in a number c to (c, sqrt(1 - c^2)),
so cos(ref, "... c") = c: each pair's system score is the c written into the file.
"""

import math
import random

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from utils.data import DataError
from utils.sts import (STS_YEARS, evaluate_sts, format_table, load_sts_tasks, read_sick, read_stsb,
                       score_sts, spearman_all)

HINT = "python -m utils.download senteval --data_dir"


def fake_embed(sentences):
    rows = []
    for s in sentences:
        if s.split()[0] == "ref":
            rows.append([1.0, 0.0])
        else:
            c = float(s.split()[-1])
            rows.append([c, math.sqrt(1.0 - c * c)])
    return torch.tensor(rows, dtype=torch.float32)


def _write(path, lines):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(line + "\n" for line in lines).encode("utf-8"))


def make_fake_senteval(root):
    """Write a small SentEval `data/` folder; return {task: {subset: (cosines, golds)}} of its labelled pairs.

    Quirks on purpose: STS13 headlines has an unlabelled pair (empty gold line); STS13 has an SMT subset
    whose input is malformed (it must never be read); one STS12 sentence has irregular white space; one
    STS-B line carries two extra columns; STS-B test and STS12 share a sentence.
    """
    rng = random.Random(0)
    cosines = iter(rng.sample([round(-0.95 + 0.005 * k, 3) for k in range(380)], 380))  # distinct: no tie
    written = {}
    sts = root / "downstream" / "STS"
    for task, subsets in STS_YEARS.items():
        folder = sts / f"{task}-en-test"
        written[task] = {}
        for name in subsets:
            pairs, golds, keep = [], [], ([], [])
            for k in range(rng.randint(3, 6)):
                c, gold = next(cosines), f"{rng.uniform(0, 5):.2f}"
                if (task, name, k) == ("STS13", "headlines", 1):
                    gold = ""  # unlabelled: SentEval drops the pair
                pairs.append(f"ref {task} {name} {k}\t{task} {name} pair {k} {c}")
                golds.append(gold)
                if gold:
                    keep[0].append(c)
                    keep[1].append(float(gold))
            if (task, name) == ("STS12", "MSRpar"):
                pairs[0] = "ref  STS12\u00a0MSRpar   0 \tsts12 shared sentence 0.2525"
                keep[0][0] = 0.2525
            _write(folder / f"STS.input.{name}.txt", pairs)
            _write(folder / f"STS.gs.{name}.txt", golds)
            written[task][name] = keep
    _write(sts / "STS13-en-test" / "STS.input.SMT.txt", ["not\ta\tpair"])
    _write(sts / "STS13-en-test" / "STS.gs.SMT.txt", ["oops"])

    for split, n in (("dev", 5), ("test", 6)):
        lines, keep = [], ([], [])
        for k in range(n):
            c, gold = next(cosines), round(rng.uniform(0, 5), 3)
            s2 = "sts12 shared sentence 0.2525" if (split, k) == ("test", 0) else f"stsb {split} {k} {c}"
            c = 0.2525 if (split, k) == ("test", 0) else c
            extra = "\t2012\tdeft" if k == 2 else ""
            lines.append(f"main-captions\tMSRvid\t2012test\t{k:04d}\t{gold}\tref stsb {split} {k}\t{s2}{extra}")
            keep[0].append(c)
            keep[1].append(gold)
        _write(sts / "STSBenchmark" / f"sts-{split}.csv", lines)
        written.setdefault("STSBenchmark", {})[split] = keep

    for split, fname in (("dev", "SICK_trial.txt"), ("test", "SICK_test_annotated.txt")):
        lines, keep = ["pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment"], ([], [])
        for k in range(7):
            c, gold = next(cosines), round(rng.uniform(1, 5), 1)
            lines.append(f"{k + 1}\tref sick {split} {k}\tsick {split} {k} {c}\t{gold}\tNEUTRAL")
            keep[0].append(c)
            keep[1].append(gold)
        _write(root / "downstream" / "SICK" / fname, lines)
        written.setdefault("SICKRelatedness", {})[split] = keep
    return written


@pytest.fixture
def fake(tmp_path):
    root = tmp_path / "data"
    return root, make_fake_senteval(root)


def test_spearman_all_pools_pairs_rather_than_averaging_subsets():
    # ranks 1 2 3 4 vs 1 3 2 4: sum d^2 = 2, rho = 1 - 6*2 / (4*15) = 0.8; each subset alone has rho = 1
    assert spearman_all([np.array([0.1, 0.2]), np.array([0.3, 0.4])], [np.array([1, 3]), np.array([2, 4])]) \
        == pytest.approx(80.0)


def test_sts13_skips_empty_gold_and_ignores_smt(fake):
    root, written = fake
    tasks = load_sts_tasks(root, "test")
    assert list(tasks["STS13"]) == ["FNWN", "headlines", "OnWN"]
    s1, s2, gold = tasks["STS13"]["headlines"]
    assert len(s1) == len(s2) == len(gold) == len(written["STS13"]["headlines"][1])
    assert "ref STS13 headlines 1" not in s1
    assert gold.tolist() == written["STS13"]["headlines"][1]


def test_sentences_are_whitespace_normalised(fake):
    root, _ = fake
    s1, s2, _ = load_sts_tasks(root, "test")["STS12"]["MSRpar"]
    assert s1[0] == "ref STS12 MSRpar 0" and s2[0] == "sts12 shared sentence 0.2525"


@pytest.mark.parametrize("mode", ["test", "dev"])
def test_scores_match_scipy_on_concatenated_scores(fake, mode):
    root, written = fake
    result = evaluate_sts(fake_embed, root, mode)
    expected_tasks = [*STS_YEARS, "STSBenchmark", "SICKRelatedness"] if mode == "test" else \
        ["STSBenchmark", "SICKRelatedness"]
    assert list(result["tasks"]) == expected_tasks
    for task, got in result["tasks"].items():
        subsets = written[task] if task in STS_YEARS else {mode: written[task][mode]}
        sims = [c for cs, _ in subsets.values() for c in cs]
        golds = [g for _, gs in subsets.values() for g in gs]
        assert got["spearman"] == pytest.approx(100 * spearmanr(sims, golds).statistic, abs=1e-9), task
        assert got["n"] == len(golds)
        assert list(got["subsets"]) == list(subsets)
        for name, (cs, gs) in subsets.items():
            assert got["subsets"][name]["spearman"] == pytest.approx(100 * spearmanr(cs, gs).statistic, abs=1e-9)
    assert result["avg"] == pytest.approx(np.mean([t["spearman"] for t in result["tasks"].values()]))
    assert result["n_pairs"] == sum(t["n"] for t in result["tasks"].values())


def test_each_unique_sentence_is_embedded_once_in_one_call(fake):
    root, _ = fake
    calls = []
    tasks = load_sts_tasks(root, "test")
    score_sts(lambda s: calls.append(list(s)) or fake_embed(s), tasks)
    assert len(calls) == 1
    sent = calls[0]
    assert len(sent) == len(set(sent))
    assert sent.count("sts12 shared sentence 0.2525") == 1  # in STS12 MSRpar and STS-B test
    assert not any("  " in s or "\u00a0" in s for s in sent)


def test_embed_row_count_is_checked(fake):
    root, _ = fake
    with pytest.raises(ValueError, match="rows"):
        evaluate_sts(lambda s: fake_embed(s)[:-1], root, "dev")


def test_stsb_columns(fake):
    root, written = fake
    s1, s2, gold = read_stsb(root, "test")
    assert s1[2] == "ref stsb test 2"  # the line with 2 extra trailing columns
    assert s2[1].startswith("stsb test 1 ")
    assert gold.tolist() == written["STSBenchmark"]["test"][1]


def test_sick_header_is_skipped_and_dev_is_trial(fake):
    root, written = fake
    s1, s2, gold = read_sick(root, "dev")
    assert len(s1) == 7 and s1[0] == "ref sick dev 0" and s2[0].startswith("sick dev 0 ")
    assert gold.tolist() == written["SICKRelatedness"]["dev"][1]
    assert read_sick(root, "test")[0][0] == "ref sick test 0"


def test_dev_mode_reads_only_dev_files(fake):
    root, _ = fake
    (root / "downstream" / "STS" / "STS12-en-test" / "STS.gs.MSRpar.txt").unlink()
    (root / "downstream" / "SICK" / "SICK_test_annotated.txt").unlink()
    tasks = load_sts_tasks(root, "dev")
    assert {t: list(s) for t, s in tasks.items()} == {"STSBenchmark": ["dev"], "SICKRelatedness": ["dev"]}


def test_format_table(fake):
    root, _ = fake
    table = format_table(evaluate_sts(fake_embed, root, "dev"))
    lines = table.splitlines()
    assert len(lines) == 5 and "STSBenchmark" in lines[1] and "Avg." in lines[1]
    assert len({len(line) for line in lines}) == 1
    assert all(len(cell.strip().split(".")[1]) == 2 for cell in lines[3].strip("| ").split(" | "))


# ----------------------------------------------------------------------------- errors

def test_missing_data_dir(tmp_path):
    with pytest.raises(DataError) as err:
        load_sts_tasks(tmp_path / "nowhere", "dev")
    assert str(tmp_path / "nowhere" / "downstream") in str(err.value) and HINT in str(err.value)


def test_missing_file_is_named(fake):
    root, _ = fake
    path = root / "downstream" / "STS" / "STS15-en-test" / "STS.gs.belief.txt"
    path.unlink()
    with pytest.raises(DataError) as err:
        load_sts_tasks(root, "test")
    assert str(path) in str(err.value) and "no such file" in str(err.value) and HINT in str(err.value)


@pytest.mark.parametrize("relpath, line_no, content, needle", [
    ("STS/STS14-en-test/STS.input.images.txt", 2, "only one sentence", "expected 2 tab-separated"),
    ("STS/STS14-en-test/STS.gs.images.txt", 3, "4.x", "not a finite number"),
    ("STS/STSBenchmark/sts-dev.csv", 4, "genre\tfile\t2012\t0001\t3.0\tonly s1", "at least 7"),
    ("STS/STSBenchmark/sts-dev.csv", 1, "g\tf\t2012\t0001\tnan\ta\tb", "not a finite number"),
    ("SICK/SICK_trial.txt", 3, "7\tno score here", "at least 4"),
])
def test_malformed_line_names_file_and_line(fake, relpath, line_no, content, needle):
    root, _ = fake
    path = root / "downstream" / relpath
    lines = path.read_text(encoding="utf-8").splitlines()
    lines[line_no - 1] = content
    _write(path, lines)
    mode = "dev" if "dev" in relpath or "trial" in relpath else "test"
    with pytest.raises(DataError) as err:
        load_sts_tasks(root, mode)
    assert f"{path}: line {line_no}:" in str(err.value) and needle in str(err.value)


def test_line_count_mismatch(fake):
    root, _ = fake
    path = root / "downstream" / "STS" / "STS16-en-test" / "STS.gs.plagiarism.txt"
    path.write_text(path.read_text() + "3.0\n")
    with pytest.raises(DataError, match="STS.gs.plagiarism.txt has"):
        load_sts_tasks(root, "test")


def test_non_utf8_file_is_named(fake):
    root, _ = fake
    path = root / "downstream" / "SICK" / "SICK_trial.txt"
    path.write_bytes(path.read_bytes().replace(b"ref sick dev 2", b"r\xe9f sick dev 2"))
    with pytest.raises(DataError) as err:
        load_sts_tasks(root, "dev")
    assert f"{path}: line 4, byte 4: not valid UTF-8" in str(err.value)


# ----------------------------------------------------------------------------- real data

def test_real_data_pair_counts(shared_data):
    """Gold-labelled pairs per task, as MANIFEST.md (and SentEval) count them."""
    counts = {}
    for mode in ("test", "dev"):
        for task, subsets in load_sts_tasks(shared_data, mode).items():
            counts[f"{task}/{mode}"] = sum(len(gold) for _, _, gold in subsets.values())
    assert counts == {
        "STS12/test": 3108, "STS13/test": 1500, "STS14/test": 3750, "STS15/test": 3000, "STS16/test": 1186,
        "STSBenchmark/test": 1379, "SICKRelatedness/test": 4927,
        "STSBenchmark/dev": 1500, "SICKRelatedness/dev": 500,
    }
