"""A padding-free forward pass for BERT-style encoders (BERT, RoBERTa and their kin: MiniLM, ...).

SimCSE's batches pad every sentence to the longest of the batch; on wiki1m at max_len 32 about a third
of the token rows are padding, and every linear layer, GELU, LayerNorm and dropout mask pays for them.
Here the token-wise parts of each layer (Q/K/V, the attention output, the feed-forward block, with the
model's own modules and weights) run on the real tokens only, packed into one (T, H) matrix; only the
attention itself goes back to the padded (B, heads, S, d) layout, through PyTorch's SDPA with the
key-padding mask. The embeddings run on the padded batch as usual (a lookup).

The packed rows are padded up to a multiple of PACK_MULTIPLE with spare rows that no real token reads,
so a run sees a bounded set of matrix shapes: the CPU's kernel libraries (oneDNN) keep an entry per shape,
and one shape per distinct token count made a process grow through the whole run. The result equals the
encoder's own forward on the real tokens up to float rounding (tested, with dropout off; with dropout on,
the masks are drawn for other elements, so the random stream differs). Padding rows of the returned
hidden states are zero. Architectures whose layers differ (relative positions,
decoders, cross-attention) are refused with a clear error rather than computed differently.
"""

import torch
import torch.nn.functional as F
from transformers.modeling_outputs import BaseModelOutputWithPooling

PACK_MULTIPLE = 64  # packed rows: a multiple of this (at most 63 spare rows, ~3 % of a batch of 64 x 2 views)


def unsupported_reason(encoder) -> str | None:
    """Why `unpadded_forward` cannot run this encoder, or None when it can."""
    config = encoder.config
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    if getattr(encoder, "embeddings", None) is None or layers is None:
        return f"{type(encoder).__name__} is not a BERT-style encoder (embeddings + encoder.layer)"
    if getattr(config, "position_embedding_type", "absolute") not in (None, "absolute"):
        return f"position_embedding_type {config.position_embedding_type!r} (only absolute positions)"
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return "decoder / cross-attention layers"
    if getattr(config, "chunk_size_feed_forward", 0):
        return "chunked feed-forward"
    for layer in layers:
        attention = getattr(getattr(layer, "attention", None), "self", None)
        if not all(hasattr(attention, a) for a in ("query", "key", "value", "dropout", "attention_head_size")):
            return f"{type(layer).__name__} has no BERT-style self-attention"
        if not all(hasattr(layer, a) for a in ("intermediate", "output")):
            return f"{type(layer).__name__} has no BERT-style feed-forward block"
    return None


def _layer(layer, x, rows, batch: int, seq: int, key_mask, spare: int):
    """One BERT layer on packed tokens x (T, H); `rows` are their positions in the flat (B * S) layout, the
    `spare` rows' past its end."""
    attention = layer.attention.self
    heads, head_size = attention.num_attention_heads, attention.attention_head_size

    def padded(linear):  # (T, H) -> (B, heads, S, d), zeros at the padding; the spare rows are dropped
        y = linear(x)  # bf16 under autocast while x (a LayerNorm output) stays float32 on CUDA
        out = y.new_zeros(batch * seq + spare, heads * head_size).index_copy(0, rows, y)
        return out[: batch * seq].view(batch, seq, heads, head_size).transpose(1, 2)

    context = F.scaled_dot_product_attention(
        padded(attention.query), padded(attention.key), padded(attention.value), attn_mask=key_mask,
        dropout_p=attention.dropout.p if attention.training else 0.0, scale=head_size ** -0.5)
    context = context.transpose(1, 2).reshape(batch * seq, heads * head_size)
    context = F.pad(context, (0, 0, 0, spare)).index_select(0, rows)  # the spare rows read zeros
    hidden = layer.attention.output(context, x)      # dense, dropout, LayerNorm(+ x): token-wise
    return layer.output(layer.intermediate(hidden), hidden)


def packed_rows(attention_mask: torch.Tensor, multiple: int | None = None) -> tuple[torch.Tensor, int]:
    """(rows, real): the flat (B * S) positions of the real tokens, then spare positions B * S, B * S + 1, ...
    up to a multiple of `multiple` rows (default PACK_MULTIPLE); `real` the number of real tokens."""
    multiple = multiple or PACK_MULTIPLE
    flat = attention_mask.numel()
    real_rows = attention_mask.reshape(-1).nonzero().squeeze(1)
    real = real_rows.shape[0]
    spare = -real % multiple
    return torch.cat([real_rows, torch.arange(flat, flat + spare, device=real_rows.device)]), real


def unpadded_layers(layers, hidden: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False):
    """(B, S, H) states through BERT-style `layers` with their token-wise parts on the real tokens only ->
    ((B, S, H) last states, zeros at the padding; the input and every layer's states when asked, else None).
    Besides the encoder's own stack, InfoCSE's frozen lower layers and head layers run through this."""
    batch, seq, width = hidden.shape
    rows, real = packed_rows(attention_mask)
    spare = rows.shape[0] - real
    key_mask = attention_mask.bool()[:, None, None, :]  # (B, 1, 1, S): True = attend
    x = F.pad(hidden.reshape(batch * seq, width), (0, 0, 0, spare)).index_select(0, rows)

    def unpack(t):  # (T, H) -> (B, S, H), zeros at the padding
        out = t.new_zeros(batch * seq + spare, t.shape[-1]).index_copy(0, rows, t)
        return out[: batch * seq].view(batch, seq, -1)

    states = [x] if output_hidden_states else None
    for layer in layers:
        x = _layer(layer, x, rows, batch, seq, key_mask, spare)
        if states is not None:
            states.append(x)
    return unpack(x), (tuple(unpack(t) for t in states) if states is not None else None)


def unpadded_forward(encoder, input_ids, attention_mask, token_type_ids=None, output_hidden_states: bool = False,
                     **_ignored) -> BaseModelOutputWithPooling:
    """The encoder's forward with its token-wise layers on real tokens only; a transformers output object
    (last_hidden_state, pooler_output when the encoder has a pooler, hidden_states on request)."""
    if not getattr(encoder, "_unpad_checked", False):  # once per encoder, not on every training step
        reason = unsupported_reason(encoder)
        if reason is not None:
            raise ValueError(f"--unpad_inputs cannot run this model: {reason}")
        encoder._unpad_checked = True
    embedded = encoder.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
    last, states = unpadded_layers(encoder.encoder.layer, embedded, attention_mask, output_hidden_states)
    pooler = getattr(encoder, "pooler", None)
    return BaseModelOutputWithPooling(
        last_hidden_state=last, pooler_output=pooler(last) if pooler is not None else None, hidden_states=states)
