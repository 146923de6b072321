"""PromptBERT: template rows of both views, the [MASK] gather, the denoising deltas (positions shifted, with
gradient), the loss against the formula, the flags' checks, the dev and export embeddings."""

import argparse
import math

import pytest
import torch

from tests.conftest import make_tiny_model
from utils.methods import add_arguments
from utils.methods.promptbert import PromptBERT
from utils.model import SimCSEModel, load_pretrained

T1, T2 = 'This sentence of "{sentence}" means {mask}.', 'This sentence : "{sentence}" means {mask}.'
SENTENCES = ["a man is playing guitar", "two dogs", "the small cat is eating food in the park"]


def _args(**kw):
    return argparse.Namespace(**{"seed": 0, "prompt_template1": T1, "prompt_template2": T2, "prompt_denoise": True,
                                 "max_seq_length": 16, **kw})


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory):
    """A tiny BERT without dropout: train mode (the MLP on) is deterministic."""
    return make_tiny_model(tmp_path_factory.mktemp("still-bert"), "bert", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


def _setup(path, **kw):
    encoder, tokenizer = load_pretrained(str(path))
    torch.manual_seed(0)
    model = SimCSEModel(encoder, "cls", mlp_only_train=True)
    return model, PromptBERT(_args(**kw), model, tokenizer), tokenizer


def _batch(tokenizer, sentences=SENTENCES):
    return dict(tokenizer(sentences, padding=True, truncation=True, max_length=16, return_tensors="pt"))


def _text(template, sentence, tokenizer):
    return template.replace("{mask}", tokenizer.mask_token).replace("{sentence}", sentence)


# ----------------------------------------------------------------------------- flags and checks


def test_flags_recipe_and_the_export_embedding(tiny_bert):
    parser = argparse.ArgumentParser()
    add_arguments(parser)  # the registry files every PromptBERT flag under its method's group
    group = next(g for g in parser._action_groups if g.title == "--method promptbert only")
    assert sorted(a.option_strings[0] for a in group._group_actions) == sorted(f for f, _ in PromptBERT.flags)
    parser = argparse.ArgumentParser()
    for flag, kwargs in PromptBERT.flags:
        parser.add_argument(flag, **kwargs)
    args = parser.parse_args([])
    assert (args.prompt_template1, args.prompt_template2, args.prompt_denoise) == (T1, T2, True)
    assert parser.parse_args(["--no-prompt_denoise"]).prompt_denoise is False
    assert PromptBERT.recipe["per_device_train_batch_size"] == 256 and PromptBERT.recipe["learning_rate"] == 1e-5
    assert PromptBERT.recipe["mlp_only_train"] is True and PromptBERT.rr_default == "mlp"
    _, method, _ = _setup(tiny_bert)
    assert method.eval_embedding() == {"pooler": "mask", "template": T1, "period": True,
                                       "dev": {"period": False, "denoise": True}}


@pytest.mark.parametrize("flag, template, needle", [
    ("--prompt_template1", 'This sentence of "{sentence}" means.', "needs exactly one {mask}"),
    ("--prompt_template2", "{mask} {mask} {sentence}", "needs exactly one {mask}"),
    ("--prompt_template1", "no sentence here {mask}", "needs exactly one {sentence}"),
    ("--prompt_template2", "{sentence} and {sentence} {mask}", "needs exactly one {sentence}"),
])
def test_check_args_names_the_template_flag(flag, template, needle):
    message = PromptBERT.check_args(_args(**{flag[2:]: template}))
    assert message.startswith(f"argument {flag}: {needle}") and repr(template) in message
    assert PromptBERT.check_args(_args()) is None


def test_check_tokenizer_needs_a_mask_token(tiny_bert):
    _, tokenizer = load_pretrained(str(tiny_bert))
    assert PromptBERT.check_tokenizer(tokenizer, _args()) is None
    # a literal mask token in the template's text makes two
    message = PromptBERT.check_tokenizer(tokenizer, _args(prompt_template2="[MASK] {sentence} {mask}"))
    assert message.startswith("argument --prompt_template2:") and "2 mask tokens" in message
    tokenizer.mask_token = None
    message = PromptBERT.check_tokenizer(tokenizer, _args())
    assert "--model_name_or_path" in message and "mask token" in message


# ----------------------------------------------------------------------------- views


SHORT = 'so "{sentence}" is {mask}'  # a second template shorter than the first: the views pad to one width


@pytest.mark.parametrize("second", [T2, SHORT])
def test_views_are_the_templates_tokenized_as_text(tiny_bert, second):
    _, method, tokenizer = _setup(tiny_bert, prompt_template2=second)
    batch = _batch(tokenizer)
    inputs = method.views(batch, step=0)
    b = len(SENTENCES)
    assert set(inputs) == {"input_ids", "attention_mask", "token_type_ids", "sentence_lengths"}
    assert inputs["input_ids"].shape[0] == 2 * b and inputs["input_ids"].shape == inputs["attention_mask"].shape
    for v, template in enumerate((T1, second)):
        for i, s in enumerate(SENTENCES):
            row, mask = inputs["input_ids"][v * b + i], inputs["attention_mask"][v * b + i]
            # [CLS] prefix s suffix [SEP]: the text template tokenized whole, no period added to s
            expected = tokenizer(_text(template, s, tokenizer))["input_ids"]
            assert row[: len(expected)].tolist() == expected
            assert mask.tolist() == [1] * len(expected) + [0] * (len(row) - len(expected))
            assert (row[len(expected):] == tokenizer.pad_token_id).all()
            assert inputs["sentence_lengths"][v * b + i] == len(tokenizer(s, add_special_tokens=False)["input_ids"])
    assert (inputs["token_type_ids"] == 0).all()
    assert (method.templates[0].length == method.templates[1].length) == (second == T2)
    without = method.views({k: v for k, v in batch.items() if k != "token_type_ids"}, step=0)
    assert "token_type_ids" not in without


@pytest.mark.parametrize("second", [T2, SHORT, "{mask} is {sentence}"])
def test_the_mask_columns_hold_the_mask_token(tiny_bert, second):
    _, method, tokenizer = _setup(tiny_bert, prompt_template2=second)
    inputs = method.views(_batch(tokenizer), step=0)
    n = len(inputs["sentence_lengths"])
    template = torch.arange(n) // (n // 2)
    columns = method.mask_columns(inputs["sentence_lengths"], template)
    assert (inputs["input_ids"][torch.arange(n), columns] == tokenizer.mask_token_id).all()
    assert ((inputs["input_ids"] == tokenizer.mask_token_id).sum(1) == 1).all()


# ----------------------------------------------------------------------------- denoising


def _independent_deltas(encoder, tokenizer, template, copies, start=0):
    """(copies, H): the empty template encoded alone, once per k, positions shifted by k after the slot."""
    ids = tokenizer(_text(template, "", tokenizer))["input_ids"]  # [CLS] prefix suffix [SEP]
    before = template.split("{sentence}")[0].replace("{mask}", tokenizer.mask_token)
    slot = 1 + len(tokenizer(before, add_special_tokens=False)["input_ids"])
    mask_at = ids.index(tokenizer.mask_token_id)
    out = []
    for k in range(copies):
        positions = [start + j + (k if j >= slot else 0) for j in range(len(ids))]
        # an explicit mask: without one, transformers reads a jump in position_ids as a second packed sequence
        hidden = encoder(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         position_ids=torch.tensor([positions])).last_hidden_state
        out.append(hidden[0, mask_at])
    return torch.stack(out)


@pytest.mark.parametrize("second", [T2, "{mask} is {sentence}"])  # a [MASK] after the slot, or before it
def test_deltas_match_each_empty_template_encoded_alone(tiny_bert, second):
    model, method, tokenizer = _setup(tiny_bert, prompt_template2=second)
    model.eval()  # dropout off
    with torch.no_grad():
        deltas = method.deltas(model.encoder)
        assert deltas.shape == (2, 17, 32)  # K = max_seq_length + 1 copies
        for t, template in enumerate((T1, second)):
            expected = _independent_deltas(model.encoder, tokenizer, template, 17)
            torch.testing.assert_close(deltas[t], expected, atol=1e-5, rtol=1e-4)


def test_copy_k_places_the_template_as_a_k_token_sentence_would(tiny_bert, tiny_roberta):
    _, method, tokenizer = _setup(tiny_bert)
    inputs, mask_columns = method.denoise_inputs
    positions = inputs["position_ids"].view(2, 17, -1)
    for t, template in enumerate(method.templates):
        slot = 1 + len(template.prefix)
        for k in (0, 1, 5, 16):
            row = positions[t, k, : template.length].tolist()
            assert row == list(range(slot)) + list(range(slot + k, template.length + k))
            # the [MASK]'s position equals its column in a views row holding a k-token sentence
            column = method.mask_columns(torch.tensor([k]), torch.tensor([t]))
            assert row[mask_columns[t * 17 + k]] == int(column)
    # copy 0 is the empty template as the encoder's own forward places it (RoBERTa counts from padding_idx + 1)
    for path in (tiny_bert, tiny_roberta):
        model, method, tokenizer = _setup(path)
        model.eval()
        with torch.no_grad():
            deltas = method.deltas(model.encoder)
            ids = tokenizer(_text(T1, "", tokenizer), return_tensors="pt")["input_ids"]
            plain = model.encoder(input_ids=ids).last_hidden_state[0, ids[0].tolist().index(tokenizer.mask_token_id)]
        torch.testing.assert_close(deltas[0, 0], plain, atol=1e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- loss and gradients


def _cross_entropy_by_hand(z1, z2, temp):
    cos = lambda a, b: float(a @ b / (a.norm() * b.norm()))  # noqa: E731
    total = 0.0
    for i in range(len(z1)):
        logits = [cos(z1[i], z2[j]) / temp for j in range(len(z2))]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(z1)


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_loss_matches_the_formula_row_by_row(still_bert, mode):
    model, method, tokenizer = _setup(still_bert)
    # float64: h - delta is a small difference of two large states in a random model (the template dominates)
    model.double().train(mode == "train")  # train: z = MLP(h - delta); eval: z = h - delta
    out = method(model, method.views(_batch(tokenizer), step=0), 0.05)
    with torch.no_grad():
        deltas = [_independent_deltas(model.encoder, tokenizer, t, 17) for t in (T1, T2)]
        z = []
        for template, delta in zip((T1, T2), deltas):
            for s in SENTENCES:
                ids = tokenizer(_text(template, s, tokenizer), return_tensors="pt")["input_ids"]
                h = model.encoder(input_ids=ids).last_hidden_state[0, ids[0].tolist().index(tokenizer.mask_token_id)]
                pooled = h - delta[len(tokenizer(s, add_special_tokens=False)["input_ids"])]
                z.append(model.mlp(pooled) if mode == "train" else pooled)
        z = torch.stack(z)
    torch.testing.assert_close(out.z.detach(), z, atol=1e-10, rtol=1e-8)
    if mode == "eval":
        torch.testing.assert_close(out.pooled, out.z)
    b = len(SENTENCES)
    assert out.loss.item() == pytest.approx(_cross_entropy_by_hand(z[:b], z[b:], 0.05), rel=1e-8)


def test_without_denoising_the_embedding_is_the_raw_mask_state(still_bert):
    model, method, tokenizer = _setup(still_bert, prompt_denoise=False)
    model.eval()
    inputs = method.views(_batch(tokenizer), step=0)
    with torch.no_grad():
        out = method(model, inputs, 0.05)
        ids = tokenizer(_text(T2, SENTENCES[1], tokenizer), return_tensors="pt")["input_ids"]
        h = model.encoder(input_ids=ids).last_hidden_state[0, ids[0].tolist().index(tokenizer.mask_token_id)]
    torch.testing.assert_close(out.pooled[len(SENTENCES) + 1], h, atol=1e-5, rtol=1e-4)


def test_gradients_reach_the_encoder_through_the_template_rows(tiny_bert):
    model, method, tokenizer = _setup(tiny_bert)
    model.train()
    captured = []

    def keep_template_states(module, args, kwargs, output):  # the call that shifts positions: the template rows
        if "position_ids" in kwargs:
            output.last_hidden_state.retain_grad()
            captured.append(output.last_hidden_state)

    handle = model.encoder.register_forward_hook(keep_template_states, with_kwargs=True)
    try:
        inputs = method.views(_batch(tokenizer), step=0)
        method(model, inputs, 0.05).loss.backward()
    finally:
        handle.remove()
    [states] = captured  # both templates, every copy, in one encoder call
    assert states.shape[0] == 2 * 17
    grad = states.grad.view(2, 17, states.shape[1], -1).abs().sum((2, 3))  # per (template, copy)
    used = torch.zeros(2, 17, dtype=torch.bool)
    b = len(SENTENCES)
    for v in range(2):
        used[v, inputs["sentence_lengths"][v * b : (v + 1) * b]] = True
    assert (grad[used] > 0).all() and (grad[~used] == 0).all()  # the deltas a row subtracts, and only those


def test_a_sentence_longer_than_the_copies_is_refused(tiny_bert):
    _, method, tokenizer = _setup(tiny_bert, max_seq_length=4)
    with pytest.raises(ValueError, match="at most 4"):
        method.views(_batch(tokenizer), step=0)


# ----------------------------------------------------------------------------- dev selection


def test_dev_embedding_is_template_1_mask_minus_delta_in_eval_mode(tiny_bert):
    from utils.encode import encode
    from utils.prompt import apply_template

    model, method, tokenizer = _setup(tiny_bert)
    model.double().train()  # float64: h - delta is small against h (see the loss test)
    module, template = method.dev_embedding(model)
    assert model.training and module.training  # encode() restores this mode afterwards
    assert template == T1
    assert apply_template(["two dogs"], template, tokenizer.mask_token) == [_text(T1, "two dogs", tokenizer)]
    got = encode(module, tokenizer, SENTENCES, batch_size=2, template=template)  # no period in the dev selection
    assert model.training
    model.eval()
    with torch.no_grad():
        delta = _independent_deltas(model.encoder, tokenizer, T1, 30)
        for row, s in zip(got, SENTENCES):
            ids = tokenizer(_text(T1, s, tokenizer), return_tensors="pt")["input_ids"]
            h = model.encoder(input_ids=ids).last_hidden_state[0, ids[0].tolist().index(tokenizer.mask_token_id)]
            expected = (h - delta[len(tokenizer(s, add_special_tokens=False)["input_ids"])]).float()
            torch.testing.assert_close(row, expected, atol=1e-7, rtol=1e-5)
