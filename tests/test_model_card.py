"""The model card (README.md) of train.py's exports and --push_to_hub: the card holds the run's recorded facts,
its front matter is what the Hub reads, and its code reads the embedding the export records; the push uploads
the complete best/ (huggingface_hub's HfApi is replaced by a fake: no network here), and a failed one costs
nothing on disk."""

import json
import os
import re

import pytest
import torch
import yaml

from tests.conftest import run_in_process, train_argv

REPO_ID = "me/tiny-simcse"
SHORT = ("--max_train_steps", "6", "--eval_steps", "3")


class FakeHub:
    """HfApi as the push calls it: records the repo made and what the upload saw; `error` makes the upload raise."""

    def __init__(self, error: Exception | None = None):
        self.error, self.created, self.uploads = error, [], []

    def create_repo(self, repo_id, *, private=None, exist_ok=False):  # HfApi's keywords, keyword-only as there
        self.created.append({"repo_id": repo_id, "private": private, "exist_ok": exist_ok})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, commit_message=None):
        if self.error:
            raise self.error
        files = {os.path.relpath(os.path.join(root, name), folder_path)
                 for root, _, names in os.walk(folder_path) for name in names}
        with open(os.path.join(folder_path, "README.md")) as f:
            self.uploads.append({"repo_id": repo_id, "folder": folder_path, "files": files, "card": f.read()})


def train_with_hub(monkeypatch, hub, model, corpus, data, out, *extra):
    """train.main in this process with `hub` as the Hub and a token in the environment."""
    import huggingface_hub
    from accelerate.state import AcceleratorState

    import train

    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: hub)
    AcceleratorState._reset_state(reset_partial_state=True)  # train.main builds its own Accelerator here
    return run_in_process(train.main, train_argv(model, corpus, data, out, *extra))


@pytest.fixture(scope="module")
def pushed(tmp_path_factory, tiny_bert, corpus, fake_senteval):
    """One short SimCSE + RR run with an export at step 3, pushed to REPO_ID: (its folder, the hub, the result)."""
    out, hub = tmp_path_factory.mktemp("pushed") / "out", FakeHub()
    with pytest.MonkeyPatch.context() as monkeypatch:
        ran = train_with_hub(monkeypatch, hub, tiny_bert, corpus, fake_senteval, out, *SHORT, "--rank-reduction", "0.1",
                             "--save_steps", "3", "--save_steps_until", "3", "--push_to_hub", REPO_ID)
    assert ran.returncode == 0, ran.stderr[-3000:]
    return out, hub, ran


def read_card(folder) -> tuple[dict, str]:
    """(the YAML front matter, the text) of folder/README.md."""
    text = (folder / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.S)
    assert match, text[:300]
    return yaml.safe_load(match.group(1)), match.group(2)


def card_code(text: str, model_id: str, path) -> dict:
    """What the card's python blocks define, run with the model read from `path`: {library: namespace}."""
    ran = {}
    for code in re.findall(r"```python\n(.*?)```", text, re.S):
        namespace = {}
        exec(code.replace(f'"{model_id}"', f'"{path}"'), namespace)  # noqa: S102 (the card's own code)
        ran["sentence-transformers" if "SentenceTransformer" in code else "transformers"] = namespace
    return ran


def recorded_embedding(path, sentences) -> torch.Tensor:
    """The embedding the export's config records, as evaluate.py reads it."""
    from utils.embedding import checkpoint_embedder, read_embedding
    from utils.encode import encode
    from utils.model import load_pretrained

    encoder, tokenizer = load_pretrained(str(path))
    embedding, _ = read_embedding(encoder.config, "test")
    return encode(checkpoint_embedder(encoder, tokenizer, embedding), tokenizer, sentences,
                  template=embedding.template, period=embedding.period)


