import torch

from utils.encode import default_max_length, encode
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
