"""Batched span perplexity equals a naive one-probe-at-a-time computation."""

from __future__ import annotations

import math

import pytest
import torch

from lifelong.config import ModelConfig
from lifelong.data.stream import Probe
from lifelong.data.tokens import train_tokenizer
from lifelong.eval.perplexity import encode_probes, perplexity
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
