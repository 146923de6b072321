"""How a checkpoint's sentence embedding is read: one definition for evaluate.py and analyze_rank.py.

train.py's exports record in config.json what to read:
- `sentence_pooler`: the pooler (utils/pooling.py) of a plain pooled embedding; SimCSE's `cls` where a
  checkpoint records nothing.
- `sentence_embedding`: where the embedding is more than a pooler, the test embedding the published
  numbers are of, {"pooler", "template", "period"} (PromptBERT: the [MASK] state of a text template, with
  its '.' rule), and, where checkpoints were selected by another one, "dev": the fields that differ for
  that one (PromptBERT: no '.' rule, and "denoise": the template's own [MASK] state subtracted).

`read_embedding(config, which)` turns that into an `Embedding`; `checkpoint_embedder` builds the module that
utils.encode.encode reads it with. "test" is what evaluate.py reports by default; "dev" is what training
selected best/ by and logged, so the same checkpoint gives the same number wherever it is read.
"""

from typing import NamedTuple

from utils.pooling import POOLERS, PooledEncoder
from utils.prompt import denoised_prompt, template_problem

WHICH = ("test", "dev")


class Embedding(NamedTuple):
    """pooler: one of utils.pooling.POOLERS; template: a text template the sentences are put in (None: as they
    are); period: PromptBERT's '.' rule; denoise: the template's own [MASK] state is subtracted."""

    pooler: str
    template: str | None = None
    period: bool = False
    denoise: bool = False

    def describe(self) -> str:
        """For logs and reports: what is read besides the pooler ("" for a plain pooler)."""
        parts = []
        if self.template:
            parts.append(f"template {self.template!r}")
        if self.period:
            parts.append("'.' added where missing")
        if self.denoise:
            parts.append("template-denoised")
        return ", ".join(parts)


def _check(spec: dict, where: str) -> Embedding:
    """An Embedding from a recorded dict; ValueError naming what is malformed."""
    if not isinstance(spec, dict) or spec.get("pooler") not in POOLERS:
        raise ValueError(f"config.json: {where} {spec!r} needs a 'pooler', one of {', '.join(POOLERS)}")
    template, period, denoise = spec.get("template"), spec.get("period", False), spec.get("denoise", False)
    if template is not None:
        problem = template_problem(template, need_mask=spec["pooler"] == "mask") if isinstance(template, str) \
            else f"must be a string, got {template!r}"
        if problem:
            raise ValueError(f"config.json: {where} template {problem}")
    for name, value in (("period", period), ("denoise", denoise)):
        if not isinstance(value, bool):
            raise ValueError(f"config.json: {where} {name} must be true or false, got {value!r}")
    if denoise and (spec["pooler"] != "mask" or not template):
        raise ValueError(f"config.json: {where} denoise needs the mask pooler and a template")
    return Embedding(spec["pooler"], template, period, denoise)


def read_embedding(config, which: str = "test") -> tuple[Embedding, str]:
    """(the Embedding, where it comes from) of a checkpoint's config (a transformers config or config.json's
    dict): its recorded sentence_embedding (the `which` form), else its sentence_pooler, else `cls`.
    ValueError names a malformed record."""
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    get = config.get if isinstance(config, dict) else lambda key: getattr(config, key, None)
    spec = get("sentence_embedding")
    if spec:
        embedding = _check({k: v for k, v in spec.items() if k != "dev"} if isinstance(spec, dict) else spec,
                           "sentence_embedding")
        if which == "dev" and isinstance(spec.get("dev"), dict):
            embedding = _check({**embedding._asdict(), **spec["dev"]}, "sentence_embedding.dev")
            return embedding, "the checkpoint's config.sentence_embedding (dev)"
        return embedding, "the checkpoint's config.sentence_embedding"
    if get("sentence_pooler"):
        if get("sentence_pooler") not in POOLERS:
            raise ValueError(f"config.json: sentence_pooler {get('sentence_pooler')!r} is not one of {', '.join(POOLERS)}")
        return Embedding(get("sentence_pooler")), "the checkpoint's config.sentence_pooler"
    return Embedding("cls"), "SimCSE's default; the checkpoint records no embedding"


def checkpoint_embedder(encoder, tokenizer, embedding: Embedding, unpad: bool = False):
    """The module utils.encode.encode reads `embedding` with (called with embedding.template and .period).
    ValueError where the model cannot give it (no mask token, a template longer than its positions)."""
    if embedding.denoise:
        return denoised_prompt(encoder, tokenizer, embedding.template, unpad=unpad)
    return PooledEncoder(encoder, embedding.pooler, unpad, tokenizer.mask_token_id)