def assert_card_code_reads(text, model_id, path, libraries):
    ran = card_code(text, model_id, path)
    assert set(ran) == set(libraries)
    for namespace in ran.values():
        got = torch.as_tensor(namespace["embeddings"])
        torch.testing.assert_close(got, recorded_embedding(path, namespace["sentences"]), atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- the card of a run


def test_the_best_card_holds_the_runs_recorded_facts(pushed):
    from huggingface_hub import ModelCard

    out, _, _ = pushed
    front, text = read_card(out / "best")
    assert front["library_name"] == "sentence-transformers" and front["pipeline_tag"] == "sentence-similarity"
    assert {"sentence-transformers", "simcse", "rank-reduction"} <= set(front["tags"])
    assert "base_model" not in front  # a local folder is no Hub model
    assert ModelCard.load(out / "best" / "README.md").data.library_name == "sentence-transformers"  # the Hub's parser

    best = json.loads((out / "best" / "best_metrics.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["best_step"] == best["step"]
    assert f"at step {best['step']} (`best/`)" in text and f"## Scores at step {best['step']}" in text
    assert f"| STS-B dev (Spearman × 100) | {best['stsb_dev']:.2f} |" in text
    assert f"| SICK-R trial (Spearman × 100) | {best['sickr_dev']:.2f} |" in text
    assert "| method | SimCSE (`--method simcse`) |" in text and "| seed | 7 |" in text
    assert f"| steps trained | {summary['steps']} of {summary['total_steps']} (finished) |" in text
    assert "| `--learning_rate` | 0.001 |" in text and "`--learning_rate 0.001` (the recipe's: 3e-05)" in text
    assert "| `--rank_reduction` | 0.1 |" in text and "| `--rr_schedule` | constant |" in text
    assert "`--logging_steps`" not in text and "--output_dir" not in text  # no part of the training
    rank = summary["rank"]
    assert rank["offline_peak"]["description"] in text
    for phase in (rank["phase1"], rank["phase2"]):
        assert (phase.get("absent") or f"steps {phase['start_step']} to {phase['end_step']}") in text
    assert f"- torch: {torch.__version__}" in text


def test_a_save_steps_export_has_its_own_card(pushed):
    out, _, _ = pushed
    export = out / "checkpoints" / "step-000003"
    front, text = read_card(export)
    assert front["library_name"] == "sentence-transformers"
    assert "the encoder at step 3" in text and "## Scores" not in text  # its scores are not in the export
    assert "## Rank and phases" not in text  # known at the end of the run only
    assert REPO_ID not in text  # only best/ is pushed: its code reads the folder
    assert_card_code_reads(text, str(export), export, ["sentence-transformers", "transformers"])


def test_the_card_code_reads_the_embedding_in_both_libraries(pushed):
    from sentence_transformers import SentenceTransformer

    out, _, _ = pushed
    _, text = read_card(out / "best")
    assert_card_code_reads(text, REPO_ID, out / "best", ["sentence-transformers", "transformers"])
    assert SentenceTransformer(str(out / "best"), device="cpu").similarity_fn_name == "cosine"


def test_the_promptbert_card_says_how_to_read_its_prompt_embedding(tmp_path, tiny_bert, corpus, fake_senteval,
                                                                    monkeypatch):
    ran = train_with_hub(monkeypatch, FakeHub(), tiny_bert, corpus, fake_senteval, tmp_path / "out", "--method",
                         "promptbert", "--max_train_steps", "2", "--eval_steps", "2", "--rank_eval_until", "0")
    assert ran.returncode == 0, ran.stderr[-3000:]
    best = tmp_path / "out" / "best"
    front, text = read_card(best)
    assert front["library_name"] == "transformers" and front["pipeline_tag"] == "feature-extraction"
    assert "sentence-transformers cannot express this embedding" in text
    assert "`evaluate.py --embedding dev`" in text  # the dev score is of another embedding than the code's
    assert_card_code_reads(text, str(best), best, ["transformers"])  # the prompt, the '.' rule, the [MASK] state


def write_card(folder, kind: str, record: dict, args: dict, model_id: str) -> None:
    """The card as a run writes it, for these arguments."""
    from utils.model_card import write_model_card
    from utils.run_folder import training_flags, versions

    write_model_card(str(folder), kind, record, args, training_flags(args), versions(), model_id)


def export_with_card(folder, tiny_bert, pooler="cls_before_pooler", **changes):
    """SimCSEModel's export of tiny_bert with `pooler` at evaluation, and its card for a run of these `changes` to
    train.py's arguments."""
    import train
    from utils.model import SimCSEModel, load_pretrained

    kept = pooler not in ("cls_before_pooler", "mask")  # an MLP read at evaluation where `cls` has one
    args = vars(train.parse_args(["--model_name_or_path", str(tiny_bert), "--train_file", "t.txt", "--eval_data_dir",
                                  "data", "--output_dir", "out", "--pooler_type", "cls" if not kept else pooler,
                                  "--mlp_only_train" if not kept else "--no-mlp_only_train"]))
    args.update(changes)
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, args["pooler_type"], args["mlp_only_train"])
    with torch.no_grad():  # an MLP away from its init, so code that skipped it would show
        if model.mlp is not None:
            model.mlp.dense.weight.add_(torch.randn_like(model.mlp.dense.weight))
    model.save_pretrained(str(folder), tokenizer, 62)
    write_card(folder, "checkpoint", {"step": 0}, args, str(folder))
    return read_card(folder)


@pytest.mark.parametrize("pooler, libraries", [
    ("cls", ["sentence-transformers", "transformers"]),  # the MLP kept at evaluation: the encoder's pooler
    ("avg", ["sentence-transformers", "transformers"]),
    ("avg_first_last", ["transformers"]),
    ("avg_top2", ["transformers"]),
])
def test_the_card_code_reads_every_recorded_pooler(tmp_path, tiny_bert, pooler, libraries):
    front, text = export_with_card(tmp_path / "export", tiny_bert, pooler)
    assert front["library_name"] == libraries[0]  # sentence-transformers where it can express the embedding
    assert_card_code_reads(text, str(tmp_path / "export"), tmp_path / "export", libraries)


def test_hub_names_are_linked_and_local_paths_are_not(tmp_path, tiny_bert):
    front, text = export_with_card(tmp_path / "hub", tiny_bert, model_name_or_path="google-bert/bert-base-uncased",
                                   train_file="princeton-nlp/wiki1m")
    assert front["base_model"] == "google-bert/bert-base-uncased" and front["datasets"] == ["princeton-nlp/wiki1m"]
    assert "| training text | [princeton-nlp/wiki1m](https://huggingface.co/datasets/princeton-nlp/wiki1m) |" in text
    front, text = export_with_card(tmp_path / "local", tiny_bert, train_file=str(tmp_path / "local" / "config.json"))
    assert "base_model" not in front and "datasets" not in front
    assert str(tmp_path) not in text.split("```")[0]  # the machine's paths stay out of the description
    assert f"| base model | `{tiny_bert.name}` (local) |" in text
    assert "| training text | `config.json` (local) |" in text


def test_the_peak_export_has_its_card(tmp_path, tiny_bert):
    import train
    from utils.model import SimCSEModel, load_pretrained
    from utils.run_folder import PeakCheckpoint

    args = vars(train.parse_args(["--model_name_or_path", str(tiny_bert), "--train_file", "t.txt", "--eval_data_dir",
                                  "data", "--output_dir", str(tmp_path)]))
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = SimCSEModel(encoder, "cls")
    keeper = PeakCheckpoint(str(tmp_path), keep=2, card=lambda folder, kind, record, path: write_card(
        folder, kind, record, args, path))  # as RunFolder.card writes it
    keeper.remember(10, model)
    keeper.on_event({"moved_to": 10, "declared": True}, model, tokenizer, 62)
    _, text = read_card(tmp_path / "peak")
    assert "the encoder at the rank peak, step 10 (`peak/`)" in text
    assert f'AutoModel.from_pretrained("{tmp_path / "peak"}")' in text  # where it is published, not written


# ----------------------------------------------------------------------------- the push


def test_the_push_uploads_the_complete_best_folder(pushed):
    out, hub, ran = pushed
    assert hub.created == [{"repo_id": REPO_ID, "private": None, "exist_ok": True}]
    [upload] = hub.uploads
    assert upload["repo_id"] == REPO_ID and upload["folder"] == str(out / "best")
    assert {"README.md", "model.safetensors", "config.json", "config_sentence_transformers.json", "modules.json",
            "1_Pooling/config.json", "tokenizer.json", "best_metrics.json"} <= upload["files"]
    assert upload["card"] == (out / "best" / "README.md").read_text()  # the card of the run's end, pushed
    assert "## Rank and phases" in upload["card"] and f'SentenceTransformer("{REPO_ID}")' in upload["card"]
    assert f"pushed {out / 'best'} to https://huggingface.co/{REPO_ID}" in ran.stdout


def test_a_failed_push_is_one_line_and_loses_nothing(tmp_path, tiny_bert, corpus, fake_senteval, monkeypatch):
    hub = FakeHub(error=RuntimeError("403 Forbidden: you cannot write to me/secret"))
    out = tmp_path / "out"
    ran = train_with_hub(monkeypatch, hub, tiny_bert, corpus, fake_senteval, out, *SHORT, "--push_to_hub", "me/secret",
                         "--hub_private")
    assert ran.returncode == 3
    errors = [line for line in ran.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: --push_to_hub me/secret: the upload failed")
    assert "403 Forbidden" in errors[0] and f"`hf upload me/secret {out / 'best'} . --private`" in errors[0]
    assert hub.created == [{"repo_id": "me/secret", "private": True, "exist_ok": True}]
    assert json.loads((out / "summary.json").read_text())["status"] == "finished"
    assert (out / "best" / "model.safetensors").is_file() and (out / "best" / "README.md").is_file()


def test_without_a_token_the_push_asks_for_one_before_any_request(tmp_path, monkeypatch):
    import huggingface_hub

    from utils.model_card import push_folder, token_note

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda: pytest.fail("no request without a token"))
    url, problem = push_folder(str(tmp_path), REPO_ID)
    assert url is None and "no Hugging Face token (set HF_TOKEN or run `hf auth login`)" in problem
    assert f"`hf upload {REPO_ID} {tmp_path} .`" in problem and "\n" not in problem
    assert "no Hugging Face token found" in token_note(REPO_ID, str(tmp_path))  # said at the start too
    assert token_note(None, str(tmp_path)) is None


@pytest.mark.parametrize("extra, message", [
    (("--push_to_hub", "tiny-simcse"), "argument --push_to_hub: 'tiny-simcse' is not OWNER/NAME"),
    (("--push_to_hub", "me/tiny simcse"), "argument --push_to_hub: Repo id must use alphanumeric chars"),
    (("--hub_private",), "argument --hub_private: only with --push_to_hub"),
])
def test_a_repo_name_the_hub_cannot_take_is_refused_before_any_model_loads(tmp_path, corpus, fake_senteval, extra,
                                                                          message):
    import train

    ran = run_in_process(train.main, train_argv(tmp_path / "no-model", corpus, fake_senteval, tmp_path / "out", *extra))
    assert ran.returncode == 2 and message in ran.stderr, ran.stderr[-2000:]
    assert not (tmp_path / "out").exists()


def test_a_resume_may_add_or_change_the_push():
    from utils.run_folder import compare_args

    saved = {"learning_rate": 3e-5, "push_to_hub": None, "hub_private": False}
    assert compare_args(saved, {**saved, "push_to_hub": REPO_ID, "hub_private": True})[0] == {}
