"""InfoCSE (Wu et al., EMNLP 2022 Findings): SimCSE plus a masked-language-model objective that can only be
solved through the sentence's [CLS].

- Contrastive part: the batch stacked twice (two dropout views) through the online encoder; z =
  ProjectionMLP([CLS]) (Linear(H, 2H) -> BatchNorm -> ReLU -> Linear(2H, H) -> BatchNorm(affine=False), in
  training only: evaluation and export read the raw [CLS]); InfoNCE over cos / temp.
- MLM part: a masked copy of the same 2B rows (p = --mlm_probability; 80 % [MASK], 10 % a random token,
  10 % kept; special tokens and padding never masked) goes through a frozen copy of the initial encoder's
  embeddings and first --frozen_layers layers (never trained, no gradient; default 6, the authors'
  skip_from for 12 and 24 layers alike, or all the layers of a shallower encoder). With --mlm_eval (the
  authors' bert-base script) that copy runs without dropout. Position 0 of its token states is replaced
  by the online encoder's last-layer [CLS] of the unmasked row (with its gradient); the sequence runs
  through `c_head` (--head_layers fresh encoder layers) and the MLM head, and cross-entropy scores the
  masked positions only. So the MLM gradient reaches the online encoder through that one [CLS] vector.
- The MLM head (transform + decoder + bias) is trained. It starts from the checkpoint's own MLM head where
  it has one (a BERT or RoBERTa MLM checkpoint, as the authors load Condenser's), else from the encoder's
  initialisation with the decoder a copy of the word embeddings (the MLM head's tied initial value).
  `--mlm_decoder frozen` reads the frozen copy's word embeddings instead of training a decoder.
- loss = InfoNCE + --mlm_weight * MLM.

The published recipe starts from Condenser (Luyu/condenser). Its hub checkpoint has the MLM head but not
the head layers (the authors' loader reads those only from a local model.pt), so `c_head` starts fresh
in their runs as it does here.

Rank Reduction defaults to z, the head's output, as for the other methods. On the pooled [CLS]
(`--rr_on encoder`, the evaluated embedding) the penalty meets almost no resistance: the contrastive loss
reaches [CLS] only through the head, whose last BatchNorm standardises every dimension of z over the
batch, so at InfoCSE's lr of 7e-6 the penalty steers [CLS] alone. Measured on all-MiniLM-L6-v2 (batch 32,
150 steps, docs/methods.md): λ = 0.1 on [CLS] took STS-B dev from 79.73 to 72.78, λ = 0.01 on [CLS] rose
less than the baseline, λ = 0.1 on z rose as the baseline did.

Several processes: the BatchNorm statistics are each process's own (not synchronised), as in the authors'
code; the MLM masks are drawn per process from the step's generator, so a resume draws them again.
"""

import argparse
import copy
import sys

import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import number
from utils.loss import contrastive_loss
from utils.methods.base import Method, Output
from utils.unpad import unpadded_layers

SKIP_FROM = 6  # the authors' frozen lower layers, for bert-base and bert-large alike
IGNORE = -100  # the label of a position the MLM does not score (cross_entropy's ignore_index)


class ProjectionMLP(nn.Module):
    """InfoCSE's training head over [CLS]: (N, H) -> (N, H).

    Linear(H, 2H, no bias) -> BatchNorm1d(2H) -> ReLU -> Linear(2H, H, no bias) -> BatchNorm1d(H, affine=False).
    In training BatchNorm uses the batch's statistics (all 2B rows: both views together); in eval mode the
    running ones.
    """

    def __init__(self, hidden_size: int, init_std: float = 0.02):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, 2 * hidden_size, bias=False)
        self.bn1 = nn.BatchNorm1d(2 * hidden_size)
        self.activation = nn.ReLU()
        self.fc2 = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.bn2 = nn.BatchNorm1d(hidden_size, affine=False)
        for linear in (self.fc1, self.fc2):  # the encoder's initializer, as for SimCSE's MLP
            nn.init.normal_(linear.weight, std=init_std)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.fc2(self.activation(self.bn1(self.fc1(features)))))


class MLMHead(nn.Module):
    """The MLM prediction head: (N, H) token states -> (N, V) vocabulary logits.

    transform = Linear(H, H), the config's activation, LayerNorm; then a decoder (V, H) and a bias (V,).
    `decoder` is a trained parameter, or None when the caller passes a (frozen) decoder weight in.
    """

    def __init__(self, config, vocab_size: int, decoder: torch.Tensor | None = None):
        super().__init__()
        from transformers.activations import ACT2FN

        hidden = config.hidden_size
        self.dense = nn.Linear(hidden, hidden)
        act = getattr(config, "hidden_act", "gelu")
        self.activation = ACT2FN[act] if isinstance(act, str) else act
        # named LayerNorm so train.py's optimizer keeps weight decay off it, as off the encoder's own
        self.LayerNorm = nn.LayerNorm(hidden, eps=getattr(config, "layer_norm_eps", 1e-12))
        self.decoder = nn.Parameter(decoder.detach().clone()) if decoder is not None else None
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, hidden: torch.Tensor, decoder_weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.decoder if self.decoder is not None else decoder_weight
        return F.linear(self.LayerNorm(self.activation(self.dense(hidden))), weight, self.bias)


