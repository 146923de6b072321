"""InfoCSE: the MLM masks, the BatchNorm head, the frozen lower encoder, the heads, the loss written out
from its formula, the MLM gradient's one path ([CLS]), the flag checks and the unpadded forward."""

import argparse
import copy
import math
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import make_tiny_model
from utils.loss import contrastive_loss
from utils.methods.base import TrainingModel
from utils.methods.infocse import IGNORE, InfoCSE, ProjectionMLP
from utils.model import SimCSEModel, load_pretrained

SENTENCES = ["a man is playing guitar", "two dogs", "the cat is small and the dog is big", "people in the park"]


def _args(**kw):
    return argparse.Namespace(**{"seed": 0, "max_seq_length": 32, "pooler_type": "cls", "mlp_only_train": True,
                                 "per_device_train_batch_size": 4, "temp": 0.05, "mlm_probability": 0.4,
                                 "mlm_weight": 1e-5, "frozen_layers": None, "head_layers": 2, "mlm_eval": True,
                                 "mlm_decoder": "trained", **kw})


def _method(path, pooler="cls", mlp_only_train=True, **kw):
    """(sentence model in train mode, InfoCSE, tokenizer) on the checkpoint at `path`."""
    encoder, tokenizer = load_pretrained(str(path))
    torch.manual_seed(0)
    model = SimCSEModel(encoder, pooler, mlp_only_train=mlp_only_train).train()
    return model, InfoCSE(_args(model_name_or_path=str(path), **kw), model, tokenizer), tokenizer


def _batch(tokenizer, sentences=SENTENCES):
    return dict(tokenizer(sentences, padding=True, return_tensors="pt"))


@pytest.fixture(scope="module")
def still_bert(tmp_path_factory):
    """A tiny BERT without dropout: train mode (BatchNorm on the batch's statistics) is then deterministic."""
    return make_tiny_model(tmp_path_factory.mktemp("still-bert"), "bert", hidden_dropout_prob=0.0,
                           attention_probs_dropout_prob=0.0)


# ----------------------------------------------------------------------------- masks


def _synthetic_batch(tokenizer, rows=200, length=30, seed=0):
    """Rows of [CLS] + random ordinary tokens + [SEP] + padding, lengths 5 .. length."""
    g = torch.Generator().manual_seed(seed)
    specials = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in specials])
    ids = torch.full((rows, length), tokenizer.pad_token_id)
    mask = torch.zeros((rows, length), dtype=torch.long)
    for r in range(rows):
        n = int(torch.randint(5, length + 1, (1,), generator=g))
        body = ordinary[torch.randint(len(ordinary), (n - 2,), generator=g)]
        ids[r, :n] = torch.cat([torch.tensor([tokenizer.cls_token_id]), body, torch.tensor([tokenizer.sep_token_id])])
        mask[r, :n] = 1
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask}


def test_views_stack_both_views_and_mask_like_bert(tiny_bert):
    _, method, tokenizer = _method(tiny_bert)
    batch = _synthetic_batch(tokenizer)
    inputs = method.views(batch, step=3)
    for key, value in batch.items():
        assert torch.equal(inputs[key], torch.cat([value, value]))
    ids, masked, labels = inputs["input_ids"], inputs["mlm_input_ids"], inputs["mlm_labels"]
    assert masked.shape == labels.shape == ids.shape == (400, 30)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))
    eligible = inputs["attention_mask"].bool() & ~special
    chosen = labels != IGNORE
    assert not (chosen & ~eligible).any()  # [CLS], [SEP] and padding are never masked
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])  # only the chosen positions change
    assert abs(chosen.sum() / eligible.sum() - 0.4) < 0.02
    n = chosen.sum()
    to_mask = (masked[chosen] == tokenizer.mask_token_id).sum() / n
    kept = (masked[chosen] == ids[chosen]).sum() / n  # 10 %, plus random draws that hit the same id
    assert abs(to_mask - 0.8) < 0.03
    assert abs(kept - 0.1) < 0.03
    assert abs(1 - to_mask - kept - 0.1) < 0.03  # the random replacements
    assert not torch.equal(chosen[:200], chosen[200:])  # each view is masked on its own


def test_masks_repeat_for_a_step_and_change_with_the_step(tiny_bert):
    _, method, tokenizer = _method(tiny_bert)
    _, resumed, _ = _method(tiny_bert)  # a resumed run builds the method again
    batch = _synthetic_batch(tokenizer, rows=20)
    first, again, other = method.views(batch, 7), resumed.views(batch, 7), method.views(batch, 8)
    for key in ("mlm_input_ids", "mlm_labels"):
        assert torch.equal(first[key], again[key])
    assert not torch.equal(first["mlm_labels"], other["mlm_labels"])


