"""Fast inference: sentences -> embeddings with any module that maps a tokenized batch to (B, H).

Used by `evaluate.py` and by `train.py`'s in-training evaluation, so both score a checkpoint identically.
Each unique sentence is tokenized once (one call of the fast tokenizer) and encoded once; batches are
length-sorted (little padding) and run under `inference_mode`. On a GPU: bf16 autocast, batches filled
to a token budget (short sentences go in bigger batches: fewer launches), inputs copied from page-locked
memory, and the embeddings stay on the device until the end, so the host never waits inside the loop and
prepares the next batch while the GPU runs this one.

A text template (PromptBERT's `This sentence of "{sentence}" means {mask}.`) is applied to each sentence
before tokenizing (utils/prompt.py); how a checkpoint says it is read: utils/embedding.py.
"""

import argparse
import contextlib

import numpy as np
import torch

from utils.data import pad_batch
from utils.prompt import apply_template, fit_template_rows

# tokens per batch on a GPU = batch_size x this (padded length): 128 sentences of 64 tokens, 512 of 16
GPU_TOKENS_PER_ROW = 64


def default_max_length(tokenizer, config) -> int:
    """Longest input the encoder accepts: SimCSE's evaluation truncates nothing shorter."""
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is None or limit > 100_000:  # transformers' "no limit" sentinel
        limit = getattr(config, "max_position_embeddings", 512)
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa's positions start after the padding index
    return int(limit)


def parse_device(text: str) -> torch.device:
    """argparse `type=` for --device: cpu, cuda or cuda:N, where that GPU exists; so a typo ("gpu") or a
    missing GPU fails with the flag named before anything is loaded."""
    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"not a device: {text!r}; use cpu, cuda or cuda:N") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: this script runs on cpu or cuda only")
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text}: no CUDA device is available here")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text}: this machine has {count} CUDA device(s), cuda:0 to "
                                             f"cuda:{count - 1}")
    return device


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (CPU bf16 is slow and imprecise)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def length_batches(lengths, batch_size: int, max_tokens: int | None = None) -> list:
    """Indices sorted by decreasing length, cut into batches of at most `batch_size` rows or, with
    `max_tokens`, of as many rows as fit in max_tokens padded tokens (at least one)."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    if max_tokens is None:
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    batches, start = [], 0
    while start < len(order):
        rows = max(1, max_tokens // max(1, int(lengths[order[start]])))  # the first row is the longest
        batches.append(order[start : start + rows])
        start += rows
    return batches


@torch.inference_mode()
def encode(model, tokenizer, sentences, *, batch_size: int = 128, max_length: int | None = None,
           device=None, progress: bool = False, template: str | None = None, period: bool = False) -> torch.Tensor:
    """Embed `sentences` (list of str) -> float32 CPU tensor (len(sentences), H), rows in input order.

    `model` is called as model(input_ids=..., attention_mask=..., [token_type_ids=...]) in eval mode;
    the caller's train/eval mode is restored afterwards. `batch_size` sentences per batch on a CPU; on a
    GPU a budget of batch_size x GPU_TOKENS_PER_ROW tokens. With `template` / `period`, what is tokenized
    is `apply_template(sentence, template, tokenizer.mask_token, period)`; a templated row longer than
    `max_length` is cut in its sentence, so the template and its [MASK] stay whole.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if max_length is None:
        max_length = default_max_length(tokenizer, getattr(model, "config", None)
                                        or getattr(getattr(model, "encoder", None), "config", None))
    unique = list(dict.fromkeys(sentences))
    if not unique:
        raise ValueError("encode() got no sentences")
    texts = apply_template(unique, template, tokenizer.mask_token, period) if (template or period) else unique
    if template:  # a row too long for the encoder loses sentence tokens, never the template's [MASK]
        tokenized = tokenizer(texts)
        fit_template_rows(tokenized, apply_template(unique, None, period=period), template, tokenizer, max_length)
    else:
        tokenized = tokenizer(texts, truncation=True, max_length=max_length)
    columns = {k: tokenized[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokenized}
    lengths = [len(ids) for ids in columns["input_ids"]]
    gpu = device.type == "cuda"
    batches = length_batches(lengths, batch_size, batch_size * GPU_TOKENS_PER_ROW if gpu else None)
    order = torch.from_numpy(np.concatenate(batches))

    was_training = model.training
    model.eval()
    done, out = 0, None  # out: rows in length order, on the model's device
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode", unit="batch")
    try:
        for rows in batches:
            batch = pad_batch(columns, rows, tokenizer.pad_token_id or 0)
            if gpu:  # page-locked: the copy runs asynchronously, overlapping the GPU's work
                batch = {k: v.pin_memory() for k, v in batch.items()}
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast_for(device):
                emb = model(**batch)
            if out is None:
                out = torch.empty(len(unique), emb.shape[1], dtype=torch.float32, device=emb.device)
            out[done : done + len(rows)] = emb
            done += len(rows)
    finally:
        model.train(was_training)
    by_unique = torch.empty(len(unique), out.shape[1], dtype=torch.float32)
    by_unique[order] = out.cpu()  # one copy back, at the end
    index = {s: i for i, s in enumerate(unique)}
    return by_unique[torch.tensor([index[s] for s in sentences])]


class EmbeddingCache:
    """Memoises an `embed(list[str]) -> (N, H)` function: each sentence is encoded once however many
    metrics or tasks ask for it (one checkpoint's STS scores, rank metrics and transfer tasks share one
    pass). Each call encodes only unseen sentences (one `embed` call) and returns float32 CPU rows in
    input order."""

    def __init__(self, embed):
        self.embed = embed
        self.rows = {}
        self.emb = None

    def __call__(self, sentences) -> torch.Tensor:
        new = [s for s in dict.fromkeys(sentences) if s not in self.rows]
        if new:
            emb = torch.as_tensor(self.embed(new), dtype=torch.float32).cpu()
            if emb.shape[0] != len(new):
                raise ValueError(f"embed() returned {emb.shape[0]} rows for {len(new)} sentences")
            start = 0 if self.emb is None else self.emb.shape[0]
            self.emb = emb if self.emb is None else torch.cat([self.emb, emb])
            self.rows.update((s, start + i) for i, s in enumerate(new))
        return self.emb[torch.tensor([self.rows[s] for s in sentences], dtype=torch.long)]