# where a masked-LM checkpoint keeps its head: (prefix, transform's Linear, transform's LayerNorm)
MLM_HEAD_LAYOUTS = (("cls.predictions.", "transform.dense.", "transform.LayerNorm."),  # BERT
                    ("lm_head.", "dense.", "layer_norm."))  # RoBERTa


def pretrained_mlm_head(name_or_path: str) -> dict | None:
    """The checkpoint's MLM head as MLMHead's state dict ({"dense.*", "LayerNorm.*", "decoder", "bias"}), or
    None where the checkpoint has none (an encoder saved without it, e.g. a sentence-transformers model)."""
    from transformers import AutoModelForMaskedLM
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()  # the head's absence is the expected case here, not a warning
    try:
        mlm, info = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32, output_loading_info=True)
    except (OSError, ValueError, KeyError):  # no masked-LM class for this architecture, or no such files
        return None
    finally:
        logging.set_verbosity(verbosity)
    weights = mlm.state_dict()
    missing = set(info["missing_keys"])
    for prefix, dense, norm in MLM_HEAD_LAYOUTS:
        keys = [f"{prefix}{part}{p}" for part in (dense, norm) for p in ("weight", "bias")] + [f"{prefix}bias"]
        if all(k in weights for k in keys) and not missing & set(keys):
            head = {f"dense.{p}": weights[f"{prefix}{dense}{p}"] for p in ("weight", "bias")}
            head.update({f"LayerNorm.{p}": weights[f"{prefix}{norm}{p}"] for p in ("weight", "bias")})
            head["bias"] = weights[f"{prefix}bias"]
            head["decoder"] = mlm.get_output_embeddings().weight
            return {k: v.detach().clone() for k, v in head.items()}
    return None


def layer_attention_mask(layer: nn.Module, config, hidden: torch.Tensor, attention_mask: torch.Tensor):
    """The attention mask `layer`'s class reads, from the (B, L) key-padding mask (1 = real token).

    Where the layer's modeling file builds its masks with transformers' `create_bidirectional_mask`
    (transformers 5), that builder gives the form the configured attention implementation reads (or None
    when nothing is masked); otherwise (transformers 4's BERT-style models) the additive (B, 1, 1, L) mask
    of `get_extended_attention_mask`, which both eager and SDPA attention read.
    """
    build = getattr(sys.modules.get(type(layer).__module__), "create_bidirectional_mask", None)
    if build is not None:
        return build(config=config, inputs_embeds=hidden, attention_mask=attention_mask)
    padding = 1.0 - attention_mask[:, None, None, :].to(hidden.dtype)
    return padding * torch.finfo(hidden.dtype).min


def run_layers(layers, hidden: torch.Tensor, attention_mask: torch.Tensor, config, unpad: bool = False) -> torch.Tensor:
    """(B, L, H) states through encoder layers, padding keys masked out -> (B, L, H). unpad (train.py
    --unpad_inputs): their token-wise parts on the real tokens only, as the encoder's own (utils/unpad.py)."""
    if unpad:
        return unpadded_layers(layers, hidden, attention_mask)[0]
    mask = layer_attention_mask(layers[0], config, hidden, attention_mask)
    for layer in layers:
        out = layer(hidden, mask)
        hidden = out[0] if isinstance(out, tuple) else out  # transformers 4 returns a tuple, 5 the tensor
    return hidden


class FrozenLowerEncoder(nn.Module):
    """A copy of an encoder's embeddings and first `layers` layers, never trained:
    (B, L) ids -> (B, L, H) token states, computed without a graph."""

    def __init__(self, encoder: nn.Module, layers: int):
        super().__init__()
        self.embeddings = copy.deepcopy(encoder.embeddings)
        self.layer = nn.ModuleList(copy.deepcopy(layer) for layer in encoder.encoder.layer[:layers])
        self.config = encoder.config
        self.requires_grad_(False)

    @property
    def word_embeddings(self) -> torch.Tensor:
        """(V, H): the initial encoder's input-embedding matrix."""
        return self.embeddings.word_embeddings.weight

    @torch.no_grad()
    def forward(self, input_ids, attention_mask, token_type_ids=None, unpad: bool = False) -> torch.Tensor:
        hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
        return run_layers(self.layer, hidden, attention_mask, self.config, unpad)


