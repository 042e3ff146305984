"""MIGU's gradient masks for all layers in one Triton launch that only writes the masked rows' zeros.

    python benchmarks/migu_mask_triton.py [--device cuda]   (checks it against lifelong's mask_gradients)

A candidate for lifelong/methods/migu.py, timed by migu_sums.py (variant migu_masks); not
part of the library yet. The shipped `_foreach_mul_(grads, masks)` broadcasts each layer's keep
flags over its gradient: a launch per layer (broadcasting takes foreach's slow path) that reads
and writes every weight gradient. This reads only the flags and writes zeros where a row is
masked: a fraction T of the traffic's writes and none of its reads, in one launch. (A masked
row's NaN becomes 0 here, where the product keeps it NaN; fp16's overflow check has already run.)
Per call the gradients' and flags' addresses go to the GPU in one table; the block map (which
gradient and offset each program takes, ewc_triton.block_map) depends only on the gradients' sizes
and is made once.
Runs on a CPU in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse

import torch
import triton
import triton.language as tl
from ewc_triton import BLOCK, block_map

from lifelong.methods.migu import mask_gradients
from lifelong.methods.migu_triton import device_table


@triton.jit
def _zero_masked_rows(block_tensor, block_start, table, n_tensors, BLOCK: tl.constexpr):
    # table: [5, n_tensors] int64, rows: gradient address, flags address, numel, dim-1 size,
    # whether a flag belongs to a column (GPT-2's Conv1D keeps its output features in dim 1)
    program = tl.program_id(0)
    index = tl.load(block_tensor + program)
    offsets = tl.load(block_start + program) + tl.arange(0, BLOCK)
    inside = offsets < tl.load(table + 2 * n_tensors + index)
    inner = tl.load(table + 3 * n_tensors + index)
    row = tl.where(tl.load(table + 4 * n_tensors + index) != 0, offsets % inner, offsets // inner)
    flags = tl.load(table + n_tensors + index).to(tl.pointer_type(tl.float32))
    kept = tl.load(flags + row, mask=inside, other=1.0)
    grad = tl.load(table + index).to(tl.pointer_type(tl.float32))
    tl.store(grad + offsets, tl.zeros([BLOCK], dtype=tl.float32), mask=inside & (kept == 0))


def triton_mask_gradients(grads: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """`mask_gradients(grads, masks)` for contiguous 2-d fp32 gradients and fp32 keep flags
    (1.0 or 0.0) viewed as [rows, 1] or [1, columns]."""
    for grad, mask in zip(grads, masks, strict=True):
        if grad.dtype != torch.float32 or grad.dim() != 2 or not grad.is_contiguous() or mask.dtype != torch.float32:
            raise ValueError("the fused masks take contiguous 2-d fp32 gradients and fp32 flags")
    device = grads[0].device
    block_tensor, block_start = block_map(tuple(g.numel() for g in grads), device)
    table = [[g.data_ptr() for g in grads], [m.data_ptr() for m in masks], [g.numel() for g in grads],
             [g.shape[1] for g in grads], [int(m.shape[-1] != 1) for m in masks]]
    table = device_table(table, device)
    _zero_masked_rows[(len(block_tensor),)](block_tensor, block_start, table, len(grads), BLOCK=BLOCK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    grads, masks = [], []
    for rows, columns, by_column in ((96, 37, False), (37, 96, True), (3, 4097, False), (4097, 3, True)):
        grads.append(torch.randn(rows, columns, generator=generator).to(args.device))
        width = columns if by_column else rows
        keep = (torch.rand(width, generator=generator) < 0.5).float().to(args.device)
        masks.append(keep.view(1, -1) if by_column else keep.view(-1, 1))
    want = [g.clone() for g in grads]
    mask_gradients(want, masks)
    triton_mask_gradients(grads, masks)
    print("fused masks equal lifelong's:", all(torch.equal(g, w) for g, w in zip(grads, want, strict=True)))


if __name__ == "__main__":
    main()
