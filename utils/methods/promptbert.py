"""PromptBERT (Jiang et al., EMNLP 2022): the [MASK] state of a prompt template, with the template denoised.

- Data: view 1 puts each sentence in template 1, view 2 in template 2 (`This sentence of "{sentence}" means
  {mask}.`, `This sentence : "{sentence}" means {mask}.`): rows [CLS] + prefix + sentence + suffix + [SEP],
  the template's text before and after the sentence tokenized on its own, the sentence as the batch has it;
  no period added in training.
- Embedding: h = the last hidden state at each row's [MASK].
- Template denoising (every step, with gradient, in the current mode): each template's empty form
  [CLS] prefix suffix [SEP] is encoded K = max_seq_length + 1 times, copy k with every position from the
  sentence slot on shifted by k, as a k-token sentence would place them; delta_t[k] is its [MASK] state,
  what the template alone puts there at that length. A row with n sentence tokens subtracts delta_t[n].
- Loss: InfoNCE (z1 rows against z2) over z = MLP(h - delta), the MLP in training only.
- Evaluation: the dev selection in training reads template 1's [MASK] minus delta (eval mode, no MLP;
  `dev_embedder`); the exported checkpoint is read as the published test numbers are, with text template 1,
  a '.' added to a sentence that ends without one, and the raw [MASK] state (`eval_embedding`).
"""

import argparse
import functools
import inspect
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from utils.encode import apply_template, pad_batch, split_template, template_problem
from utils.loss import contrastive_loss
from utils.methods.base import Method, Output
from utils.pooling import encoder_outputs, gather_rows, mask_positions, position_start

TEMPLATE_FLAGS = ("--prompt_template1", "--prompt_template2")


class Template(NamedTuple):
    """A template's token ids around the sentence ([CLS] and [SEP] not included)."""

    prefix: list
    suffix: list
    mask_at: int  # index of the [MASK] in prefix + suffix

    @property
    def length(self) -> int:
        """Tokens the template adds to a sentence, [CLS] and [SEP] included."""
        return len(self.prefix) + len(self.suffix) + 2

    @property
    def mask_after_sentence(self) -> bool:
        return self.mask_at >= len(self.prefix)


def tokenize_template(tokenizer, template: str) -> Template:
    """The ids of the text before and after {sentence} ({mask} -> the mask token), each tokenized alone
    without special tokens. ValueError unless they hold exactly one mask token."""
    before, after = split_template(template, tokenizer.mask_token)
    prefix = tokenizer(before, add_special_tokens=False)["input_ids"]
    suffix = tokenizer(after, add_special_tokens=False)["input_ids"]
    hits = [i for i, t in enumerate(prefix + suffix) if t == tokenizer.mask_token_id]
    if len(hits) != 1:
        raise ValueError(f"template {template!r} tokenizes to {len(hits)} mask tokens, not one")
    return Template(prefix, suffix, hits[0])


def empty_template_inputs(templates, copies: int, cls_id: int, sep_id: int, pad_id: int, start: int = 0):
    """The denoising batch: for each template, `copies` rows of its empty form [CLS] prefix suffix [SEP],
    copy k with positions start + j, plus k from the sentence slot (column 1 + len(prefix)) on.

    Returns ({"input_ids", "attention_mask", "position_ids"} (len(templates) * copies, T) right-padded to
    the longest template, (len(templates) * copies,) the [MASK] column of each row); rows template-major.
    """
    columns = {"input_ids": [], "attention_mask": [], "position_ids": []}
    mask_columns = []
    for t in templates:
        row = [cls_id] + t.prefix + t.suffix + [sep_id]
        slot = 1 + len(t.prefix)
        for k in range(copies):
            columns["input_ids"].append(row)
            columns["attention_mask"].append([1] * len(row))
            columns["position_ids"].append([start + j + (k if j >= slot else 0) for j in range(len(row))])
            mask_columns.append(1 + t.mask_at)
    batch = pad_batch(columns, np.arange(len(mask_columns)), pad_id)  # padded positions 0: masked anyway
    return batch, torch.tensor(mask_columns)


