"""The one interface every contrastive method implements, and the module DDP wraps.

A method is a `torch.nn.Module` (so its parameters and buffers, e.g. ESimCSE's momentum encoder and queue
or InfoCSE's heads, are saved and resumed with the model) with three parts:

- `views(batch, step)`: on the host, the tokenized batch of B sentences -> the model inputs of both views
  stacked into 2B rows (view 1 = rows [0, B), view 2 = rows [B, 2B)), plus any extra tensors the method's
  forward reads. Random data changes draw from a generator seeded by (seed, step, process), so a resumed
  run draws what the uninterrupted run drew.
- `forward(model, inputs, temp)` -> `Output`: the encoder forward(s) and the method's loss, inside the one
  (DDP-wrapped) forward of `TrainingModel`, so every gradient is synchronised once.
- `dev_embedding(model)` and `eval_embedding()`: what the in-training STS-B dev selection reads, and how
  `best/` and the exports are read (utils/embedding.py; the model's pooler by default, PromptBERT's
  template and [MASK] state).

Rank Reduction is not the method's business: utils.rank_reduction.RankReduction wraps the method and
reads `Output.z` or `Output.pooled` (`--rr_on mlp | encoder`, default `rr_default`), never queues, mixes
or template rows.
"""

from typing import NamedTuple

import torch
from torch import nn


class Output(NamedTuple):
    """loss: the objective (0-dim); z: (2B, H) the training embeddings the contrastive loss reads; pooled:
    (2B, H) the encoder's pooled sentence embedding (before any training head). Rows: view 1, view 2.
    terms: named parts of the loss to log, where a wrapper adds any (utils.rank_reduction)."""

    loss: torch.Tensor
    z: torch.Tensor
    pooled: torch.Tensor
    terms: dict | None = None


class Method(nn.Module):
    """Base class: unsupervised SimCSE's data (the batch twice) and no state of its own."""

    name = "simcse"
    label = "SimCSE"
    # the method's own flags: (flag, argparse keyword arguments); `default` is the published value
    flags: tuple = ()
    rr_default = "mlp"  # the tensor Rank Reduction reads by default: "mlp" = Output.z, "encoder" = Output.pooled
    # whether N processes compute what one process computes on the global batch (no per-process state)
    ddp_exact = True
    # the published recipe's shared knobs, as train.py flags (README, run.sh)
    recipe = {"per_device_train_batch_size": 64, "learning_rate": 3e-5, "num_train_epochs": 1, "mlp_only_train": True}

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__()
        self.seed = args.seed

    @classmethod
    def check_args(cls, args) -> str | None:
        """A message naming the bad flag, for values the parser cannot check alone (before any model loads)."""
        return None

    @classmethod
    def check_run(cls, args, total_steps: int) -> str | None:
        """A message naming the bad flag, for values that conflict with the run's length (known after the data)."""
        return None

    @classmethod
    def check_tokenizer(cls, tokenizer, args) -> str | None:
        """A message naming the model flag when this tokenizer cannot serve the method."""
        return None

    def resolve_args(self, args) -> None:
        """Write flags whose default depends on the model (None on the command line) back into args as
        resolved, so that the run records, and a resume compares, the values trained with."""

    def generator(self, step: int) -> torch.Generator:
        """The host generator of one step's random data changes: the same for a step however it is reached."""
        from utils.distributed import world

        return torch.Generator().manual_seed((self.seed * 1_000_003 + step) * 1_009 + world()[0])

    def views(self, batch: dict, step: int) -> dict:
        return {k: torch.cat([v, v]) for k, v in batch.items()}  # one forward, two dropout views

    def forward(self, model, inputs: dict, temp: float) -> Output:
        raise NotImplementedError

    def dev_embedding(self, model):
        """(module, template): what the in-training STS-B dev selection encodes with (utils.encode.encode calls
        module(input_ids=, attention_mask=, ...)) and the text template its sentences go in (None: none)."""
        return model, None

    def eval_embedding(self) -> dict:
        """Recorded in the exported config (`sentence_embedding`, utils/embedding.py) where the embedding is
        more than the model's pooler; {} otherwise."""
        return {}


class TrainingModel(nn.Module):
    """What the optimizer trains and DDP wraps: the sentence model (exported, evaluated) and the method."""

    def __init__(self, model, method: Method):
        super().__init__()
        self.model = model
        self.method = method

    def forward(self, inputs: dict, temp: float) -> Output:
        return self.method(self.model, inputs, temp)
