"""SimCSE's model pieces around a Hugging Face encoder: loading, the training-time MLP head, export.

Vocabulary follows SimCSE's `models.py`: an encoder, a parameter-free pooler (`utils.pooling`) and, for
the `cls` pooler, an `MLPLayer` (Linear + Tanh) on [CLS]. With `mlp_only_train` (the unsupervised
recipe) the MLP is used in training only and evaluation reads the raw [CLS].
"""

import json
import os

import torch
from torch import nn

from utils.pooling import SIMCSE_POOLERS, encoder_outputs, pool


class ModelLoadError(SystemExit):
    """A model that cannot be loaded. Left uncaught it ends the program as SystemExit(message) does (the
    message on stderr, status 1); the scripts catch it and exit 2 with `error: {reason}`, as for any bad
    input, and analyze_rank.py turns it into a note on the one checkpoint."""

    def __init__(self, reason: str):
        super().__init__(f"error: {reason}")
        self.reason = reason


def load_pretrained(name_or_path: str, flag: str = "--model_name_or_path"):
    """(encoder, tokenizer) from a hub name or a local folder, weights in float32.

    Mixed precision is accelerate's job (autocast); weights stay float32 so optimizer updates are exact.
    Raises ModelLoadError naming `name_or_path` (and `flag`) when the config, tokenizer or weights cannot
    be read, or the tokenizer cannot be the model's (checked before the weights are read).
    """
    from safetensors import SafetensorError
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    try:
        config = AutoConfig.from_pretrained(name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, flag, err) from None
    check_tokenizer_fits(tokenizer, config, name_or_path, flag)
    try:
        encoder = AutoModel.from_pretrained(name_or_path, config=config, dtype=torch.float32)
    except (OSError, ValueError) as err:
        raise _load_error(name_or_path, flag, err) from None
    except SafetensorError as err:  # a truncated or corrupted download or copy
        raise ModelLoadError(f"{_bad_safetensors(name_or_path)} ({flag}) cannot be read: {err}; the file is "
                             "truncated or corrupted: copy or download it again") from None
    return encoder, tokenizer


def _load_error(name_or_path, flag, err) -> ModelLoadError:
    reason = " ".join(str(err).split()).rstrip(".")  # one line: transformers' messages run over several
    return ModelLoadError(f"could not load the model {name_or_path!r} ({flag}): {reason}. Pass a local folder "
                          "holding config.json, the weights and the tokenizer, or a hub name on a machine "
                          "that can reach the Hugging Face hub.")


def _bad_safetensors(name_or_path) -> str:
    """The first unreadable *.safetensors file of a local folder (a sharded model has several), else the
    folder or hub name itself."""
    from safetensors import safe_open

    if os.path.isdir(name_or_path):
        for name in sorted(os.listdir(name_or_path)):
            path = os.path.join(name_or_path, name)
            if name.endswith(".safetensors"):
                try:
                    with safe_open(path, "pt"):
                        pass
                except Exception:  # SafetensorError or OSError: this is the culprit either way
                    return path
    return name_or_path


def check_tokenizer_fits(tokenizer, config, name_or_path, flag: str = "--model_name_or_path") -> None:
    """Raise ModelLoadError when `tokenizer` cannot be the one `config`'s model was trained with.

    The input-embedding matrix has a row for every id of the model's own tokenizer, sometimes a few
    more (rounded up to a multiple of 8-128 for speed, or spare rows: T5 32,100 tokens / 32,128 rows,
    OPT 50,265 / 50,272), never twice as many. A folder without tokenizer files makes transformers build
    a tokenizer of its 5 special tokens against a 30,522-row BERT: every word becomes [UNK], and
    training "works" to garbage. So fewer tokens than half the rows means a missing or foreign tokenizer;
    more tokens than rows means ids with no embedding (an index error at the first such token).
    """
    rows = getattr(config, "vocab_size", None)
    if not rows:
        return
    tokens = len(tokenizer)
    if tokens < rows / 2 or tokens > rows:
        raise ModelLoadError(
            f"{name_or_path} ({flag}): its tokenizer has {tokens} tokens but the model embeds {rows}: "
            + ("the tokenizer files (tokenizer.json, vocab.txt, ...) are missing or belong to another model; "
               "copy them from the model this one was trained from" if tokens < rows / 2 else
               "ids beyond the embedding matrix cannot be encoded; use the tokenizer this model was trained with"))


