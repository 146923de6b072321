"""A user's own evaluation sets: utils/scored_pairs.py reads scored sentence pairs in any layout the flags
name; --dev_file selects best/ and drives the early stop in place of STS-B dev, --probe_file is what the rank
records measure, and analyze_rank.py measures the runs on the sets they trained with."""

import json
import math
import random

import pytest
import torch

from tests.conftest import run_in_process
from utils.data import DataError
from utils.rank import probe_metrics
from utils.scored_pairs import high_pairs, read_scored_pairs
from utils.scoring import load_eval_sets

GERMAN = ("ein der die mann frau kind hund katze spielt reitet isst gitarre pferd fahrrad essen auf im mit und "
          "zwei leute strasse park wasser ball rot blau klein gross").split()


def german_pairs(n: int, seed: int = 0) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    sentence = lambda: " ".join(rng.choice(GERMAN) for _ in range(rng.randint(3, 9)))  # noqa: E731
    return [(sentence(), sentence(), round(rng.uniform(0, 1), 3)) for _ in range(n)]


def records_of(out) -> list[dict]:
    return [json.loads(line) for line in open(out / "metrics.jsonl")]


def write_tsv(path, pairs, header=("sentence1", "sentence2", "score")):
    rows = (["\t".join(header)] if header else []) + [f"{a}\t{b}\t{g}" for a, b, g in pairs]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


# ---- the reader


def test_each_layout_reads_the_same_pairs(tmp_path):
    pairs = german_pairs(12)
    want = ([a for a, _, _ in pairs], [b for _, b, _ in pairs], [g for _, _, g in pairs])
    assert read_scored_pairs(str(write_tsv(tmp_path / "h.tsv", pairs))) == want  # a header row names them
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("id,score,text a,text b\n" + "".join(f'{i},{g},"{a}","{b}"\n' for i, (a, b, g) in enumerate(pairs)))
    assert read_scored_pairs(str(csv_file), ["text a", "text b", "score"]) == want  # names, CSV quoting
    assert read_scored_pairs(str(csv_file), ["2", "3", "1"]) == want  # numbers: the header row is skipped
    stsb = tmp_path / "sts-dev.csv"  # SentEval's STS-B layout: tab-separated, no header, score in column 4
    stsb.write_text("".join(f"main\tfile\t2012\t{i:04d}\t{g}\t{a}  \t{b}\n" for i, (a, b, g) in enumerate(pairs)))
    assert read_scored_pairs(str(stsb)) == want  # white space collapsed as utils.sts reads SentEval
    assert read_scored_pairs(str(write_tsv(tmp_path / "n.tsv", pairs, header=None)), ["0", "1", "2"]) == want


@pytest.mark.parametrize("content, columns, needle", [
    ("\n \n", None, "is empty: it needs sentence pairs with a gold score"),
    ("sentence1\tsentence2\tscore\n" + "a b\tc d\t1\n" * 3, None, "3 scored pairs; the in-training evaluation needs at least 10"),
    ("sentence1\tsentence2\tscore\n" + "a b\tc d\t1\n" * 12, None, "every pair has the score 1.0"),
    ("sentence1\tsentence2\tscore\n" + "a b\tc d\thigh\n" + "a b\tc d\t1\n" * 12, None, "line 2: score 'high' is not a finite number"),
    ("sentence1\tsentence2\tscore\n" + "a b\tc d\n", None, "line 2: expected at least 3 fields, got 2"),
    ("sentence1\tsentence2\tscore\n" + " \tc d\t2\n", None, "line 2: an empty sentence"),
    ("x\ty\tz\n" + "a b\tc d\t1\n" * 12, None, "cannot tell which columns hold the two sentences and the score"),
    ("s1\ts2\tgold\n" + "a b\tc d\t1\n" * 12, ["s1", "s2", "label"], "no column 'label' in its header row (--dev_columns); its columns are 's1', 's2', 'gold'"),
])
def test_each_bad_file_is_one_message_naming_file_and_line(tmp_path, content, columns, needle):
    path = tmp_path / "dev.tsv"
    path.write_text(content)
    with pytest.raises(DataError) as err:
        read_scored_pairs(str(path), columns)
    assert str(err.value).startswith(f"--dev_file {path}") and needle in str(err.value)