def template_deltas(encoder, inputs: dict, mask_columns: torch.Tensor, templates: int) -> torch.Tensor:
    """(templates, K, H): the [MASK] states of `empty_template_inputs`' rows, through the encoder's ordinary
    forward (the padding-free one computes its own positions), with gradient, in the encoder's mode."""
    device = next(encoder.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    outputs = encoder_outputs(encoder, "cls_before_pooler", inputs.pop("input_ids"), inputs.pop("attention_mask"),
                              False, **inputs)
    states = gather_rows(outputs.last_hidden_state, mask_columns)
    return states.view(templates, -1, states.shape[-1])


def sentence_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_id: int, sep_id: int) -> list:
    """(B, L) rows [CLS] s [SEP] (any padding) -> B lists of the sentence ids s."""
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        real = [t for t, m in zip(ids, mask) if m]
        if len(real) < 2 or real[0] != cls_id or real[-1] != sep_id:
            raise ValueError("promptbert: the batch rows must be tokenized with special tokens, [CLS] s [SEP]")
        rows.append(real[1:-1])
    return rows


class PromptDevEmbedder(nn.Module):
    """Template 1's [MASK] state minus its delta for the row's sentence length: the embedding the authors'
    STS-B dev selection reads. Called as module(input_ids=, attention_mask=, [token_type_ids=]) on
    sentences put in template 1 (the text template, no period) -> (B, H)."""

    def __init__(self, encoder, delta: torch.Tensor, template_length: int, mask_token_id: int, unpad: bool = False):
        super().__init__()
        self.encoder = encoder
        self.register_buffer("delta", delta, persistent=False)  # (K, H), K = every length the positions allow
        self.template_length = template_length
        self.mask_token_id = mask_token_id
        self.unpad = unpad
        self.train(encoder.training)  # utils.encode.encode restores this mode: leave the encoder's as it was

    def forward(self, input_ids, attention_mask, **inputs) -> torch.Tensor:
        outputs = encoder_outputs(self.encoder, "cls_before_pooler", input_ids, attention_mask, self.unpad, **inputs)
        h = gather_rows(outputs.last_hidden_state, mask_positions(input_ids, self.mask_token_id))
        # the sentence's length in tokens, as the authors count it: the row's tokens less the template's
        n = (attention_mask.sum(1) - self.template_length).clamp(0, self.delta.shape[0] - 1)
        return h - self.delta[n]


