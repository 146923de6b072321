"""Sentence poolers over a Hugging Face encoder's outputs: SimCSE's five names, and PromptBERT's `mask`.

The first five are the definitions of SimCSE's `evaluation.py`, so a checkpoint evaluated here scores as
it does there:

- `cls`: the encoder's own pooler output (BERT/RoBERTa: Linear + Tanh over [CLS]). `train.py` exports
  SimCSE's MLP head into that slot when the recipe evaluates with it.
- `cls_before_pooler`: the raw [CLS] (first token) hidden state.
- `avg`: mean of the last layer over the real (unmasked) tokens.
- `avg_first_last`: mean over tokens of (hidden_states[1] + hidden_states[-1]) / 2, i.e. the first
  transformer layer's output and the last (SimCSE uses index 1: index 0 is the embedding layer).
- `avg_top2`: mean over tokens of the last two layers' average.
- `mask`: the last hidden state at the tokenizer's mask token ([MASK]), exactly one per row: PromptBERT's
  embedding, read from sentences put in a text template (`utils.encode.apply_template`).
"""

import torch
from torch import nn

# SimCSEModel's training poolers (SimCSE's names); `mask` reads a token the input must carry (a template)
SIMCSE_POOLERS = ("cls", "cls_before_pooler", "avg", "avg_first_last", "avg_top2")
POOLERS = SIMCSE_POOLERS + ("mask",)


def needs_hidden_states(pooler_type: str) -> bool:
    """Whether the encoder must be called with `output_hidden_states=True` for this pooler."""
    return pooler_type in ("avg_first_last", "avg_top2")


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, L, H), (B, L) -> (B, H): mean over the tokens whose mask is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1)


def mask_positions(input_ids: torch.Tensor, mask_token_id: int) -> torch.Tensor:
    """(B, L) token ids -> (B,) the column of each row's one mask token; ValueError unless exactly one."""
    hits = input_ids == mask_token_id
    counts = hits.sum(1)
    bad = (counts != 1).nonzero()
    if len(bad):
        row = int(bad[0])
        raise ValueError(f"pooler 'mask' needs exactly one mask token (id {mask_token_id}) per row; row {row} "
                         f"has {int(counts[row])}: the sentences go in a text template with one {{mask}} "
                         "(config.sentence_embedding), and a row cut by max_length loses it")
    return hits.int().argmax(1)


def gather_rows(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, L, H), (B,) -> (B, H): row i's state at column positions[i]."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), positions.to(hidden.device)]


def encoder_outputs(encoder, pooler_type: str, input_ids, attention_mask, unpad: bool = False, **inputs):
    """Run `encoder` with the hidden states `pooler_type` needs (all layers only when it reads them);
    with `unpad`, through `utils.unpad.unpadded_forward` (token-wise layers on real tokens only)."""
    if unpad:
        from utils.unpad import unpadded_forward

        return unpadded_forward(encoder, input_ids, attention_mask,
                                output_hidden_states=needs_hidden_states(pooler_type), **inputs)
    return encoder(input_ids=input_ids, attention_mask=attention_mask,
                   output_hidden_states=needs_hidden_states(pooler_type), return_dict=True, **inputs)


def pool(pooler_type: str, attention_mask: torch.Tensor, outputs, input_ids: torch.Tensor | None = None,
         mask_token_id: int | None = None) -> torch.Tensor:
    """Pool a `BaseModelOutput*` into one (B, H) sentence embedding per row (`mask` also reads the (B, L)
    `input_ids` and the tokenizer's `mask_token_id`)."""
    if pooler_type == "cls":
        if getattr(outputs, "pooler_output", None) is None:
            raise ValueError(
                "pooler 'cls' needs the encoder's pooler layer, and this model has none; "
                "use --pooler cls_before_pooler for the raw [CLS] vector"
            )
        return outputs.pooler_output
    if pooler_type == "cls_before_pooler":
        return outputs.last_hidden_state[:, 0]
    if pooler_type == "avg":
        return masked_mean(outputs.last_hidden_state, attention_mask)
    if pooler_type == "avg_first_last":
        return masked_mean((outputs.hidden_states[1] + outputs.hidden_states[-1]) / 2.0, attention_mask)
    if pooler_type == "avg_top2":
        return masked_mean((outputs.hidden_states[-2] + outputs.hidden_states[-1]) / 2.0, attention_mask)
    if pooler_type == "mask":
        if input_ids is None or mask_token_id is None:
            raise ValueError("pooler 'mask' needs the input ids and the tokenizer's mask token id")
        return gather_rows(outputs.last_hidden_state, mask_positions(input_ids, mask_token_id))
    raise ValueError(f"unknown pooler {pooler_type!r}; choose one of {', '.join(POOLERS)}")


def position_start(encoder) -> int:
    """The position id of a row's first token in the encoder's own forward: 0 for BERT-style embeddings,
    padding_idx + 1 for RoBERTa-style ones (which count positions past the padding index)."""
    embeddings = getattr(encoder, "embeddings", None)
    if hasattr(embeddings, "create_position_ids_from_input_ids"):
        return embeddings.padding_idx + 1
    return 0


class PooledEncoder(nn.Module):
    """A plain `AutoModel` plus a pooler: maps a tokenized batch to (B, H) sentence embeddings.

    The `mask` pooler needs `mask_token_id` (the tokenizer's `mask_token_id`); the others ignore it.
    """

    def __init__(self, encoder: nn.Module, pooler_type: str, unpad: bool = False, mask_token_id: int | None = None):
        super().__init__()
        if pooler_type not in POOLERS:
            raise ValueError(f"unknown pooler {pooler_type!r}; choose one of {', '.join(POOLERS)}")
        if pooler_type == "mask" and mask_token_id is None:
            raise ValueError("pooler 'mask' reads the state at the mask token, and this tokenizer has none")
        self.encoder = encoder
        self.pooler_type = pooler_type
        self.unpad = unpad
        self.mask_token_id = mask_token_id

    def forward(self, input_ids, attention_mask, **inputs) -> torch.Tensor:
        outputs = encoder_outputs(self.encoder, self.pooler_type, input_ids, attention_mask, self.unpad, **inputs)
        return pool(self.pooler_type, attention_mask, outputs, input_ids, self.mask_token_id)