def test_high_pairs_are_the_top_fifth_of_the_score_range():
    s1, s2 = ["a", "b", "c", "d"], ["e", "f", "g", "h"]
    assert high_pairs(s1, s2, [0.0, 4.0, 4.5, 5.0]) == [("c", "g"), ("d", "h")]  # STS-B's 0-5: above 4
    assert high_pairs(s1, s2, [0.1, 0.5, 0.9, 0.7]) == [("c", "g")]  # any scale: above 0.1 + 0.8 * 0.8


def test_the_probe_file_is_ranked_and_the_dev_pairs_aligned(tmp_path):
    pairs = [(a, b, float(i)) for i, (a, b, _) in enumerate(german_pairs(10))]  # scores 0..9: top fifth 8, 9
    dev = write_tsv(tmp_path / "dev.tsv", pairs)
    probe = tmp_path / "probe.txt"
    probe.write_text("erster satz\nzweiter satz\nerster satz\ndritter satz\n")
    sets = load_eval_sets(None, dev_file=str(dev), probe_file=str(probe))
    assert list(sets.dev_tasks) == ["stsb_dev"]  # no SentEval folder: no SICK-R
    sentences, positive, rows = sets.probe
    assert sentences[:rows] == ["erster satz", "zweiter satz", "dritter satz"]
    assert [(sentences[i], sentences[j]) for i, j in positive] == [(a, b) for a, b, g in pairs if g > 7.2]
    emb = torch.randn(len(sentences), 6)
    got = probe_metrics(emb, positive, rows=rows)
    alone = probe_metrics(emb[:rows], [])
    assert {k: v for k, v in got.items() if k != "alignment"} == {k: v for k, v in alone.items() if k != "alignment"}
    i, j = torch.tensor(positive).T
    assert got["alignment"] == pytest.approx(probe_metrics(torch.cat([emb[i], emb[j]]), [(0, 2), (1, 3)])["alignment"])
    assert sets.names["probe"] == f"{probe}, 3 sentences" and sets.names["dev"] == f"{dev} (10 pairs)"


# ---- training and analysis on them


@pytest.fixture(scope="module")
def german_run(tmp_path_factory, tiny_bert, corpus, fake_senteval):
    """A run selected on a German dev file, its rank measured on a 5-sentence probe file, no SentEval folder."""
    root = tmp_path_factory.mktemp("own-sets")
    dev = write_tsv(root / "dev.tsv", german_pairs(30))
    probe = root / "probe.txt"
    probe.write_text("\n".join(" ".join(p[0].split()[:4]) for p in german_pairs(5, seed=3)) + "\n")
    out = root / "out"
    argv = ["--model_name_or_path", tiny_bert, "--train_file", corpus, "--dev_file", dev, "--probe_file", probe,
            "--output_dir", out, "--per_device_train_batch_size", "8", "--max_seq_length", "16",
            "--learning_rate", "1e-3", "--logging_steps", "2", "--seed", "7", "--max_train_steps", "40",
            "--eval_steps", "2", "--rank_eval_steps", "1", "--rank_eval_until", "6", "--early_stopping_patience", "2"]
    import train
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    ran = run_in_process(train.main, argv)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return out, dev, probe, ran