# ----------------------------------------------------------------------------- heads and the frozen copy


def test_projection_mlp_shape_and_batchnorm():
    torch.manual_seed(0)
    head = ProjectionMLP(8).train()
    assert head.fc1.bias is None and head.fc2.bias is None
    assert (head.fc1.in_features, head.fc1.out_features, head.bn1.num_features) == (8, 16, 16)
    assert head.bn1.affine and not head.bn2.affine
    x = torch.randn(64, 8) * 3 + 1
    z = head(x)
    assert z.shape == (64, 8)
    # the last BatchNorm standardises every dimension over the batch
    torch.testing.assert_close(z.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    y = head.fc2(head.activation(head.bn1(head.fc1(x))))
    var = y.var(0, unbiased=False)
    torch.testing.assert_close(z.var(0, unbiased=False), var / (var + head.bn2.eps))  # 1 but for BatchNorm's eps
    head.eval()  # the running statistics now: one update from their start is not the batch's
    assert not torch.allclose(head(x), z, atol=1e-2)


def test_heads_and_frozen_copy_are_built_from_the_encoder(tiny_bert):
    model, method, tokenizer = _method(tiny_bert)
    encoder = model.encoder
    assert isinstance(model.mlp, ProjectionMLP)
    assert method.frozen_layers == 2 and len(method.frozen.layer) == 2  # the authors' 6, or all of a shallower one
    assert len(method.c_head) == 2 and all(type(layer) is type(encoder.encoder.layer[0]) for layer in method.c_head)
    query = method.c_head[0].attention.self.query
    assert abs(query.weight.std().item() - encoder.config.initializer_range) < 0.003  # fresh, the encoder's init
    assert not torch.allclose(query.weight, encoder.encoder.layer[0].attention.self.query.weight)
    assert torch.count_nonzero(query.bias) == 0 and torch.count_nonzero(method.lm_head.bias) == 0
    # the frozen copy's word embeddings and the trained decoder: both equal to the online ones at the start,
    # none of the three shared
    online = encoder.embeddings.word_embeddings.weight
    assert method.frozen.word_embeddings.data_ptr() != online.data_ptr()
    assert torch.equal(method.frozen.word_embeddings, online)
    decoder = method.lm_head.decoder
    assert decoder.requires_grad and decoder.data_ptr() not in (online.data_ptr(), method.frozen.word_embeddings.data_ptr())
    assert torch.equal(decoder, online)
    assert method.mlm_head_source.startswith("initialised")  # a plain encoder checkpoint: no MLM head
    assert all(not p.requires_grad for p in method.frozen.parameters())
    keys = TrainingModel(model, method).state_dict()
    assert "method.frozen.layer.0.attention.self.query.weight" in keys  # saved and resumed with the state
    assert "model.mlp.bn1.running_mean" in keys


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("additive_mask", [False, True])
def test_frozen_states_equal_the_initial_encoders_lower_layers(tiny_bert, attention, additive_mask, monkeypatch):
    from transformers import AutoModel

    _, tokenizer = load_pretrained(str(tiny_bert))
    encoder = AutoModel.from_pretrained(str(tiny_bert), attn_implementation=attention).eval()
    model = SimCSEModel(encoder, "cls")
    method = InfoCSE(_args(frozen_layers=2, model_name_or_path=str(tiny_bert)), model, tokenizer)
    model.eval(), method.eval()  # dropout off in both
    batch = _batch(tokenizer)
    with torch.no_grad():
        expected = encoder(**batch, output_hidden_states=True).hidden_states[2]
        if additive_mask:  # the additive (B, 1, 1, L) mask, as for models whose file has no mask builder
            monkeypatch.delattr(sys.modules[type(encoder.encoder.layer[0]).__module__], "create_bidirectional_mask",
                                raising=False)
        states = method.frozen(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"])
    real = batch["attention_mask"].bool()
    assert not real.all()  # some padding, so the mask matters
    torch.testing.assert_close(states[real], expected[real], atol=1e-5, rtol=1e-5)


def test_the_frozen_copy_gets_no_gradient_and_keeps_its_weights(tiny_bert):
    model, method, tokenizer = _method(tiny_bert, mlm_weight=1.0)
    frozen_before = copy.deepcopy(method.frozen.state_dict())
    online_before = model.encoder.embeddings.word_embeddings.weight.detach().clone()
    head_before = method.c_head[0].attention.self.query.weight.detach().clone()
    training = TrainingModel(model, method)
    optimizer = torch.optim.AdamW(training.parameters(), lr=1e-2, weight_decay=0.1)
    out = training(method.views(_batch(tokenizer), step=0), 0.05)
    out.loss.backward()
    assert all(p.grad is None for p in method.frozen.parameters())
    optimizer.step()
    for key, value in method.frozen.state_dict().items():
        assert torch.equal(value, frozen_before[key]), key
    assert not torch.equal(model.encoder.embeddings.word_embeddings.weight, online_before)
    assert not torch.equal(method.c_head[0].attention.self.query.weight, head_before)


@pytest.mark.parametrize("mlm_eval", [True, False])
def test_the_frozen_copy_runs_without_dropout_under_mlm_eval(tiny_bert, mlm_eval, monkeypatch):
    # tiny_bert has dropout 0.1: two passes of the copy in training mode differ, in eval mode they agree
    model, method, tokenizer = _method(tiny_bert, mlm_eval=mlm_eval)
    inputs = method.views(_batch(tokenizer), step=0)
    seen = []
    forward = type(method.frozen).forward
    monkeypatch.setattr(type(method.frozen), "forward",
                        lambda self, *a, **k: seen.append((self.training, forward(self, *a, **k))) or seen[-1][1])
    _, pooled = model(**{k: v for k, v in inputs.items() if not k.startswith("mlm_")}, return_pooled=True)
    for _ in range(2):
        method.mlm_loss(pooled, inputs["mlm_input_ids"], inputs["mlm_labels"], inputs["attention_mask"])
    (mode, first), (_, second) = seen
    assert mode is not mlm_eval
    assert torch.equal(first, second) is mlm_eval
    assert method.frozen.training  # the module's own mode is restored


def test_the_decoder_is_trained_or_frozen(tiny_bert):
    model, method, tokenizer = _method(tiny_bert, mlm_weight=1.0)
    out = method(model, method.views(_batch(tokenizer), step=0), 0.05)
    out.loss.backward()
    assert method.lm_head.decoder.grad is not None and method.lm_head.decoder.grad.abs().sum() > 0
    model, frozen, tokenizer = _method(tiny_bert, mlm_decoder="frozen")
    assert frozen.lm_head.decoder is None  # the frozen copy's word embeddings are read instead
    assert "lm_head.decoder" not in dict(frozen.named_parameters())


def test_a_checkpoints_own_mlm_head_is_loaded(tmp_path, tiny_bert):
    from transformers import AutoTokenizer, BertForMaskedLM

    encoder, _ = load_pretrained(str(tiny_bert))
    torch.manual_seed(3)
    mlm = BertForMaskedLM(encoder.config)
    mlm.bert.load_state_dict(encoder.state_dict(), strict=False)
    with torch.no_grad():
        mlm.cls.predictions.transform.dense.weight.normal_()
        mlm.cls.predictions.bias.uniform_()
    mlm.save_pretrained(tmp_path)
    AutoTokenizer.from_pretrained(str(tiny_bert)).save_pretrained(tmp_path)
    model, method, _ = _method(tmp_path)
    head = mlm.cls.predictions
    assert method.mlm_head_source == "the checkpoint's MLM head"
    torch.testing.assert_close(method.lm_head.dense.weight, head.transform.dense.weight)
    torch.testing.assert_close(method.lm_head.LayerNorm.weight, head.transform.LayerNorm.weight)
    torch.testing.assert_close(method.lm_head.bias, head.bias)
    torch.testing.assert_close(method.lm_head.decoder, mlm.get_output_embeddings().weight)


# ----------------------------------------------------------------------------- the loss


def _batchnorm(x, weight=None, bias=None, eps=1e-5):
    x = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=False) + eps)
    return x if weight is None else x * weight + bias