class PromptBERT(Method):
    name, label = "promptbert", "PromptBERT"
    rr_default = "mlp"
    flags = (
        ("--prompt_template1", dict(default='This sentence of "{sentence}" means {mask}.',
                                    help="promptbert: view 1's template, also the one the export is evaluated "
                                         "with; {sentence}: the sentence, {mask}: the [MASK] whose state is "
                                         "the embedding")),
        ("--prompt_template2", dict(default='This sentence : "{sentence}" means {mask}.',
                                    help="promptbert: view 2's template ({sentence}, {mask} as in the first)")),
        ("--prompt_denoise", dict(action=argparse.BooleanOptionalAction, default=True,
                                  help="promptbert: subtract each template's [MASK] state without the sentence "
                                       "(template denoising, with gradient)")),
    )
    # the authors' run.sh unsup-bert
    recipe = {**Method.recipe, "per_device_train_batch_size": 256, "learning_rate": 1e-5, "mlp_only_train": True}

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__(args, model, tokenizer, steps_per_epoch)
        self.template_texts = (args.prompt_template1, args.prompt_template2)
        self.templates = tuple(tokenize_template(tokenizer, t) for t in self.template_texts)
        self.denoise = args.prompt_denoise
        self.mask_token, self.mask_token_id = tokenizer.mask_token, tokenizer.mask_token_id
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoder = model.encoder
        self.start = position_start(encoder)
        self.max_copies = (encoder.config.max_position_embeddings - self.start
                           - max(t.length for t in self.templates) + 1)  # copies whose positions all exist
        if self.max_copies < 1:
            raise ValueError(f"promptbert: the templates are longer than the encoder's "
                             f"{encoder.config.max_position_embeddings} positions")
        # k = 0 .. max_seq_length: every sentence length a batch can hold (the authors encode 50 copies)
        self.copies = min(args.max_seq_length + 1, self.max_copies)
        if self.denoise and "position_ids" not in inspect.signature(encoder.forward).parameters:
            raise ValueError(f"--prompt_denoise: {type(encoder).__name__} takes no position_ids, which the "
                             "denoising shifts; use --no-prompt_denoise")
        self.denoise_inputs = empty_template_inputs(self.templates, self.copies, self.cls_id, self.sep_id,
                                                    self.pad_id, self.start)

    @classmethod
    def check_args(cls, args):
        for flag in TEMPLATE_FLAGS:
            problem = template_problem(getattr(args, flag[2:]))
            if problem:
                return f"argument {flag}: {problem}"
        return None

    @classmethod
    def check_tokenizer(cls, tokenizer, args):
        for token in ("mask", "cls", "sep"):
            if getattr(tokenizer, f"{token}_token_id", None) is None:
                return (f"--model_name_or_path: PromptBERT needs a tokenizer with a {token} token (an MLM-pretrained "
                        f"encoder's, e.g. BERT's [MASK], [CLS], [SEP]); this one has none")
        for flag in TEMPLATE_FLAGS:
            try:
                tokenize_template(tokenizer, getattr(args, flag[2:]))
            except ValueError as err:
                return f"argument {flag}: {err} (with this --model_name_or_path's tokenizer)"
        return None

    def views(self, batch, step):
        """Rows 0..B-1: template 1, rows B..2B-1: template 2, right-padded to one length; "sentence_lengths"
        (2B,) the sentence tokens n of each row (its delta)."""
        sentences = sentence_ids(batch["input_ids"], batch["attention_mask"], self.cls_id, self.sep_id)
        longest = max(len(s) for s in sentences)
        if longest >= self.copies:
            raise ValueError(f"promptbert: a sentence of {longest} tokens in a template outruns the encoder's "
                             f"positions or --max_seq_length (at most {self.copies - 1})")
        rows = [[self.cls_id] + t.prefix + s + t.suffix + [self.sep_id] for t in self.templates for s in sentences]
        columns = {"input_ids": rows, "attention_mask": [[1] * len(r) for r in rows]}
        if "token_type_ids" in batch:
            columns["token_type_ids"] = [[0] * len(r) for r in rows]
        inputs = pad_batch(columns, np.arange(len(rows)), self.pad_id)
        inputs["sentence_lengths"] = torch.tensor([len(s) for s in sentences] * len(self.templates))
        return inputs

    def mask_columns(self, lengths: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
        """(N,) sentence lengths and template indices -> (N,) the [MASK]'s column in each `views` row."""
        at = torch.tensor([t.mask_at for t in self.templates], device=lengths.device)[template]
        after = torch.tensor([t.mask_after_sentence for t in self.templates], device=lengths.device)[template]
        return 1 + at + lengths * after

    def deltas(self, encoder) -> torch.Tensor:
        """(2, K, H) delta_t[k] for both templates, k = 0 .. K-1: one encoder call, with gradient."""
        inputs, mask_columns = self.denoise_inputs
        return template_deltas(encoder, inputs, mask_columns, len(self.templates))

    def forward(self, model, inputs, temp):
        inputs = dict(inputs)
        lengths = inputs.pop("sentence_lengths")
        input_ids, attention_mask = inputs.pop("input_ids"), inputs.pop("attention_mask")
        outputs = encoder_outputs(model.encoder, "cls_before_pooler", input_ids, attention_mask, model.unpad, **inputs)
        lengths = lengths.to(input_ids.device)
        template = torch.arange(len(lengths), device=lengths.device) // (len(lengths) // len(self.templates))
        h = gather_rows(outputs.last_hidden_state, self.mask_columns(lengths, template))
        pooled = h - self.deltas(model.encoder)[template, lengths] if self.denoise else h
        z = model.mlp(pooled) if model.mlp is not None and model.training else pooled  # the MLP: training only
        z1, z2 = z.chunk(2)
        return Output(contrastive_loss(z1, z2, temp), z, pooled)

    @torch.no_grad()
    def dev_embedder(self, model):
        """(PromptDevEmbedder, template 1 formatter) for the weights as they are now: the delta is computed
        here, once, in eval mode, for every sentence length the positions allow (dev sentences run longer
        than training's); call this at each evaluation."""
        encoder, template = model.encoder, self.templates[0]
        was_training = encoder.training
        encoder.eval()
        try:
            copies = encoder.config.max_position_embeddings - self.start - template.length + 1
            inputs, mask_columns = empty_template_inputs([template], copies, self.cls_id, self.sep_id,
                                                         self.pad_id, self.start)
            delta = template_deltas(encoder, inputs, mask_columns, 1)[0] if self.denoise \
                else torch.zeros(1, encoder.config.hidden_size, device=next(encoder.parameters()).device)
        finally:
            encoder.train(was_training)
        module = PromptDevEmbedder(encoder, delta, template.length, self.mask_token_id, model.unpad)
        return module, functools.partial(apply_template, template=self.template_texts[0], mask_token=self.mask_token)

    def eval_embedding(self):
        """The published test embedding: text template 1, the '.' rule, the raw [MASK] state."""
        return {"pooler": "mask", "template": self.template_texts[0], "period": True}
