"""Trace per-layer gradient norms on temporal vs. control data (TGL, DESIGN.md section 5).

Temporal: the loss over the knowledge spans only (object tokens of changed facts, mentions of
new entities) of a stage's `knowledge` sequences. Control: the plain LM loss over the stage's
ordinary training blocks, or (`matched_control`) the loss over as many randomly chosen tokens
per block as a knowledge span has on average. A mean over a few tokens has a much larger
gradient than a mean over a whole block whatever the tokens are, so the matched control
separates "knowledge tokens" from "few tokens" (on the synthetic stream most of the raw ratio
is the latter). For each side the per-layer L2 norms of each batch's gradient are averaged
over `batches` batches of rows drawn at random (seeded; the first rows are no sample: streams
list changed facts before new entities, and packing puts the longest documents first). A batch
is the trainer's global batch (micro-batch x grad_accum x ranks), its gradient that of its mean
token loss, accumulated over micro-batch-sized chunks: the trace, like the training, does not
depend on how the batch is split. Only parameters that are trainable now are traced (under
LoRA: the adapters). The model, its grads, the optimizer and the RNG are left as they were.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from lifelong.data.tokens import PAD, lm_inputs, sample_rows, scored_tokens, summed_token_loss
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


Chunk = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]  # input ids, attention mask, labels


def _mean_norms(model: nn.Module, norms: LayerGradNorms, batches: Iterator[list[Chunk]],
                device: torch.device) -> list[float]:
    """The per-layer gradient norms of each batch's mean token loss, averaged over the batches; a
    batch's chunks are backpropagated one at a time, each loss summed over its tokens and divided
    by the batch's token count."""
    total = torch.zeros(len(norms.layers))
    count = 0
    for chunks in batches:
        model.zero_grad(set_to_none=True)
        tokens = max(1, sum(scored_tokens(labels) for _, _, labels in chunks))
        for ids, attention, labels in chunks:
            attention = None if attention is None else attention.to(device)
            logits = model(input_ids=ids.to(device), attention_mask=attention).logits
            (summed_token_loss(logits, labels.to(device)) / tokens).backward()
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
    chunk_size: int | None = None,
    seed: int = 0,
) -> Trace:
    """`batches` batches of `batch_size` rows per side, drawn by `seed`, run `chunk_size` rows at a
    time (default: whole)."""
    saved_grads = {p: p.grad for p in model.parameters()}
    rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    was_training = model.training
    model.eval()  # no dropout: deterministic norms, no RNG draws
    norms = LayerGradNorms(model, block_pattern)
    chunk_size = chunk_size or batch_size

    def batch_chunks(num_rows: int) -> Iterator[list[list[int]]]:
        """`batches` batches of rows drawn from `num_rows`, each as its chunks' rows."""
        rows = sample_rows(num_rows, batches * batch_size, seed).tolist()
        for batch in range(0, len(rows), batch_size):
            yield [rows[c : min(batch + batch_size, c + chunk_size)]
                   for c in range(batch, min(len(rows), batch + batch_size), chunk_size)]

    span_tokens = max(1, round(sum(map(sum, knowledge.targets)) / max(1, len(knowledge))))

    def control_chunk(rows: list[int]) -> Chunk:
        ids, labels = lm_inputs(control_blocks[rows])
        if matched_control:  # score span_tokens random real positions per block (never position 0)
            # a generator per block, seeded by its row: the global RNG is not drawn from, and a
            # block's positions do not depend on the chunk it is in
            scores = torch.stack([torch.rand(ids.shape[1], generator=torch.Generator().manual_seed(row))
                                  for row in rows]).masked_fill(labels == PAD, -1.0)
            picks = scores[:, 1:].topk(span_tokens, dim=1).indices + 1
            labels = torch.full_like(labels, PAD).scatter(1, picks, labels.gather(1, picks))
        return ids, None, labels

    temporal_batches = ([span_batch(knowledge, rows, pad_id) for rows in chunks]
                        for chunks in batch_chunks(len(knowledge)))
    control_batches = ([control_chunk(rows) for rows in chunks] for chunks in batch_chunks(len(control_blocks)))
    temporal = _mean_norms(model, norms, temporal_batches, device)
    control = _mean_norms(model, norms, control_batches, device)
    for p, grad in saved_grads.items():
        p.grad = grad
    torch.set_rng_state(rng)
    if cuda_rng is not None:
        torch.cuda.set_rng_state_all(cuda_rng)
    model.train(was_training)
    return Trace(norms.layers, temporal, control)
