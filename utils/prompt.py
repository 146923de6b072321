"""Prompt templates (PromptBERT, Jiang et al. 2022): a sentence put in a text with one [MASK], whose last
hidden state is the sentence's embedding, and the template-denoised form of that state.

- Text form (`apply_template`): `This sentence of "{sentence}" means {mask}.` with the sentence inserted
  as it is, optionally after the '.' rule of PromptBERT's test-time evaluation (`add_period`).
- Token form (`Template`): the ids of the text before and after {sentence}, tokenized on their own.
- Denoising: each template's empty form [CLS] prefix suffix [SEP] encoded once per sentence length k, with
  the positions from the sentence slot on shifted by k, as a k-token sentence would place them; delta[k]
  is its [MASK] state, what the template alone puts there. `DenoisedPrompt` subtracts delta[n] from the
  [MASK] state of a row whose sentence has n tokens: the embedding PromptBERT selects checkpoints by.
"""

from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from utils.data import pad_batch
from utils.pooling import encoder_outputs, gather_rows, mask_positions, position_start

# PromptBERT's test-time rule (its evaluation.py; issue #22: worth ~5 points): a '.' ends every sentence
# that ends in none of these
SENTENCE_ENDS = ".?\"'"


def template_problem(template: str, need_mask: bool = True) -> str | None:
    """What is wrong with a text template (placeholders {sentence} and {mask}), or None."""
    if template.count("{sentence}") != 1:
        return f"needs exactly one {{sentence}} (where the sentence goes), got {template!r}"
    if need_mask and template.count("{mask}") != 1:
        return f"needs exactly one {{mask}} (the [MASK] whose state is the embedding), got {template!r}"
    return None


def split_template(template: str, mask_token: str | None) -> tuple[str, str]:
    """The text before and after {sentence}, with {mask} made the tokenizer's `mask_token`."""
    problem = template_problem(template, need_mask=False)
    if problem:
        raise ValueError(f"template {problem}")
    if "{mask}" in template and mask_token is None:
        raise ValueError(f"template {template!r} has a {{mask}} and the tokenizer has no mask token")
    before, after = template.split("{sentence}")
    return before.replace("{mask}", mask_token or ""), after.replace("{mask}", mask_token or "")


def add_period(sentence: str) -> str:
    """The sentence with '.' appended unless it is empty or ends in one of SENTENCE_ENDS."""
    return sentence + "." if sentence and sentence[-1] not in SENTENCE_ENDS else sentence


def apply_template(sentences, template: str | None, mask_token: str | None = None, period: bool = False) -> list:
    """Each sentence put in `template` ({sentence}, {mask} -> `mask_token`), after `add_period` when `period`;
    template None: the sentences themselves (with the period rule). The sentence text is inserted as it is:
    braces in it are never read as placeholders."""
    sentences = [add_period(s) for s in sentences] if period else list(sentences)
    if template is None:
        return sentences
    before, after = split_template(template, mask_token)
    return [before + s + after for s in sentences]


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


def fit_template_rows(tokenized, sentences, template: str, tokenizer, max_length: int) -> None:
    """In place: each row of `tokenized` (the templated sentences, tokenized whole, without truncation) that is
    longer than `max_length` becomes [CLS] prefix sentence suffix [SEP] with the sentence's own tokens cut to
    fit, so the template and its [MASK] stay whole. Rows that fit are left as the tokenizer made them.
    ValueError where the template alone does not fit."""
    long = [i for i, ids in enumerate(tokenized["input_ids"]) if len(ids) > max_length]
    if not long:
        return
    parts = tokenize_template(tokenizer, template)
    room = max_length - parts.length
    if room < 0:
        raise ValueError(f"template {template!r} takes {parts.length} tokens, more than the {max_length} the "
                         "encoder accepts")
    for i in long:
        words = tokenizer(sentences[i], add_special_tokens=False)["input_ids"][:room]
        row = [tokenizer.cls_token_id, *parts.prefix, *words, *parts.suffix, tokenizer.sep_token_id]
        tokenized["input_ids"][i] = row
        tokenized["attention_mask"][i] = [1] * len(row)
        if "token_type_ids" in tokenized:
            tokenized["token_type_ids"][i] = [0] * len(row)


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


class DenoisedPrompt(nn.Module):
    """A template's [MASK] state minus its delta for the row's sentence length: the embedding PromptBERT's
    STS-B dev selection reads. Called as module(input_ids=, attention_mask=, [token_type_ids=]) on sentences
    put in the text template (no '.' rule) -> (B, H)."""

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


@torch.no_grad()
def denoised_prompt(encoder, tokenizer, template: str, denoise: bool = True, unpad: bool = False):
    """A DenoisedPrompt for the encoder's weights as they are now: the delta is computed here once, in eval
    mode, for every sentence length the positions allow (denoise=False: a zero delta). Called as
    module(input_ids=, attention_mask=, ...) on sentences put in the text template (no '.' rule)."""
    tokens = tokenize_template(tokenizer, template)
    start = position_start(encoder)
    was_training = encoder.training
    encoder.eval()
    try:
        copies = encoder.config.max_position_embeddings - start - tokens.length + 1
        if copies < 1:
            raise ValueError(f"template {template!r} is longer than the encoder's "
                             f"{encoder.config.max_position_embeddings} positions")
        inputs, mask_columns = empty_template_inputs([tokens], copies, tokenizer.cls_token_id, tokenizer.sep_token_id,
                                                     tokenizer.pad_token_id or 0, start)
        delta = template_deltas(encoder, inputs, mask_columns, 1)[0] if denoise \
            else torch.zeros(1, encoder.config.hidden_size, device=next(encoder.parameters()).device)
    finally:
        encoder.train(was_training)
    return DenoisedPrompt(encoder, delta, tokens.length, tokenizer.mask_token_id, unpad)

