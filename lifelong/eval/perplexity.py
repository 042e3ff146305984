"""Probe perplexity: NLL over each probe's target span, batched by length.

perplexity = exp(mean over probes of the mean NLL of the probe's target tokens) -- the ECBD
convention (DESIGN.md section 4); a probe without a span scores its whole sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.data.stream import Probe


@dataclass
class EncodedProbes:
    """Token ids per probe (EOS first, as in training) and which positions are targets."""

    ids: list[list[int]]
    targets: list[list[bool]]

    def __len__(self) -> int:
        return len(self.ids)


def encode_probes(tokenizer, probes: list[Probe], max_len: int) -> EncodedProbes:
    if not probes:
        return EncodedProbes([], [])
    encoded = tokenizer(
        [p.text for p in probes], add_special_tokens=False, return_offsets_mapping=True
    )
    ids, targets = [], []
    for probe, tokens, offsets in zip(probes, encoded["input_ids"], encoded["offset_mapping"], strict=True):
        start, end = probe.span
        target = [s < end and e > start for s, e in offsets]
        if not any(target):
            raise ValueError(f"probe target span {probe.span} covers no token in {probe.text!r}")
        ids.append([tokenizer.eos_token_id, *tokens][-max_len:])
        targets.append([False, *target][-max_len:])
    return EncodedProbes(ids, targets)


@torch.no_grad()
def perplexity(
    model: nn.Module,
    probes: EncodedProbes,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    autocast_dtype: torch.dtype | None = None,
) -> float | None:
    """None for an empty probe set."""
    if len(probes) == 0:
        return None
    was_training = model.training
    model.eval()
    order = sorted(range(len(probes)), key=lambda i: len(probes.ids[i]))
    total = torch.zeros((), dtype=torch.float64, device=device)
    for first in range(0, len(order), batch_size):
        chunk = order[first : first + batch_size]
        width = max(len(probes.ids[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.bool)
        attention = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            n = len(probes.ids[i])
            ids[row, :n] = torch.tensor(probes.ids[i])
            mask[row, :n] = torch.tensor(probes.targets[i])
            attention[row, :n] = 1
        ids, mask, attention = ids.to(device), mask.to(device), attention.to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=ids, attention_mask=attention).logits
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # [B, width-1]: position t predicts token t+1
        target = mask[:, 1:].float()
        total += ((nll * target).sum(1) / target.sum(1)).sum()
    model.train(was_training)
    return float(torch.exp(total / len(probes)))
