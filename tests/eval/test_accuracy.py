"""Greedy exact match and top-k on a model that memorized one fact, by hand."""

from __future__ import annotations

import torch

from lifelong.config import ModelConfig
from lifelong.data.stream import Probe
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.eval.accuracy import span_accuracy
from lifelong.models import build_model


def test_memorized_fact_is_exact_and_a_wrong_target_is_not():
    text = "Lionel Messi plays for Paris Saint-Germain."
    tokenizer = train_tokenizer([text, "Ana lives in Rome."] * 20, 300)
    torch.manual_seed(0)
    model = build_model(ModelConfig(n_layer=2, d_model=64, n_head=2, d_ff=128, max_seq_len=32), tokenizer)
    ids, labels = lm_inputs(pack(tokenizer, [text] * 8, 16))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(60):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    start = text.index("Paris")
    right = Probe(text, (start, start + len("Paris Saint-Germain")))
    wrong_text = "Lionel Messi plays for Rome United."
    wrong = Probe(wrong_text, (wrong_text.index("Rome"), len(wrong_text) - 1))
    device = torch.device("cpu")
    assert span_accuracy(model, tokenizer, [right], device, k=1) == {"exact_match": 1.0, "top_k": 1.0}
    both = span_accuracy(model, tokenizer, [right, wrong], device, k=1)
    assert both == {"exact_match": 0.5, "top_k": 0.5}
    assert span_accuracy(model, tokenizer, [], device) == {"exact_match": None, "top_k": None}
