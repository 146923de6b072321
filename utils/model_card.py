"""What an encoder export says about itself (README.md, a Hugging Face model card), and its upload to the Hub.

`model_card` writes the card of an export (best/, checkpoints/step-NNNNNN/, peak/) from what the run recorded:
Hub front matter (library_name, tags, pipeline_tag, base_model, datasets), the base model, the method and the flags that
steered the training, the seed, the step and its scores, Rank Reduction's settings, the library versions, and
how to read the embedding in transformers and sentence-transformers as the export's config.json and
modules.json record it (PromptBERT: its prompt and [MASK] state). The outcome, the rank peak and the phases
are known at the end of the run only: best/'s card is written again then, with summary.json. A fact the run
has not recorded is left out.

`push_folder` uploads best/ for `train.py --push_to_hub OWNER/NAME`, with the token huggingface_hub finds
(HF_TOKEN, or the one `hf auth login` saved).
"""

import json
import os

from utils.embedding import read_embedding
from utils.files import write_text_atomic
from utils.methods import METHODS
from utils.model import NOT_EXPRESSIBLE
from utils.pooling import needs_hidden_states
from utils.prompt import SENTENCE_ENDS

CARD = "README.md"
# the run's files: the card names them (their file name), the flags table does not repeat them
FILE_FLAGS = ("model_name_or_path", "train_file", "eval_data_dir", "dev_file", "probe_file")

EMBEDDINGS = {  # what each recorded pooler reads, in words
    "cls": "the [CLS] token's last hidden state through the MLP trained with it (saved as the encoder's pooler layer)",
    "cls_before_pooler": "the [CLS] token's last hidden state",
    "avg": "the mean of the last layer's states over the sentence's tokens",
    "avg_first_last": "the mean over the sentence's tokens of the first and the last layer's states, averaged",
    "avg_top2": "the mean over the sentence's tokens of the last two layers' states, averaged",
    "mask": "the last hidden state of the [MASK] token, with the sentence put in a text prompt",
}
MEAN = ('mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)\n'
        "embeddings = (hidden * mask).sum(1) / mask.sum(1)")
POOLING_CODE = {
    "cls": "embeddings = outputs.pooler_output",
    "cls_before_pooler": "embeddings = outputs.last_hidden_state[:, 0]",
    "avg": f"hidden = outputs.last_hidden_state\n{MEAN}",
    "avg_first_last": f"hidden = (outputs.hidden_states[1] + outputs.hidden_states[-1]) / 2\n{MEAN}",
    "avg_top2": f"hidden = (outputs.hidden_states[-2] + outputs.hidden_states[-1]) / 2\n{MEAN}",
    "mask": 'embeddings = outputs.last_hidden_state[batch["input_ids"] == tokenizer.mask_token_id]  # one per row',
}
SENTENCES = 'sentences = ["A man is playing a guitar.", "Two dogs run in the park"]'


# ----------------------------------------------------------------------------- the Hub's names


def repo_problem(repo_id: str | None, private: bool) -> str | None:
    """What is wrong with --push_to_hub / --hub_private, named by flag (before any model loads)."""
    if repo_id is None:
        return "argument --hub_private: only with --push_to_hub" if private else None
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if repo_id.count("/") != 1:  # the card's loading code names the repo: its owner must be known now
        return f"argument --push_to_hub: {repo_id!r} is not OWNER/NAME (a Hub model repo, e.g. your-name/simcse-bert)"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return f"argument --push_to_hub: {err}"
    return None