class MLPLayer(nn.Module):
    """SimCSE's head over [CLS]: Linear(H, H) + Tanh, the same shape as BERT's own pooler."""

    def __init__(self, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()
        # SimCSE's MLP gets the encoder's initializer (normal, std = initializer_range), bias zero.
        nn.init.normal_(self.dense.weight, std=init_std)
        nn.init.zeros_(self.dense.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(features))


class SimCSEModel(nn.Module):
    """Encoder + pooler (+ MLP for `cls`): tokenized batch -> (B, H) sentence embeddings.

    In `train()` mode the `cls` pooler goes through the MLP; in `eval()` mode it does so only when
    `mlp_only_train` is off. `eval_pooler` names the `utils.pooling` pooler that reproduces the
    evaluation embedding on the exported checkpoint.
    """

    def __init__(self, encoder: nn.Module, pooler_type: str = "cls", mlp_only_train: bool = True,
                 unpad: bool = False):
        super().__init__()
        self.unpad = unpad  # utils.unpad's padding-free forward (train.py --unpad_inputs)
        if pooler_type not in SIMCSE_POOLERS:
            raise ValueError(f"unknown pooler {pooler_type!r}; choose one of {', '.join(SIMCSE_POOLERS)}")
        self.pooler_type = pooler_type
        self.mlp_only_train = mlp_only_train
        self.encoder = encoder
        # The encoder's own pooler takes no part in SimCSE (no gradient would reach it, which DDP rejects).
        # Keep it outside the module tree: the export puts it back, or SimCSE's MLP in its place.
        self._hf_pooler = [getattr(encoder, "pooler", None)]
        if self._hf_pooler[0] is not None:
            encoder.pooler = None
        # how a method other than SimCSE reads its exports (utils.methods: PromptBERT's prompt and [MASK] state)
        self.sentence_embedding = {}
        init_std = getattr(encoder.config, "initializer_range", 0.02)
        self.mlp = MLPLayer(encoder.config.hidden_size, init_std) if pooler_type == "cls" else None

    @property
    def eval_pooler(self) -> str:
        if self.sentence_embedding.get("pooler"):
            return self.sentence_embedding["pooler"]
        if self.pooler_type == "cls" and self.mlp_only_train:
            return "cls_before_pooler"
        return self.pooler_type

    def forward(self, input_ids, attention_mask, return_pooled: bool = False, **inputs):
        """(B, H) embeddings; with `return_pooled`, also the pooled encoder output before the MLP."""
        outputs = encoder_outputs(self.encoder, self.pooler_type, input_ids, attention_mask, self.unpad, **inputs)
        if self.mlp is None:
            z = pooled = pool(self.pooler_type, attention_mask, outputs)
        else:
            pooled = pool("cls_before_pooler", attention_mask, outputs)
            z = self.mlp(pooled) if (self.training or not self.mlp_only_train) else pooled
        return (z, pooled) if return_pooled else z

    def save_pretrained(self, out_dir: str, tokenizer, max_seq_length: int) -> None:
        """Write a folder that `AutoModel.from_pretrained` and `SentenceTransformer` both load.

        The training-only MLP is dropped; an MLP used at evaluation becomes the encoder's pooler (as
        SimCSE's `simcse_to_huggingface.py` does) and a sentence-transformers Dense layer.
        """
        encoder, hf_pooler = self.encoder, self._hf_pooler[0]
        use_mlp = self.eval_pooler == "cls"
        if hf_pooler is not None:
            hf_pooler = hf_pooler.to(next(encoder.parameters()).device)
            if use_mlp:
                hf_pooler.dense.load_state_dict(self.mlp.dense.state_dict())
        encoder.pooler = hf_pooler
        encoder.config.sentence_pooler = self.eval_pooler  # read back by evaluate.py's default --pooler
        if self.sentence_embedding:  # the template and its rules, read back by evaluate.py and analyze_rank.py
            encoder.config.sentence_embedding = self.sentence_embedding
        try:
            encoder.save_pretrained(out_dir)
        finally:
            if hf_pooler is not None:
                encoder.pooler = None
        tokenizer.save_pretrained(out_dir)
        write_sentence_transformers_files(out_dir, self.eval_pooler, encoder.config.hidden_size,
                                          max_seq_length, self.mlp if use_mlp else None)


# what SentenceTransformer(folder) fails to import, with this name in its error, where it cannot express the embedding
NOT_EXPRESSIBLE = "sentence_transformers.models.NotExpressible__read_this_checkpoint_with_evaluate_py__see_README_md"


def write_sentence_transformers_files(out_dir, eval_pooler, hidden_size, max_seq_length, mlp=None):
    """modules.json + 1_Pooling (+ 2_Dense for an MLP), sentence_bert_config.json and
    config_sentence_transformers.json in sentence-transformers' long-standing layout.

    sentence-transformers has no pooler for SimCSE's `avg_first_last` / `avg_top2`, nor for PromptBERT's
    [MASK] state of a prompt (`mask`). Without a modules.json it would mean-pool such a checkpoint with
    nothing but an INFO line, so theirs names a module that does not exist: loading fails, saying why.
    """
    modes = {"cls": "cls_token", "cls_before_pooler": "cls_token", "avg": "mean_tokens"}
    if eval_pooler not in modes:
        _write_json(os.path.join(out_dir, "modules.json"), [{"idx": 0, "name": "0", "path": "", "type": NOT_EXPRESSIBLE}])
        return
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    pooling = {"word_embedding_dimension": hidden_size}
    for mode in ("cls_token", "mean_tokens", "max_tokens", "mean_sqrt_len_tokens"):
        pooling[f"pooling_mode_{mode}"] = mode == modes[eval_pooler]
    _write_json(os.path.join(out_dir, "1_Pooling", "config.json"), pooling)
    if mlp is not None:
        from safetensors.torch import save_file

        modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        _write_json(os.path.join(out_dir, "2_Dense", "config.json"), {
            "in_features": hidden_size, "out_features": hidden_size, "bias": True,
            "activation_function": "torch.nn.modules.activation.Tanh",
        })
        weights = {f"linear.{k}": v.detach().float().cpu().contiguous() for k, v in mlp.dense.state_dict().items()}
        save_file(weights, os.path.join(out_dir, "2_Dense", "model.safetensors"))
    _write_json(os.path.join(out_dir, "modules.json"), modules)
    _write_json(os.path.join(out_dir, "sentence_bert_config.json"),
                {"max_seq_length": max_seq_length, "do_lower_case": False})
    _write_json(os.path.join(out_dir, "config_sentence_transformers.json"), sentence_transformers_config())


def sentence_transformers_config() -> dict:
    """config_sentence_transformers.json as sentence-transformers writes it: the versions the export was written
    with (sentence-transformers' own left out: it did not write it), no prompts, cosine similarity (what the
    contrastive loss trained)."""
    import transformers

    return {"model_type": "SentenceTransformer",
            "__version__": {"transformers": transformers.__version__, "pytorch": torch.__version__},
            "prompts": {}, "default_prompt_name": None, "similarity_fn_name": "cosine"}


def _write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2)
