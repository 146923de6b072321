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
- Evaluation, two embeddings, as in the authors' code: the dev selection in training reads template 1's
  [MASK] state minus its delta (eval mode, no MLP; `dev_embedding`); the published test numbers read the
  raw [MASK] state of text template 1 with a '.' added to a sentence that ends without one. The export
  records both (`eval_embedding`: utils/embedding.py reads them).
- Sentences are cut at --max_seq_length tokens with [CLS] and [SEP] (so at max_seq_length - 2 tokens); the
  authors cut the sentence alone at 32, which --max_seq_length 34 reproduces.
"""

import argparse
import inspect

import numpy as np
import torch

from utils.data import pad_batch
from utils.loss import contrastive_loss
from utils.methods.base import Method, Output
from utils.pooling import encoder_outputs, gather_rows, position_start
from utils.prompt import denoised_prompt, empty_template_inputs, template_deltas, template_problem, tokenize_template

TEMPLATE_FLAGS = ("--prompt_template1", "--prompt_template2")


def sentence_ids(input_ids: torch.Tensor, attention_mask: torch.Tensor, cls_id: int, sep_id: int) -> list:
    """(B, L) rows [CLS] s [SEP] (any padding) -> B lists of the sentence ids s."""
    rows = []
    for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        real = [t for t, m in zip(ids, mask) if m]
        if len(real) < 2 or real[0] != cls_id or real[-1] != sep_id:
            raise ValueError("promptbert: the batch rows must be tokenized with special tokens, [CLS] s [SEP]")
        rows.append(real[1:-1])
    return rows


class PromptBERT(Method):
    name, label = "promptbert", "PromptBERT"
    rr_default = "mlp"
    flags = (
        ("--prompt_template1", dict(default='This sentence of "{sentence}" means {mask}.',
                                    help="view 1's template, also the evaluated one ({sentence} and {mask} in it)")),
        ("--prompt_template2", dict(default='This sentence : "{sentence}" means {mask}.', help="view 2's template")),
        ("--prompt_denoise", dict(action=argparse.BooleanOptionalAction, default=True,
                                  help="subtract each template's own [MASK] state (template denoising)")),
    )
    # the authors' run.sh unsup-bert
    recipe = {**Method.recipe, "per_device_train_batch_size": 256, "learning_rate": 1e-5, "mlp_only_train": True}

    def __init__(self, args, model, tokenizer, steps_per_epoch: int | None = None):
        super().__init__(args, model, tokenizer, steps_per_epoch)
        self.template_texts = (args.prompt_template1, args.prompt_template2)
        self.templates = tuple(tokenize_template(tokenizer, t) for t in self.template_texts)
        self.denoise = args.prompt_denoise
        self.tokenizer = tokenizer  # the dev embedding tokenizes template 1 at each evaluation
        self.cls_id, self.sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        encoder = model.encoder
        self.start = position_start(encoder)
        self.max_copies = (encoder.config.max_position_embeddings - self.start
                           - max(t.length for t in self.templates) + 1)  # copies whose positions all exist
        if args.max_seq_length - 2 >= self.max_copies:  # a batch's sentence has up to max_seq_length - 2 tokens
            raise ValueError(f"argument --max_seq_length: {args.max_seq_length} tokens put in PromptBERT's templates "
                             f"outrun the encoder's {encoder.config.max_position_embeddings} positions; at most "
                             f"{max(self.max_copies + 1, 2)} fit")
        # k = 0 .. max_seq_length: every sentence length a batch can hold (the authors encode 50 copies)
        self.copies = min(args.max_seq_length + 1, self.max_copies)
        if self.denoise and "position_ids" not in inspect.signature(encoder.forward).parameters:
            raise ValueError(f"--prompt_denoise: {type(encoder).__name__} takes no position_ids, which the "
                             "denoising shifts; use --no-prompt_denoise")
        self.denoise_inputs = empty_template_inputs(self.templates, self.copies, self.cls_id, self.sep_id,
                                                    self.pad_id, self.start)

    @classmethod
    def check_args(cls, args):
        if getattr(args, "pooler_type", "cls") != "cls":
            return (f"argument --pooler_type: PromptBERT reads the [MASK] state and trains SimCSE's cls head over it; "
                    f"use cls, got {args.pooler_type}")
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

    def dev_embedding(self, model):
        """Template 1's [MASK] state minus its delta, for the weights as they are now (call at each evaluation)."""
        return denoised_prompt(model.encoder, self.tokenizer, self.template_texts[0], self.denoise, model.unpad), \
            self.template_texts[0]

    def eval_embedding(self):
        """The published test embedding (text template 1, the '.' rule, the raw [MASK] state) and the dev one."""
        return {"pooler": "mask", "template": self.template_texts[0], "period": True,
                "dev": {"period": False, "denoise": self.denoise}}
