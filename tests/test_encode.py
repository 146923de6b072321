import numpy as np
import pytest
import torch

from utils.data import pad_batch
from utils.encode import default_max_length, encode, length_batches
from utils.model import load_pretrained
from utils.pooling import PooledEncoder


def test_encode_keeps_input_order_and_matches_one_by_one(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = PooledEncoder(encoder, "avg").train()  # encode must switch to eval and back
    sentences = ["a b", "the man is riding a big red bike in the park", "a b", "two dogs", "water"]
    batched = encode(model, tokenizer, sentences, batch_size=2)
    single = torch.cat([encode(model, tokenizer, [s], batch_size=1) for s in sentences])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-4)
    assert torch.equal(batched[0], batched[2])
    assert model.training


def test_default_max_length(tiny_bert, tiny_roberta):
    for path, expected in ((tiny_bert, 64), (tiny_roberta, 62)):
        encoder, tokenizer = load_pretrained(str(path))
        assert default_max_length(tokenizer, encoder.config) == expected
        tokenizer.model_max_length = int(1e30)  # transformers' "no limit": fall back to the positions
        assert default_max_length(tokenizer, encoder.config) == expected


def test_pad_batch_right_pads_each_column():
    columns = {"input_ids": [[5, 6, 7], [8], [9, 10]], "attention_mask": [[1, 1, 1], [1], [1, 1]]}
    batch = pad_batch(columns, np.array([2, 1]), pad_id=3)
    assert batch["input_ids"].tolist() == [[9, 10], [8, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1], [1, 0]]
    assert batch["input_ids"].dtype == torch.long


def test_length_batches_sort_by_length_and_fill_a_token_budget():
    lengths = [3, 10, 1, 10, 4, 2]
    fixed = length_batches(lengths, batch_size=4)
    assert [b.tolist() for b in fixed] == [[1, 3, 4, 0], [5, 2]]  # longest first, ties in input order
    budget = length_batches(lengths, batch_size=4, max_tokens=20)
    assert [b.tolist() for b in budget] == [[1, 3], [4, 0, 5, 2]]  # 2 x 10 tokens, then 4 x 4
    assert [b.tolist() for b in length_batches([50, 2], 4, max_tokens=20)] == [[0], [1]]  # always >= 1 row
    assert sorted(np.concatenate(budget).tolist()) == list(range(len(lengths)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_encode_on_a_gpu_matches_the_cpu(tiny_bert):
    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = PooledEncoder(encoder, "avg")
    sentences = [" ".join(["word"] * n) for n in range(1, 60, 3)] + ["a b", "a b"]
    cpu = encode(model, tokenizer, sentences, batch_size=2)
    gpu = encode(model.cuda(), tokenizer, sentences, batch_size=2)  # token budget, bf16 autocast
    assert gpu.device.type == "cpu" and gpu.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(gpu, cpu).min() > 0.99


def test_apply_template_and_the_period_rule():
    from utils.prompt import apply_template

    sentences = ["a man sings", "done.", "why?", 'he said "no"', "it's 'fine'", "a list,", "{mask} {sentence}", ""]
    assert apply_template(sentences, None, period=True) == [
        "a man sings.", "done.", "why?", 'he said "no"', "it's 'fine'", "a list,.", "{mask} {sentence}.", ""]
    assert apply_template(["a b"], 'This sentence of "{sentence}" means {mask}.', "[MASK]", period=True) == [
        'This sentence of "a b." means [MASK].']
    # the sentence's own braces are text, never placeholders; no period unless asked
    assert apply_template(["{mask}"], "{sentence} -> {mask}", "<mask>") == ["{mask} -> <mask>"]
    assert apply_template(["x"], None) == ["x"]
    with pytest.raises(ValueError, match="no mask token"):
        apply_template(["x"], "{sentence} {mask}", None)
    with pytest.raises(ValueError, match="exactly one {sentence}"):
        apply_template(["x"], "no slot {mask}", "[MASK]")


def test_encode_with_a_template_embeds_the_formatted_sentences(tiny_bert):
    from utils.prompt import apply_template

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = PooledEncoder(encoder, "mask", mask_token_id=tokenizer.mask_token_id)
    sentences = ["a man is riding a horse", "two dogs.", "a man is riding a horse"]
    template = 'This sentence of "{sentence}" means {mask}.'
    got = encode(model, tokenizer, sentences, batch_size=2, template=template, period=True)
    texts = apply_template(sentences, template, tokenizer.mask_token, period=True)
    torch.testing.assert_close(got, encode(model, tokenizer, texts, batch_size=2))
    assert torch.equal(got[0], got[2])
    with pytest.raises(ValueError, match="row 0 has 0"):  # the mask pooler without a template
        encode(model, tokenizer, ["a b"])


def test_a_templated_sentence_too_long_for_the_encoder_keeps_its_mask(tiny_bert):
    from utils.model import load_pretrained
    from utils.pooling import PooledEncoder
    from utils.prompt import tokenize_template

    encoder, tokenizer = load_pretrained(str(tiny_bert))
    model = PooledEncoder(encoder, "mask", mask_token_id=tokenizer.mask_token_id).eval()
    template = 'This sentence of "{sentence}" means {mask}.'
    long = "a man is playing guitar on the street with a dog and two people in the park"
    parts = tokenize_template(tokenizer, template)
    got = encode(model, tokenizer, [long, "two dogs"], template=template, max_length=parts.length + 4)
    words = tokenizer(long, add_special_tokens=False)["input_ids"][:4]  # the sentence is cut, not the template
    ids = torch.tensor([[tokenizer.cls_token_id, *parts.prefix, *words, *parts.suffix, tokenizer.sep_token_id]])
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=torch.ones_like(ids))
    torch.testing.assert_close(got[:1], expected)
    short = encode(model, tokenizer, ["two dogs"], template=template)  # a row that fits is tokenized whole
    torch.testing.assert_close(got[1:], short)