def mask_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor, special_ids: torch.Tensor, mask_id: int,
                vocab_size: int, probability: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L) ids and mask -> (masked ids, labels), both (N, L), BERT's MLM corruption.

    Each real, non-special token is chosen with `probability`; a chosen token becomes `mask_id` (80 %), a
    uniformly random id below `vocab_size` (10 %) or stays (10 %). labels hold the original id at the
    chosen positions and IGNORE elsewhere.
    """
    eligible = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    chosen = eligible & (torch.rand(input_ids.shape, generator=generator) < probability)
    how = torch.rand(input_ids.shape, generator=generator)
    random_ids = torch.randint(vocab_size, input_ids.shape, generator=generator, dtype=input_ids.dtype)
    masked = input_ids.clone()
    masked[chosen & (how < 0.8)] = mask_id
    replaced = chosen & (how >= 0.8) & (how < 0.9)
    masked[replaced] = random_ids[replaced]
    labels = torch.full_like(input_ids, IGNORE)
    labels[chosen] = input_ids[chosen]
    return masked, labels


class InfoCSE(Method):
    """SimCSE's two dropout views + ProjectionMLP, and an MLM through [CLS] on a frozen lower encoder."""

    name, label = "infocse", "InfoCSE"
    ddp_exact = False  # each process's BatchNorm statistics are its own, as in the authors' code
    flags = (
        ("--mlm_probability", dict(type=number(float, 0, inclusive=False), default=0.4,
                                   help="share of the real tokens masked for the MLM through [CLS]")),
        ("--mlm_weight", dict(type=number(float, 0), default=1e-5, help="loss = InfoNCE + this x MLM")),
        ("--frozen_layers", dict(type=number(int, 1), default=None,
                                 help="frozen lower layers of the initial encoder (None: 6, or all of a shallower one)")),
        ("--head_layers", dict(type=number(int, 1), default=2, help="fresh encoder layers over [CLS] + the frozen states")),
        ("--mlm_eval", dict(action=argparse.BooleanOptionalAction, default=True,
                            help="the frozen layers run without dropout (the authors' bert-base script)")),
        ("--mlm_decoder", dict(choices=["trained", "frozen"], default="trained",
                               help="the MLM decoder is trained (the authors') or the frozen word embeddings")),
    )
    # the authors' Infocse-bert-base.sh: batch 64, lr 7e-6, 2 epochs, cls --mlp_only_train
    recipe = {**Method.recipe, "learning_rate": 7e-6, "num_train_epochs": 2, "mlp_only_train": True}

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__(args, model, tokenizer, steps_per_epoch)
        encoder = model.encoder
        self._check_model(model)
        config = encoder.config
        total = len(encoder.encoder.layer)
        frozen = args.frozen_layers if args.frozen_layers is not None else min(SKIP_FROM, total)
        if not 1 <= frozen <= total:
            raise ValueError(f"argument --frozen_layers: must be in [1, {total}] (the model's layers), got {frozen}")
        if args.head_layers < 1:
            raise ValueError(f"argument --head_layers: must be >= 1, got {args.head_layers}")
        self.mlm_probability, self.mlm_weight, self.frozen_layers = args.mlm_probability, args.mlm_weight, frozen
        self.config = config
        model.mlp = ProjectionMLP(config.hidden_size, getattr(config, "initializer_range", 0.02))
        self.frozen = FrozenLowerEncoder(encoder, frozen)
        layer_class = type(encoder.encoder.layer[0])
        self.c_head = nn.ModuleList(layer_class(config) for _ in range(args.head_layers))
        self.mlm_eval = args.mlm_eval
        word_embeddings = self.frozen.word_embeddings
        self.lm_head = MLMHead(config, word_embeddings.shape[0],
                               word_embeddings if args.mlm_decoder == "trained" else None)
        for module in [*self.c_head.modules(), *self.lm_head.modules()]:
            encoder._init_weights(module)  # the encoder's own initializer (normal, std = initializer_range)
        nn.init.zeros_(self.lm_head.bias)
        pretrained = pretrained_mlm_head(args.model_name_or_path)
        self.mlm_head_source = "the checkpoint's MLM head" if pretrained else "initialised (no MLM head in the checkpoint)"
        if pretrained:
            if self.lm_head.decoder is None:
                del pretrained["decoder"]
            self.lm_head.load_state_dict(pretrained)
        # host-side masking data (views runs on the host): plain attributes, not state
        self.mask_id = tokenizer.mask_token_id
        self.special_ids = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.vocab_size = len(tokenizer)

    def resolve_args(self, args) -> None:
        args.frozen_layers = self.frozen_layers

    @staticmethod
    def _check_model(model) -> None:
        """Refuse (ValueError naming the flag) a sentence model InfoCSE cannot train."""
        if model.pooler_type != "cls":
            raise ValueError(f"argument --pooler_type: InfoCSE trains its head on [CLS]: use cls, got "
                             f"{model.pooler_type}")
        if not model.mlp_only_train:
            raise ValueError("argument --no-mlp_only_train: InfoCSE's BatchNorm head is for training only; "
                             "evaluation reads the raw [CLS]")
        encoder = model.encoder
        if getattr(encoder, "embeddings", None) is None or getattr(getattr(encoder, "encoder", None), "layer",
                                                                   None) is None:
            raise ValueError(f"--model_name_or_path: InfoCSE needs a BERT-style encoder (embeddings + encoder.layer), "
                             f"got {type(encoder).__name__}")

    @classmethod
    def check_args(cls, args):
        if not 0 < args.mlm_probability < 1:
            return f"argument --mlm_probability: must be in (0, 1), got {args.mlm_probability}"
        if args.mlm_weight < 0:
            return f"argument --mlm_weight: must be >= 0, got {args.mlm_weight}"
        if args.head_layers < 1:
            return f"argument --head_layers: must be >= 1, got {args.head_layers}"
        if args.frozen_layers is not None and args.frozen_layers < 1:
            return f"argument --frozen_layers: must be >= 1, got {args.frozen_layers}"
        if getattr(args, "pooler_type", "cls") != "cls":
            return f"argument --pooler_type: InfoCSE trains its head on [CLS]: use cls, got {args.pooler_type}"
        if not getattr(args, "mlp_only_train", True):
            return ("argument --no-mlp_only_train: InfoCSE's BatchNorm head is for training only; evaluation "
                    "reads the raw [CLS]")
        return None

    @classmethod
    def check_tokenizer(cls, tokenizer, args):
        if tokenizer.mask_token_id is None:
            name = getattr(args, "model_name_or_path", None)
            flag = f"--model_name_or_path {name}" if name else "--model_name_or_path"
            return f"{flag}: its tokenizer has no mask token, which InfoCSE's masked-language-model objective needs"
        return None

    def views(self, batch, step):
        """Both views (2B rows) plus "mlm_input_ids" and "mlm_labels" (2B, L): each row masked on its own."""
        inputs = super().views(batch, step)
        inputs["mlm_input_ids"], inputs["mlm_labels"] = mask_tokens(
            inputs["input_ids"], inputs["attention_mask"], self.special_ids, self.mask_id, self.vocab_size,
            self.mlm_probability, self.generator(step))
        return inputs

    def mlm_loss(self, pooled, mlm_input_ids, mlm_labels, attention_mask, token_type_ids=None,
                 unpad: bool = False) -> torch.Tensor:
        """Mean cross-entropy at the masked positions; pooled (2B, H) is the only input with a gradient.
        unpad: the frozen layers and the head layers skip the padding, as the encoder does under
        --unpad_inputs (else they, not the encoder, would be most of an unpadded step)."""
        was_training = self.frozen.training
        self.frozen.train(was_training and not self.mlm_eval)
        try:
            states = self.frozen(mlm_input_ids, attention_mask, token_type_ids, unpad)  # (2B, L, H), no graph
        finally:
            self.frozen.train(was_training)
        hidden = torch.cat([pooled[:, None].to(states.dtype), states[:, 1:]], dim=1)
        hidden = run_layers(self.c_head, hidden, attention_mask, self.config, unpad)
        scored = mlm_labels != IGNORE
        if torch.compiler.is_compiling():  # every position: a selection's size would make the host wait
            hidden, labels = hidden.flatten(0, 1), mlm_labels.flatten()
        else:  # the vocabulary projection on the masked positions only: the same loss, most of the work saved
            hidden, labels = hidden[scored], mlm_labels[scored]
        logits = self.lm_head(hidden, self.frozen.word_embeddings)  # its own decoder where trained
        # a sum over the scored positions: 0 (not NaN) for a batch without any, every head still in the graph
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # float32 at least under autocast
        return F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="sum") / scored.sum().clamp(min=1)

    def forward(self, model, inputs, temp):
        encoder_inputs = {k: v for k, v in inputs.items() if not k.startswith("mlm_")}
        z, pooled = model(**encoder_inputs, return_pooled=True)
        z1, z2 = z.chunk(2)
        mlm = self.mlm_loss(pooled, inputs["mlm_input_ids"], inputs["mlm_labels"], inputs["attention_mask"],
                            inputs.get("token_type_ids"), unpad=model.unpad)
        return Output(contrastive_loss(z1, z2, temp) + self.mlm_weight * mlm, z, pooled)