def _layer(layer, h):
    out = layer(h[None])
    return (out[0] if isinstance(out, tuple) else out)[0]


def _expected_terms(path, model, method, inputs, temp):
    """METHODS.md's InfoCSE terms in float64, computed row by row on each row's real tokens alone (no padding,
    no mask), with the initial encoder read again from disk for the frozen part; (InfoNCE, MLM, z, pooled)."""
    from transformers import AutoModel

    initial = AutoModel.from_pretrained(str(path)).double().eval()
    ids, lengths = inputs["input_ids"], inputs["attention_mask"].sum(1).tolist()
    pooled = torch.stack([model.encoder(input_ids=ids[i, :n][None]).last_hidden_state[0, 0]
                          for i, n in enumerate(lengths)])
    mlp = model.mlp
    h = F.relu(_batchnorm(pooled @ mlp.fc1.weight.T, mlp.bn1.weight, mlp.bn1.bias, mlp.bn1.eps))
    z = _batchnorm(h @ mlp.fc2.weight.T, eps=mlp.bn2.eps)
    z1, z2 = z.chunk(2)
    cos = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T / temp
    infonce = -torch.diagonal(cos.log_softmax(dim=1)).mean()
    head, words = method.lm_head, method.lm_head.decoder
    total, count = 0.0, 0
    for i, n in enumerate(lengths):
        states = initial(input_ids=inputs["mlm_input_ids"][i, :n][None], output_hidden_states=True)
        h = torch.cat([pooled[i][None], states.hidden_states[method.frozen_layers][0, 1:]])
        for layer in method.c_head:
            h = _layer(layer, h)
        at = (inputs["mlm_labels"][i, :n] != IGNORE).nonzero().squeeze(1)
        x = F.gelu(h[at] @ head.dense.weight.T + head.dense.bias)
        x = F.layer_norm(x, x.shape[-1:], head.LayerNorm.weight, head.LayerNorm.bias, head.LayerNorm.eps)
        logits = x @ words.T + head.bias
        total = total - logits.log_softmax(dim=1)[torch.arange(len(at)), inputs["mlm_labels"][i, at]].sum()
        count += len(at)
    assert count > 0
    return infonce, total / count, z, pooled


