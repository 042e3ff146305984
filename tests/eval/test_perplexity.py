"""Batched span perplexity equals a naive one-probe-at-a-time computation."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.config import ModelConfig
from lifelong.data.stream import Probe
from lifelong.data.tokens import train_tokenizer
from lifelong.eval.perplexity import EncodedProbes, encode_probes, perplexity
from lifelong.models import build_model

TEXTS = ["Ana lives in Rome.", "The employer of Bo Lin is Quark Corp.", "Cy plays for Tor United.", "Hi."]


def test_span_tokens_are_the_target_and_batching_changes_nothing():
    torch.manual_seed(0)
    tokenizer = train_tokenizer(TEXTS * 20, 300)
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, max_seq_len=64), tokenizer)
    probes = [Probe(t, (t.rindex(" ") + 1, len(t) - 1)) for t in TEXTS[:3]] + [Probe.whole("Hi.")]
    encoded = encode_probes(tokenizer, probes, 64)
    for probe, ids, target in zip(probes, encoded.ids, encoded.targets, strict=True):
        scored = tokenizer.decode([i for i, t in zip(ids, target, strict=True) if t])
        assert scored.strip() == probe.text[slice(*probe.span)]
    device = torch.device("cpu")
    batched = perplexity(model, encoded, 3, device, tokenizer.pad_token_id)

    nlls = []
    with torch.no_grad():
        for ids, target in zip(encoded.ids, encoded.targets, strict=True):
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            logp = torch.log_softmax(logits, -1)
            token_nll = [-logp[t - 1, ids[t]].item() for t in range(1, len(ids)) if target[t]]
            nlls.append(sum(token_nll) / len(token_nll))
    assert batched == pytest.approx(math.exp(sum(nlls) / len(nlls)), rel=1e-5)
    assert perplexity(model, encode_probes(tokenizer, [], 64), 3, device, 0) is None


def test_a_long_probe_keeps_its_span_and_a_span_too_long_is_an_error():
    text = "Rome is where Ana lives, and she has lived there for many many years now with Bo Lin."
    tokenizer = train_tokenizer([text] * 20, 300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=1, d_model=32, n_head=2, d_ff=64, max_seq_len=64), tokenizer)
    first = Probe(text, (0, len("Rome")))  # an object-first probe: the span is at the start
    middle = Probe(text, (text.index("lived"), text.index("lived") + len("lived")))
    last = Probe(text, (text.index("Bo Lin"), len(text) - 1))
    probes = [first, middle, last]
    encoded = encode_probes(tokenizer, probes, 8)
    assert max(map(len, encoded.ids)) == 8 < len(encode_probes(tokenizer, [first], 64).ids[0])
    for probe, ids, target in zip(probes, encoded.ids, encoded.targets, strict=True):
        scored = tokenizer.decode([i for i, t in zip(ids[1:], target[1:], strict=True) if t])  # [0] has no context
        assert scored.strip() == probe.text[slice(*probe.span)]
    # the object-first probe keeps its start (and scores as the probe cut after its span); the
    # others keep the 8 tokens that end at their spans' ends
    cut = encode_probes(tokenizer, [Probe(text[: first.span[1]], first.span)], 64)
    assert (encoded.ids[0], encoded.targets[0]) == (cut.ids[0], cut.targets[0])
    assert [len(ids) for ids in encoded.ids[1:]] == [8, 8] and all(target[-1] for target in encoded.targets)
    assert encoded.ids[1][0] != tokenizer.eos_token_id
    device = torch.device("cpu")
    assert math.isfinite(perplexity(model, encoded, 3, device, tokenizer.pad_token_id))
    # a span fits with the token before it, which predicts its first token; one more is an error
    long_span = Probe(text, (text.index("she"), text.index(" for")))
    n = sum(encode_probes(tokenizer, [long_span], 64).targets[0])
    assert encode_probes(tokenizer, [long_span], n + 1).targets[0] == [False] + [True] * n
    with pytest.raises(ValueError, match=rf"is {n} tokens; with the token that predicts its first, it does not fit"):
        encode_probes(tokenizer, [long_span], n)


def test_a_batch_is_right_padded_with_its_targets_and_attention():
    probes = EncodedProbes(ids=[[5, 6, 7], [8], [9, 10]], targets=[[False, True, True], [True], [False, True]])
    ids, targets, attention = probes.padded([1, 0], pad_id=0)
    assert ids.tolist() == [[8, 0, 0], [5, 6, 7]]
    assert targets.tolist() == [[True, False, False], [False, True, True]]
    assert attention.tolist() == [[1, 0, 0], [1, 1, 1]]
