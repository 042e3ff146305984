"""Probe perplexity: NLL over each probe's target span, batched by length.

perplexity = exp(mean over probes of the mean NLL of the probe's target tokens) -- the ECBD
convention (DESIGN.md section 4); a probe without a span scores its whole sentence. A probe
longer than max_len keeps a window that ends at its span's end (tokens after the span do not
change the span's NLL), so the span and the token that predicts its first token are kept; a
span too long for that is a ValueError.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lifelong.data.stream import Probe
from lifelong.data.tokens import document_start


@dataclass
class EncodedProbes:
    """Token ids per probe (document_start first, as in training) and which positions are targets."""

    ids: list[list[int]]
    targets: list[list[bool]]

    def __len__(self) -> int:
        return len(self.ids)

    def padded(self, rows: list[int], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The probes `rows`, right-padded to the longest: ids, target flags and attention mask.
        Padded as Python lists, one tensor each: a tensor and copies per row cost ~4% of a CPU
        evaluation."""
        lengths = [len(self.ids[i]) for i in rows]
        width = max(lengths)
        ids = torch.tensor([self.ids[i] + [pad_id] * (width - n) for i, n in zip(rows, lengths, strict=True)])
        targets = torch.tensor([self.targets[i] + [False] * (width - n) for i, n in zip(rows, lengths, strict=True)])
        attention = (torch.arange(width) < torch.tensor(lengths)[:, None]).long()
        return ids, targets, attention


def window(probe: Probe, ids: list[int], target: list[bool], max_len: int) -> slice:
    """The positions kept of a probe's ids (document_start first): all if they fit, else at most max_len that
    end at its span's last token. A span that does not fit with the token that predicts its first
    is an error, not a silently partial score."""
    if len(ids) <= max_len:
        return slice(0, len(ids))
    first, last = target.index(True), len(target) - 1 - target[::-1].index(True)
    if last - first + 2 > max_len:
        raise ValueError(f"probe target span {probe.span} of {probe.text!r} is {last - first + 1} tokens; with the "
                         f"token that predicts its first, it does not fit in max_len={max_len} (data.seq_len)")
    return slice(max(0, last + 1 - max_len), last + 1)


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
        full_ids, full_target = [document_start(tokenizer), *tokens], [False, *target]
        kept = window(probe, full_ids, full_target, max_len)
        ids.append(full_ids[kept])
        targets.append(full_target[kept])
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
        ids, mask, attention = (t.to(device) for t in probes.padded(chunk, pad_id))
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(input_ids=ids, attention_mask=attention).logits
        nll = F.cross_entropy(
            logits[:, :-1].float().transpose(1, 2), ids[:, 1:], reduction="none"
        )  # [B, width-1]: position t predicts token t+1
        target = mask[:, 1:].float()
        total += ((nll * target).sum(1) / target.sum(1)).sum()
    model.train(was_training)
    return float(torch.exp(total / len(probes)))