def test_loss_equals_the_formula_written_out(still_bert):
    model, method, tokenizer = _method(still_bert, mlm_weight=0.5)
    model.double(), method.double()  # float64: rounding far below any real difference (padding, masks)
    inputs = method.views(_batch(tokenizer, SENTENCES + ["dogs"]), step=0)
    out = method(model, inputs, 0.05)  # train mode: BatchNorm on the batch's statistics, no dropout
    with torch.no_grad():
        infonce, mlm, z, pooled = _expected_terms(still_bert, model, method, inputs, 0.05)
    torch.testing.assert_close(out.pooled, pooled, atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(out.z, z, atol=1e-9, rtol=1e-9)
    assert contrastive_loss(*out.z.chunk(2), 0.05).item() == pytest.approx(infonce.item(), rel=1e-10)
    assert out.loss.item() == pytest.approx(infonce.item() + 0.5 * mlm.item(), rel=1e-10)
    assert mlm.item() > 1.0  # the MLM term is there (about log V at the start)


def test_mlm_gradient_reaches_the_encoder_only_through_cls(still_bert, monkeypatch):
    import utils.methods.infocse as infocse

    monkeypatch.setattr(infocse, "contrastive_loss", lambda z1, z2, temp: 0.0 * (z1.sum() + z2.sum()))
    model, method, tokenizer = _method(still_bert, mlm_weight=1.0)
    out = method(model, method.views(_batch(tokenizer), step=0), 0.05)  # loss = the MLM alone
    params = list(model.encoder.parameters())
    direct = torch.autograd.grad(out.loss, params, retain_graph=True, allow_unused=True)
    at_cls, = torch.autograd.grad(out.loss, out.pooled, retain_graph=True)
    via_cls = torch.autograd.grad(out.pooled, params, grad_outputs=at_cls, allow_unused=True)
    assert at_cls.abs().sum() > 0
    for p, d, v in zip(params, direct, via_cls):
        d = torch.zeros_like(p) if d is None else d
        v = torch.zeros_like(p) if v is None else v
        torch.testing.assert_close(d, v, atol=1e-7, rtol=1e-5)
    words = params.index(model.encoder.embeddings.word_embeddings.weight)
    assert direct[words].abs().sum() > 0  # it does reach the embeddings, through [CLS]


def test_mlm_loss_without_masked_positions_is_zero_and_differentiable(tiny_bert):
    model, method, tokenizer = _method(tiny_bert)
    inputs = method.views(_batch(tokenizer), step=0)
    _, pooled = model(**{k: v for k, v in inputs.items() if not k.startswith("mlm_")}, return_pooled=True)
    mlm = method.mlm_loss(pooled, inputs["input_ids"], torch.full_like(inputs["input_ids"], IGNORE),
                          inputs["attention_mask"])
    assert mlm.item() == 0.0
    mlm.backward()


def test_unpadded_training_step_matches_the_padded_one(still_bert):
    # the encoder, the frozen lower layers and the head layers all skip the padding: same loss, same gradients
    model, method, tokenizer = _method(still_bert, mlm_weight=1.0)
    inputs = method.views(_batch(tokenizer), step=0)
    assert inputs["attention_mask"].min() == 0  # the batch has padding to skip
    params = [p for p in [*model.parameters(), *method.parameters()] if p.requires_grad]

    def loss_and_grads():
        for p in params:
            p.grad = None
        loss = method(model, inputs, 0.05).loss
        loss.backward()
        return loss.item(), [p.grad.clone() if p.grad is not None else None for p in params]

    padded, padded_grads = loss_and_grads()
    model.unpad = True
    unpadded, unpadded_grads = loss_and_grads()
    assert math.isfinite(unpadded) and unpadded == pytest.approx(padded, rel=1e-5)
    head = {id(p) for p in [*method.c_head.parameters(), *method.lm_head.parameters()]}
    assert any(g is not None and id(p) in head for p, g in zip(params, unpadded_grads))
    for g, h in zip(padded_grads, unpadded_grads):
        assert (g is None) == (h is None)
        if g is not None:
            torch.testing.assert_close(h, g, rtol=1e-4, atol=1e-6)


def test_unpadded_training_step_with_dropout_runs(tiny_bert):
    model, method, tokenizer = _method(tiny_bert)
    model.unpad = True
    training = TrainingModel(model, method)
    optimizer = torch.optim.AdamW([p for p in training.parameters() if p.requires_grad], lr=1e-3)
    for step in range(2):
        out = training(method.views(_batch(tokenizer), step), 0.05)
        assert math.isfinite(out.loss.item())
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_evaluation_reads_the_raw_cls(tiny_bert):
    model, method, tokenizer = _method(tiny_bert)
    model.eval()
    z, pooled = model(**_batch(tokenizer), return_pooled=True)
    assert torch.equal(z, pooled)
    assert InfoCSE.rr_default == "mlp"  # RR on z: on the [CLS] it collapses the evaluated embedding (docs/methods.md)
    assert InfoCSE.recipe["learning_rate"] == 7e-6 and InfoCSE.recipe["num_train_epochs"] == 2


# ----------------------------------------------------------------------------- flag checks


@pytest.mark.parametrize("change, flag", [
    ({"mlm_probability": 0.0}, "--mlm_probability"), ({"mlm_probability": 1.0}, "--mlm_probability"),
    ({"mlm_weight": -1e-5}, "--mlm_weight"), ({"head_layers": 0}, "--head_layers"),
    ({"frozen_layers": 0}, "--frozen_layers"), ({"pooler_type": "avg"}, "--pooler_type"),
    ({"mlp_only_train": False}, "--no-mlp_only_train"),
])
def test_check_args_names_the_bad_flag(change, flag):
    message = InfoCSE.check_args(_args(**change))
    assert message.startswith(f"argument {flag}:")


def test_check_args_accepts_the_published_values():
    assert InfoCSE.check_args(_args()) is None
    assert InfoCSE.check_args(_args(frozen_layers=6)) is None
    defaults = {flag: kwargs["default"] for flag, kwargs in InfoCSE.flags}
    assert defaults == {"--mlm_probability": 0.4, "--mlm_weight": 1e-5, "--frozen_layers": None, "--head_layers": 2,
                        "--mlm_eval": True, "--mlm_decoder": "trained"}


def test_check_tokenizer_needs_a_mask_token(tiny_bert):
    _, tokenizer = load_pretrained(str(tiny_bert))
    assert InfoCSE.check_tokenizer(tokenizer, _args(model_name_or_path="tiny")) is None
    no_mask = types.SimpleNamespace(mask_token_id=None)
    assert "--model_name_or_path tiny" in InfoCSE.check_tokenizer(no_mask, _args(model_name_or_path="tiny"))


@pytest.mark.parametrize("kw, flag", [({"frozen_layers": 3}, "--frozen_layers"),
                                      ({"pooler": "avg"}, "--pooler_type"),
                                      ({"mlp_only_train": False}, "mlp_only_train")])
def test_the_model_is_refused_with_the_flag_named(tiny_bert, kw, flag):
    with pytest.raises(ValueError, match=flag):
        _method(tiny_bert, **kw)


def test_roberta_trains_and_its_frozen_states_match(tiny_roberta):
    model, method, tokenizer = _method(tiny_roberta, mlm_weight=1.0)
    inputs = method.views(_batch(tokenizer), step=0)
    out = method(model, inputs, 0.05)
    assert math.isfinite(out.loss.item())
    out.loss.backward()
    model.eval(), method.eval()
    with torch.no_grad():
        states = method.frozen(inputs["mlm_input_ids"], inputs["attention_mask"])
        expected = model.encoder(input_ids=inputs["mlm_input_ids"], attention_mask=inputs["attention_mask"],
                                 output_hidden_states=True).hidden_states[method.frozen_layers]
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(states[real], expected[real], atol=1e-5, rtol=1e-5)