def hub_name(name_or_path: str) -> str | None:
    """The Hub id a run read (its model, its training text), or None for a local file or folder (the Hub
    rejects a base_model it does not hold, so a folder's name is never passed off as one)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if os.path.exists(name_or_path):
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


# ----------------------------------------------------------------------------- the card


def _value(v) -> str:
    return ("on" if v else "off") if isinstance(v, bool) else str(v)


def _table(rows, head: str = "| | |") -> list[str]:
    return [head, "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _front_matter(args: dict, expressible: bool) -> str:
    from huggingface_hub import ModelCardData

    tags = ["sentence-transformers", "sentence-similarity"] if expressible else []
    tags += ["feature-extraction", args["method"]] + (["rank-reduction"] if args.get("rank_reduction") else [])
    data = ModelCardData(library_name="sentence-transformers" if expressible else "transformers",
                         base_model=hub_name(args["model_name_or_path"]), tags=tags,
                         datasets=[hub_name(args["train_file"])] if hub_name(args["train_file"]) else None,
                         pipeline_tag="sentence-similarity" if expressible else "feature-extraction")
    return f"---\n{data.to_yaml()}\n---\n"


def _dev_label(args: dict) -> str:
    return f"`{os.path.basename(args['dev_file'])}` dev pairs" if args.get("dev_file") else "STS-B dev"


def _named(name_or_path: str, hub_url: str) -> str:
    """A Hub id as a link, a local file or folder by its name (its path is the machine's business)."""
    hub = hub_name(name_or_path)
    if hub:
        return f"[{hub}](https://huggingface.co/{hub_url}{hub})"
    return f"`{os.path.basename(os.path.normpath(name_or_path))}` (local)"


def _scores(args: dict, record: dict) -> list[str]:
    if "stsb_dev" not in record:
        return []
    rows = [(f"{_dev_label(args)} (Spearman × 100)", f"{record['stsb_dev']:.2f}")]
    if record.get("sickr_dev") is not None:
        rows.append(("SICK-R trial (Spearman × 100)", f"{record['sickr_dev']:.2f}"))
    metric = args.get("phase_metric")
    if record.get(metric) is not None:
        rows.append((f"`{metric}` of the probe set (the sentences the rank is measured on)", f"{record[metric]:.4g}"))
    return ["", f"## Scores at step {record['step']}", "", *_table(rows)]


def _training(args: dict, flags: dict, summary: dict | None) -> list[str]:
    method = METHODS[args["method"]]
    rows = [("method", f"{method.label} (`--method {method.name}`)"),
            ("base model", _named(args["model_name_or_path"], "")),
            ("training text", _named(args["train_file"], "datasets/")), ("seed", args["seed"])]
    if summary:
        rows += [("steps trained", f"{summary['steps']} of {summary['total_steps']} ({summary['status']})"),
                 ("batch", f"{summary['global_batch_size']} sentences per step ({summary['num_processes']} "
                           f"process(es) × {args['per_device_train_batch_size']})")]
    differs = [f"`--{k} {_value(args[k])}` (the recipe's: {_value(v)})" for k, v in method.recipe.items()
               if args.get(k) != v]
    recipe = "follows it" if not differs else "differs in " + ", ".join(differs)
    shown = {"method", "seed", *FILE_FLAGS}
    flag_rows = [(f"`--{k}`", _value(v)) for k, v in flags.items()
                 if v is not None and k not in shown and k != "rank_reduction" and not k.startswith("rr_")]
    return ["", "## Training", "", *_table(rows), "",
            f"{method.label}'s published recipe sets the batch, the learning rate, the epochs and where its MLP is "
            f"used; this run {recipe}. The `train.py` flags that steered the training:", "",
            *_table(flag_rows, "| flag | value |")]


def _rank(summary: dict | None) -> list[str]:
    if not summary:
        return []
    rank = summary["rank"]
    lines = ["", "## Rank and phases", "",
             f"The rank of the probe set's embeddings (`{rank['phase_metric']}`) through training: "
             f"{rank['offline_peak']['description']}."]
    for name, phase in (("Phase 1 (the rank rises to its peak)", rank.get("phase1")),
                        ("Phase 2 (from the peak to the best checkpoint)", rank.get("phase2"))):
        if phase:
            lines.append(f"- {name}: " + (phase["absent"] if "absent" in phase else
                                           f"steps {phase['start_step']} to {phase['end_step']}"))
    if rank.get("online_peak"):
        lines.append(f"- declared during training at step {rank['online_peak']['declared_at_step']} "
                     f"(the peak at step {rank['online_peak']['step']})")
    return lines


def _rank_reduction(flags: dict) -> list[str]:
    if not flags.get("rank_reduction"):
        return ["", "## Rank Reduction", "", "Not used (`--rank-reduction 0`)."]
    rows = [(f"`--{k}`", _value(v)) for k, v in flags.items()
            if (k == "rank_reduction" or k.startswith("rr_")) and v is not None]
    return ["", "## Rank Reduction", "",
            "The loss adds λ · the von Neumann entropy of the batch embeddings (λ = `--rank-reduction`):", "",
            *_table(rows, "| flag | value |")]


def _transformers_code(model_id: str, embedding) -> str:
    lines = ["import torch", "from transformers import AutoModel, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{model_id}")',
             f'model = AutoModel.from_pretrained("{model_id}").eval()', SENTENCES]
    texts = "sentences"
    if embedding.period:
        lines.append(f"sentences = [s if not s or s[-1] in {SENTENCE_ENDS!r} else s + '.' for s in sentences]"
                     "  # a '.' where none ends it")
    if embedding.template:
        texts = "texts"
        lines += [f"template = {embedding.template!r}",
                  'texts = [template.replace("{mask}", tokenizer.mask_token).replace("{sentence}", s) '
                  "for s in sentences]"]
    truncation = "" if embedding.template else ", truncation=True"  # a cut prompt would lose its [MASK]
    layers = ", output_hidden_states=True" if needs_hidden_states(embedding.pooler) else ""
    lines += [f'batch = tokenizer({texts}, padding=True{truncation}, return_tensors="pt")', "with torch.no_grad():",
              f"    outputs = model(**batch{layers})", POOLING_CODE[embedding.pooler]]
    return "\n".join(lines)


