"""Trace per-layer gradient norms on temporal vs. control data (TGL, DESIGN.md section 5).

Temporal: the loss over the knowledge spans only (object tokens of changed facts, mentions of
new entities) of a stage's `knowledge` sequences. Control: the plain LM loss over the stage's
ordinary training blocks, or (`matched_control`) the loss over as many randomly chosen tokens
per block as a knowledge span has on average. A mean over a few tokens has a much larger
gradient than a mean over a whole block whatever the tokens are, so the matched control
separates "knowledge tokens" from "few tokens" (on the synthetic stream most of the raw ratio
is the latter). For each side the per-layer L2 norms of each batch's gradient are
averaged over `batches` batches. Only parameters that are trainable now are traced (under LoRA:
the adapters). The model, its grads, the optimizer and the RNG are left as they were.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.data.tokens import PAD, lm_inputs
from lifelong.eval.perplexity import EncodedProbes
from lifelong.optim import LayerGradNorms


@dataclass
class Trace:
    layers: list[str]
    temporal: list[float]  # mean per-batch gradient norm of the knowledge-span loss
    control: list[float]  # mean per-batch gradient norm of the plain LM loss

    @property
    def relative(self) -> list[float]:
        return [t / max(c, 1e-12) for t, c in zip(self.temporal, self.control, strict=True)]


def span_batch(probes: EncodedProbes, rows: list[int], pad_id: int) -> tuple[torch.Tensor, ...]:
    """Right-padded ids, attention mask, and labels that are -100 outside the knowledge spans."""
    ids, targets, attention = probes.padded(rows, pad_id)
    return ids, attention, torch.where(targets, ids, -100)


def _mean_norms(model: nn.Module, norms: LayerGradNorms, losses) -> list[float]:
    total = torch.zeros(len(norms.layers))
    count = 0
    for loss in losses:
        model.zero_grad(set_to_none=True)
        loss.backward()
        total += norms.compute()[0].cpu()
        count += 1
    return (total / max(count, 1)).tolist()


def trace_layers(
    model: nn.Module,
    knowledge: EncodedProbes,
    control_blocks: torch.Tensor,
    batches: int,
    batch_size: int,
    device: torch.device,
    pad_id: int,
    block_pattern: str | None = None,
    matched_control: bool = False,
) -> Trace:
    saved_grads = {p: p.grad for p in model.parameters()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.eval()  # no dropout: deterministic norms, no RNG draws
    norms = LayerGradNorms(model, block_pattern)

    def temporal_losses():
        for b in range(min(batches, -(-len(knowledge) // batch_size))):
            rows = list(range(b * batch_size, min(len(knowledge), (b + 1) * batch_size)))
            ids, attention, labels = (t.to(device) for t in span_batch(knowledge, rows, pad_id))
            yield model(input_ids=ids, attention_mask=attention, labels=labels).loss

    span_tokens = max(1, round(sum(map(sum, knowledge.targets)) / max(1, len(knowledge))))
    chooser = torch.Generator().manual_seed(0)  # its own generator: the global RNG is not drawn from

    def control_losses():
        for b in range(min(batches, -(-len(control_blocks) // batch_size))):
            ids, labels = lm_inputs(control_blocks[b * batch_size : (b + 1) * batch_size])
            if matched_control:  # score span_tokens random real positions per block (never position 0)
                scores = torch.rand(ids.shape, generator=chooser).masked_fill(labels == PAD, -1.0)
                picks = scores[:, 1:].topk(span_tokens, dim=1).indices + 1
                labels = torch.full_like(labels, PAD).scatter(1, picks, labels.gather(1, picks))
            yield model(input_ids=ids.to(device), labels=labels.to(device)).loss

    temporal = _mean_norms(model, norms, temporal_losses())
    control = _mean_norms(model, norms, control_losses())
    for p, grad in saved_grads.items():
        p.grad = grad
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    model.train(was_training)
    return Trace(norms.layers, temporal, control)
