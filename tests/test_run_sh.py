"""run.sh, the study in one command, on a tiny model: two runs per seed, their STS test scores, the analysis,
and a second call that trains nothing again."""

import json
import os
import subprocess

from tests.conftest import REPO


def _study(tmp_path, model, corpus, data):
    env = dict(os.environ, SEEDS="1", MODEL=str(model), TRAIN_FILE=str(corpus), DATA_DIR=str(data),
               OUT=str(tmp_path / "study"), MAX_STEPS="4", EVAL_STEPS="2", SAVE_STEPS="2", BATCH_SIZE="8",
               MAX_LEN="16", LR="1e-3", CHECKPOINT_STEPS="2", TRAIN_ARGS="--unpad_inputs --rank_eval_steps 2")
    return subprocess.run(["bash", str(REPO / "run.sh")], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=900)


def test_study_trains_scores_analyses_and_resumes(tmp_path, tiny_bert, corpus, shared_data):
    proc = _study(tmp_path, tiny_bert, corpus, shared_data)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = tmp_path / "study" / "runs"
    for name, weight in (("baseline-seed1", 0.0), ("rr-seed1", 0.1)):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert summary["status"] == "finished" and summary["steps"] == 4
        assert summary["rank_reduction"]["weight"] == weight
        assert summary["args"]["unpad_inputs"] is True and summary["args"]["rank_eval_steps"] == 2  # TRAIN_ARGS
        assert "STSBenchmark" in json.loads((runs / name / "sts_test.json").read_text())["tasks"]
    assert (tmp_path / "study" / "analysis" / "report.md").is_file()

    again = _study(tmp_path, tiny_bert, corpus, shared_data)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("is finished already; not training again") == 2