def _usage(model_id: str, config: dict, expressible: bool, dev_label: str) -> list[str]:
    embedding, _ = read_embedding(config, "test")
    dev, _ = read_embedding(config, "dev")
    lines = ["", "## Usage", "", f"The sentence embedding is {EMBEDDINGS[embedding.pooler]}"
             + (f" ({embedding.describe()})" if embedding.describe() else "") + "; compare two with cosine similarity."]
    if dev != embedding:
        lines += ["", f"The {dev_label} score above is of the embedding training selected this checkpoint by "
                      f"({dev.describe()}; `evaluate.py --embedding dev` reads it); the code below gives the "
                      "test embedding, which `evaluate.py` reads by default."]
    if expressible:
        lines += ["", "With sentence-transformers:", "", "```python",
                  "from sentence_transformers import SentenceTransformer", "",
                  f'model = SentenceTransformer("{model_id}")', SENTENCES, "embeddings = model.encode(sentences)",
                  "print(model.similarity(embeddings, embeddings))", "```"]
    else:
        lines += ["", "sentence-transformers cannot express this embedding: `SentenceTransformer` refuses to load "
                      "the model (its modules.json names a module that does not exist) rather than pool it wrongly."]
    return lines + ["", "With transformers:", "", "```python", _transformers_code(model_id, embedding), "```"]


def model_card(export_dir: str, kind: str, record: dict, args: dict, flags: dict, versions: dict,
               model_id: str, summary: dict | None = None) -> str:
    """README.md of the export in `export_dir` (its config.json and modules.json written): `kind` "best",
    "checkpoint" or "peak"; `record` its step (and scores, where the export has them); `args` the run's
    arguments, `flags` those that steered the training (utils.run_folder.training_flags); `versions` the
    libraries it was written with; `model_id` the name its loading code uses (a Hub repo or the folder);
    `summary`: summary.json, where the run has ended."""
    with open(os.path.join(export_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(export_dir, "modules.json")) as f:  # every export writes one (utils/model.py)
        expressible = NOT_EXPRESSIBLE not in f.read()
    method = METHODS[args["method"]]
    step = record["step"]
    title = (f"{method.label}{' with Rank Reduction' if args.get('rank_reduction') else ''}, "
             f"from {_named(args['model_name_or_path'], '')}")
    what = {"best": f"the checkpoint of the run's best {_dev_label(args)} score, at step {step} (`best/`)",
            "checkpoint": f"the encoder at step {step} (an export of `--save_steps`)",
            "peak": f"the encoder at the rank peak, step {step} (`peak/`)"}[kind]
    lines = [f"# {title}", "",
             f"Sentence embeddings fine-tuned with unsupervised {method.label} by `train.py` of simcse-rank: {what}."]
    lines += _scores(args, record) + _training(args, flags, summary) + _rank(summary) + _rank_reduction(flags)
    lines += _usage(model_id, config, expressible, _dev_label(args))
    lines += ["", "## Framework versions", "", *(f"- {name}: {version}" for name, version in versions.items())]
    return _front_matter(args, expressible) + "\n".join(lines) + "\n"


def write_model_card(export_dir: str, *args, **kwargs) -> None:
    """`model_card(export_dir, ...)` written to export_dir/README.md."""
    write_text_atomic(os.path.join(export_dir, CARD), model_card(export_dir, *args, **kwargs))


# ----------------------------------------------------------------------------- the upload


def token_note(repo_id: str | None, folder: str) -> str | None:
    """A note at the start of a run that will push (`repo_id`) without a token (one saved later still counts)."""
    from huggingface_hub import get_token

    if repo_id is None:
        return None
    try:
        if get_token():
            return None
    except Exception as err:  # a token exchange that fails (HF_OIDC_RESOURCE) is the same news
        return f"note: --push_to_hub {repo_id}: no Hugging Face token ({type(err).__name__}: {err})"
    return (f"note: --push_to_hub {repo_id}: no Hugging Face token found (HF_TOKEN, or `hf auth login`): log in "
            f"before the run ends, or upload {folder} afterwards")


def push_folder(folder: str, repo_id: str, private: bool = False) -> tuple[str | None, str | None]:
    """Upload `folder` to the Hub model repo `repo_id` (created where missing; private with `private`, else
    the Hub's default for its owner). Returns (its URL, None), or (None, the reason in one line, with how to
    upload the folder later): nothing local is touched either way."""
    from huggingface_hub import HfApi, get_token

    later = (f"the model is complete in {folder}; upload it later with "
             f"`hf upload {repo_id} {folder} .{' --private' if private else ''}`")
    try:
        if not get_token():
            return None, (f"--push_to_hub {repo_id}: no Hugging Face token (set HF_TOKEN or run `hf auth login`); "
                          f"{later}")
        api = HfApi()
        url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload best/ from train.py")
    except Exception as err:  # refused, offline, a bad token: the run is complete, only the upload is missing
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        return None, f"--push_to_hub {repo_id}: the upload failed ({type(err).__name__}: {reason}); {later}"
    return str(url), None
