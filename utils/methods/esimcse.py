"""ESimCSE (Wu et al., COLING 2022): word repetition in the second view, and a queue of momentum-encoded
negatives.

- Data: view 2 repeats k tokens of each sentence in place (each chosen token emitted twice, adjacent),
  k = randrange(min(10, int(dup_rate * L))) for L tokens with [CLS] and [SEP], positions drawn without
  replacement from the real tokens (never [CLS]/[SEP]). The authors draw once at preprocessing; here each
  step draws from its own generator (seed, step, process), so a resumed run draws the same.
- Loss: the logits of row i are [sim(z1_i, z2) | sim(z1_i, queue)]; cross-entropy against label i.
- After the loss: the momentum encoder (an EMA of the online encoder, theta_m <- m theta_m + (1 - m) theta
  with this step's, pre-update, online weights; no gradients) encodes view 1 with dropout off; its [CLS]
  through the online MLP (shared, not copied), detached, is enqueued; the queue keeps the newest
  `queue_size` rows and never holds the current batch when it is used.
- The published run's two choices, followed by default (--momentum_init, --queue_reset): the momentum
  encoder starts from the encoder's random initialisation, not from the pretrained weights (the authors'
  model builds it before the checkpoint is loaded, so it only approaches the online encoder as m^t decays),
  and the queue is emptied at the start of every epoch (their trainer does so).
- The queue is a fixed-size buffer whose unfilled slots are masked out of the logits (-inf: they add
  nothing to the softmax), so a step has the same shapes whatever the queue holds.
- Several processes: the queue is each process's own (as in the authors' code), never gathered; a resume
  restores every process's queue from the main process's saved state. Evaluation and export use the
  online encoder.
"""

import argparse
import copy
import math
import random

import torch
import torch.nn.functional as F
from torch import nn

from utils.cli import number
from utils.distributed import gather_with_grad, world
from utils.loss import similarity
from utils.methods.base import Method, Output
from utils.pooling import encoder_outputs, pool, position_start