def test_the_dev_file_selects_best_and_ends_the_run(german_run):
    out, dev, _, ran = german_run
    evals = [r for r in records_of(out) if r["event"] == "eval"]
    assert all("sickr_dev" not in r for r in evals)  # no SentEval folder: the dev file alone
    best = max(evals, key=lambda r: r["stsb_dev"])
    summary = json.load(open(out / "summary.json"))
    assert summary["best_step"] == best["step"] and summary["best"] == {"stsb_dev": best["stsb_dev"]}
    assert json.load(open(out / "best" / "best_metrics.json"))["step"] == best["step"]
    # the early stop reads the dev file's score: the first evaluation two after the best so far
    since, stop, top = 0, None, -math.inf
    for r in evals:
        top, since = (r["stsb_dev"], 0) if r["stsb_dev"] > top else (top, since + 1)
        if since >= 2:
            stop = r["step"]
            break
    assert summary["status"] == "early_stopped" and summary["steps"] == stop < 40
    assert summary["eval_sets"]["dev"] == f"{dev} (30 pairs)" and f"dev set {dev}" in ran.stdout


def test_the_probe_file_is_what_the_rank_records_measure(german_run):
    out, _, probe, _ = german_run
    ranked = [r for r in records_of(out) if "effective_rank" in r]
    assert ranked and all(0 < r["effective_rank"] <= 5 + 1e-6 for r in ranked)  # 5 sentences: rank <= 5
    assert json.load(open(out / "summary.json"))["eval_sets"]["probe"] == f"{probe}, 5 sentences"


def test_the_analysis_measures_the_runs_on_their_own_sets(german_run, fake_senteval, tmp_path):
    import analyze_rank

    out, dev, probe, _ = german_run
    ran = run_in_process(analyze_rank.main, ["--runs", out, "--data_dir", fake_senteval, "--out", tmp_path / "a"])
    assert ran.returncode == 0, ran.stderr[-3000:]
    settings = json.load(open(tmp_path / "a" / "summary.json"))["settings"]
    assert settings["dev_file"] == str(dev) and settings["eval_sets"]["probe"] == f"{probe}, 5 sentences"
    assert f"{probe}, 5 sentences" in (tmp_path / "a" / "report.md").read_text()
    # the best checkpoint measured again scores what training recorded for it
    best = json.load(open(out / "best" / "best_metrics.json"))
    recorded = next(r for r in records_of(out) if r["event"] == "eval" and r["step"] == best["step"])
    import csv
    swept = {int(r["step"]): r for r in csv.DictReader(open(tmp_path / "a" / "checkpoints.csv"))}
    assert float(swept[best["step"]]["stsb_dev"]) == pytest.approx(recorded["stsb_dev"], abs=1e-3)


@pytest.mark.parametrize("argv, needle", [
    (["--dev_columns", "a", "b", "c"], "argument --dev_columns: names --dev_file's columns; give --dev_file too"),
    (["--probe_split", "test", "--dev_file", "x.tsv"], "argument --probe_split: picks an STS-B split"),
])
def test_flags_that_cannot_go_together_are_named(tiny_bert, corpus, fake_senteval, tmp_path, argv, needle):
    import train

    ran = run_in_process(train.main, ["--model_name_or_path", tiny_bert, "--train_file", corpus, "--eval_data_dir",
                                      fake_senteval, "--output_dir", tmp_path / "out", *argv])
    assert ran.returncode == 2 and needle in ran.stderr


def test_without_a_dev_set_the_senteval_folder_is_required(tiny_bert, corpus, tmp_path):
    import train

    ran = run_in_process(train.main, ["--model_name_or_path", tiny_bert, "--train_file", corpus,
                                      "--output_dir", tmp_path / "out"])
    assert ran.returncode == 2 and "argument --eval_data_dir: required (SentEval's data/ folder), unless --dev_file" in ran.stderr


def test_a_bad_dev_file_fails_before_the_model_loads(tiny_bert, corpus, tmp_path):
    import train

    dev = tmp_path / "dev.tsv"
    dev.write_text("sentence1\tsentence2\tscore\nein mann\tzwei leute\tviel\n")
    ran = run_in_process(train.main, ["--model_name_or_path", tmp_path / "no-model", "--train_file", corpus,
                                      "--dev_file", dev, "--output_dir", tmp_path / "out"])
    assert ran.returncode == 2 and f"error: --dev_file {dev}: line 2: score 'viel' is not a finite number" in ran.stderr
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
