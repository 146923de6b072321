"""Fast inference: sentences -> embeddings with any module that maps a tokenized batch to (B, H).

Used by `evaluate.py` and by `train.py`'s in-training evaluation, so both score a checkpoint identically.
Each unique sentence is tokenized once and encoded once; batches are length-sorted (little padding),
run under `inference_mode`, and on a GPU in bf16 autocast from page-locked host memory.
"""

import contextlib

import torch


def default_max_length(tokenizer, config) -> int:
    """Longest input the encoder accepts: SimCSE's evaluation truncates nothing shorter."""
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is None or limit > 100_000:  # transformers' "no limit" sentinel
        limit = getattr(config, "max_position_embeddings", 512)
        if getattr(config, "model_type", "") in ("roberta", "xlm-roberta", "camembert"):
            limit -= 2  # RoBERTa's positions start after the padding index
    return int(limit)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, nothing elsewhere (CPU bf16 is slow and imprecise)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def pad_batch(rows, pad_id: int) -> dict:
    """Right-pad a list of tokenized rows ({'input_ids': [...], ...}) into tensors."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {}
    for key in rows[0]:
        fill = pad_id if key == "input_ids" else 0
        out = torch.full((len(rows), width), fill, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r[key])] = torch.tensor(r[key], dtype=torch.long)
        batch[key] = out
    return batch


@torch.inference_mode()
def encode(model, tokenizer, sentences, *, batch_size: int = 128, max_length: int | None = None,
           device=None, progress: bool = False) -> torch.Tensor:
    """Embed `sentences` (list of str) -> float32 CPU tensor (len(sentences), H), rows in input order.

    `model` is called as model(input_ids=..., attention_mask=..., [token_type_ids=...]) in eval mode;
    the caller's train/eval mode is restored afterwards.
    """
    if device is None:
        device = next(model.parameters()).device
    device = torch.device(device)
    if max_length is None:
        max_length = default_max_length(tokenizer, getattr(model, "config", None)
                                        or getattr(getattr(model, "encoder", None), "config", None))
    unique = list(dict.fromkeys(sentences))
    index = {s: i for i, s in enumerate(unique)}
    tokenized = tokenizer(unique, truncation=True, max_length=max_length)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in tokenized]
    rows = [{k: tokenized[k][i] for k in keys} for i in range(len(unique))]
    order = sorted(range(len(unique)), key=lambda i: -len(rows[i]["input_ids"]))

    was_training = model.training
    model.eval()
    out = None
    batches = range(0, len(order), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode", unit="batch")
    try:
        for start in batches:
            ids = order[start : start + batch_size]
            batch = pad_batch([rows[i] for i in ids], tokenizer.pad_token_id or 0)
            if device.type == "cuda":  # page-locked: the copy runs asynchronously, overlapping the GPU's work
                batch = {k: v.pin_memory() for k, v in batch.items()}
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast_for(device):
                emb = model(**batch).float().cpu()
            if out is None:
                out = torch.empty(len(unique), emb.shape[1], dtype=torch.float32)
            out[torch.tensor(ids)] = emb
    finally:
        model.train(was_training)
    if out is None:
        raise ValueError("encode() got no sentences")
    return out[torch.tensor([index[s] for s in sentences])]


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