def repeat_words(input_ids: torch.Tensor, attention_mask: torch.Tensor, dup_rate: float, rng: random.Random,
                 pad_id: int, max_length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L) right-padded rows with [CLS] first and [SEP] last -> (B, L') rows with some tokens doubled.

    Per row of n real tokens: k = rng.randrange(min(10, int(dup_rate * n))) when int(dup_rate * n) > 0,
    else 0; k positions from 1 .. n - 2 without replacement, each token emitted twice, adjacent. k is
    capped at the n - 2 positions there are (a high dup_rate on a short row) and, with `max_length` (the
    encoder's positions), at what still fits.
    """
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        n = sum(mask)
        limit = int(dup_rate * n)
        k = rng.randrange(min(10, limit)) if limit > 0 else 0
        k = max(0, min(k, n - 2, (max_length - n) if max_length else k))
        chosen = set(rng.sample(range(1, n - 1), k)) if k else set()
        rows.append([t for i, t in enumerate(ids[:n]) for _ in range(2 if i in chosen else 1)])
    length = max(len(r) for r in rows)
    ids = torch.full((len(rows), length), pad_id, dtype=input_ids.dtype)
    mask = torch.zeros((len(rows), length), dtype=attention_mask.dtype)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row, dtype=input_ids.dtype)
        mask[i, : len(row)] = 1
    return ids, mask


def pad_to(t: torch.Tensor, length: int, value: int) -> torch.Tensor:
    """(B, L) -> (B, length), right-padded with `value`."""
    return F.pad(t, (0, length - t.shape[1]), value=value)


def queue_loss(z1: torch.Tensor, z2: torch.Tensor, queue: torch.Tensor, temp: float,
               valid: torch.Tensor | None = None) -> torch.Tensor:
    """Mean InfoNCE of this process's rows z1 (B, H) against z2 of all processes and the queue (Q, H);
    valid: (Q,) bool, the queue rows that hold an embedding (default: all)."""
    rank, _ = world()
    queued = similarity(z1, queue, temp)
    if valid is not None:
        queued = queued.masked_fill(~valid, -math.inf)
    logits = torch.cat([similarity(z1, gather_with_grad(z2), temp), queued], dim=1)
    labels = torch.arange(z1.shape[0], device=z1.device) + rank * z1.shape[0]
    return F.cross_entropy(logits, labels)


class ESimCSE(Method):
    name, label = "esimcse", "ESimCSE"
    ddp_exact = False  # each process keeps its own queue, as in the authors' code
    flags = (
        ("--dup_rate", dict(type=number(float, 0), default=0.32,
                            help="share of a sentence's tokens that may be repeated in view 2")),
        ("--momentum", dict(type=number(float, 0), default=0.995, help="EMA rate of the momentum encoder")),
        ("--queue_size", dict(type=number(int, 0), default=160, help="momentum-encoded negatives kept")),
        ("--momentum_init", dict(choices=["random", "copy"], default="random",
                                 help="the momentum encoder's start: random (the published run) or the pretrained copy")),
        ("--queue_reset", dict(choices=["epoch", "never"], default="epoch",
                               help="empty the queue at each epoch start (the authors' trainer) or never")),
    )

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__(args, model, tokenizer, steps_per_epoch)
        self.dup_rate, self.momentum, self.queue_size = args.dup_rate, args.momentum, args.queue_size
        self.reset_every = steps_per_epoch if args.queue_reset == "epoch" else None
        self.pad_id = tokenizer.pad_token_id or 0
        self.max_length = model.encoder.config.max_position_embeddings - position_start(model.encoder)
        self.momentum_encoder = copy.deepcopy(model.encoder).requires_grad_(False)
        if args.momentum_init == "random":  # the encoder's own initializer, drawn from the seeded generator
            self.momentum_encoder.apply(model.encoder._init_weights)
        hidden = model.encoder.config.hidden_size
        # fixed-size buffers (saved and resumed with the model): the newest rows last; `queue_len` of them hold
        # an embedding (the others are masked out of the logits)
        self.register_buffer("queue", torch.zeros(args.queue_size, hidden))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))

    @classmethod
    def check_args(cls, args):
        if not 0 <= args.dup_rate <= 1:
            return f"argument --dup_rate: must be in [0, 1], got {args.dup_rate}"
        if not 0 <= args.momentum <= 1:
            return f"argument --momentum: must be in [0, 1], got {args.momentum}"
        if args.queue_size < 0:
            return f"argument --queue_size: must be >= 0, got {args.queue_size}"
        return None

    @classmethod
    def check_run(cls, args, total_steps: int):
        seen = (total_steps - 1) * args.per_device_train_batch_size  # rows enqueued before the last step
        if args.queue_size > seen:
            return (f"argument --queue_size: {args.queue_size} rows can never fill: this run enqueues only {seen} "
                    f"({total_steps} steps x {args.per_device_train_batch_size} per process, the last step's "
                    "after its loss); lower --queue_size or train longer")
        return None

    def views(self, batch, step):
        """Both views, and "queue_reset": whether this step starts an epoch whose queue starts empty."""
        rng = random.Random(self.generator(step).initial_seed())
        ids2, mask2 = repeat_words(batch["input_ids"], batch["attention_mask"], self.dup_rate, rng, self.pad_id,
                                   self.max_length)
        length = max(ids2.shape[1], batch["input_ids"].shape[1])
        out = {"input_ids": torch.cat([pad_to(batch["input_ids"], length, self.pad_id), pad_to(ids2, length, self.pad_id)]),
               "attention_mask": torch.cat([pad_to(batch["attention_mask"], length, 0), pad_to(mask2, length, 0)])}
        if "token_type_ids" in batch:  # single-sentence rows: all zeros
            out["token_type_ids"] = torch.zeros_like(out["input_ids"])
        out["queue_reset"] = torch.tensor(bool(self.reset_every) and step > 0 and step % self.reset_every == 0)
        return out

    def forward(self, model, inputs, temp):
        inputs = dict(inputs)
        reset = inputs.pop("queue_reset", None)
        if reset is not None:
            self.queue_len.masked_fill_(reset.to(self.queue_len.device), 0)
        z, pooled = model(**inputs, return_pooled=True)
        z1, z2 = z.chunk(2)
        valid = torch.arange(self.queue_size, device=z.device) >= self.queue_size - self.queue_len
        loss = queue_loss(z1, z2, self.queue, temp, valid)
        self.update_queue(model, {k: v[: z1.shape[0]] for k, v in inputs.items()})
        return Output(loss, z, pooled)

    @torch.no_grad()
    def update_queue(self, model, view1: dict) -> None:
        """EMA step of the momentum encoder, then enqueue its (dropout-off) embeddings of view 1; no
        value is read back to the host."""
        for online, slow in zip(model.encoder.parameters(), self.momentum_encoder.parameters()):
            slow.mul_(self.momentum).add_(online.detach(), alpha=1 - self.momentum)
        if self.queue_size == 0:
            return
        was_training = self.momentum_encoder.training
        # nn.Module's own mode switch: transformers' override also switches its hub kernels, which graph
        # capture (--torch_compile) cannot trace
        nn.Module.train(self.momentum_encoder, False)
        try:
            outputs = encoder_outputs(self.momentum_encoder, model.pooler_type, view1["input_ids"],
                                      view1["attention_mask"], model.unpad,
                                      **{k: v for k, v in view1.items() if k not in ("input_ids", "attention_mask")})
        finally:
            nn.Module.train(self.momentum_encoder, was_training)
        if model.mlp is None:
            new = pool(model.pooler_type, view1["attention_mask"], outputs)
        else:
            new = model.mlp(pool("cls_before_pooler", view1["attention_mask"], outputs))
        rows = min(new.shape[0], self.queue_size)
        self.queue.copy_(torch.cat([self.queue, new.detach().float()[-rows:]])[-self.queue_size:])
        self.queue_len.add_(rows).clamp_(max=self.queue_size)
