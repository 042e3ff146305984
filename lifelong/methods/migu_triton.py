"""MIGU's |output| sums on a GPU: all of a forward's held outputs in one Triton launch (per dtype).

The step of a ~100M model on a GPU is host-bound, so what summing costs there is launches and
their host time, not bytes. Paired rounds on an H100 (gpt2_100m, 16 x 512, bf16), MIGU / finetune:
this kernel 1.054x, eager vector_norm(ord=1) 1.065x, torch.compile of the sums 1.120x, eager
abs().sum() 1.114x, no sums at all 1.056x (benchmarks/migu_sums.py). The outputs' addresses,
widths, row counts and offsets go to the GPU as one int64 table; program (i, j) reads columns
[j * BLOCK_COLS, (j + 1) * BLOCK_COLS) of output i over all its rows and stores their |values|
summed in fp32. Each column is summed by one program in a fixed order, so the sums are the same
from run to run (no atomics). The tests run it in Triton's interpreter on a CPU.
"""

from __future__ import annotations

import itertools

import torch
import triton
import triton.language as tl

BLOCK_ROWS, BLOCK_COLS = 32, 128
TRITON_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _abs_column_sums(table, sums, n_outputs, MAX_ROWS: tl.constexpr, DTYPE: tl.constexpr,
                     BLOCK_ROWS: tl.constexpr, BLOCK_COLS: tl.constexpr):
    # table: [4, n_outputs] int64, rows: address, width, rows, offset into `sums`
    index = tl.program_id(0)
    width = tl.load(table + n_outputs + index)
    if tl.program_id(1) * BLOCK_COLS < width:
        rows = tl.load(table + 2 * n_outputs + index)
        offset = tl.load(table + 3 * n_outputs + index)
        base = tl.load(table + index).to(tl.pointer_type(DTYPE))
        cols = tl.program_id(1) * BLOCK_COLS + tl.arange(0, BLOCK_COLS)
        in_width = cols < width
        total = tl.zeros([BLOCK_ROWS, BLOCK_COLS], dtype=tl.float32)
        for start in range(0, MAX_ROWS, BLOCK_ROWS):  # a constant: the interpreter takes no other bound
            row = start + tl.arange(0, BLOCK_ROWS)
            inside = (row[:, None] < rows) & in_width[None, :]
            values = tl.load(base + row[:, None].to(tl.int64) * width + cols[None, :], mask=inside, other=0.0)
            total += tl.abs(values.to(tl.float32))
        tl.store(sums + offset + cols, tl.sum(total, axis=0), mask=in_width)


def device_table(rows: list[list[int]], device: torch.device) -> torch.Tensor:
    """Integers (addresses, sizes, offsets) as an int64 tensor on `device`, copied without
    waiting for the GPU (so from pinned memory): the host runs on into the backward."""
    return torch.tensor(rows, dtype=torch.int64, pin_memory=device.type == "cuda").to(device, non_blocking=True)


def triton_output_magnitudes(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each output's |values| summed over every dim but the last, in fp32, as
    `lifelong.methods.migu.output_magnitudes`: one launch per dtype among the outputs. MAX_ROWS is a
    compile-time constant (the interpreter takes no other loop bound), so each distinct number of
    rows (micro-batch x sequence length) compiles once."""
    outputs = [o if o.is_contiguous() else o.contiguous() for o in outputs]
    widths = [o.shape[-1] for o in outputs]
    rows = [o.numel() // width for o, width in zip(outputs, widths, strict=True)]
    offsets = list(itertools.accumulate(widths, initial=0))
    device = outputs[0].device
    sums = torch.empty(offsets[-1], dtype=torch.float32, device=device)
    by_dtype = sorted(range(len(outputs)), key=lambda i: str(outputs[i].dtype))
    for dtype, group in itertools.groupby(by_dtype, key=lambda i: outputs[i].dtype):
        group = list(group)
        table = device_table([[outputs[i].data_ptr() for i in group], [widths[i] for i in group],
                              [rows[i] for i in group], [offsets[i] for i in group]], device)
        grid = (len(group), triton.cdiv(max(widths[i] for i in group), BLOCK_COLS))
        _abs_column_sums[grid](table, sums, len(group), MAX_ROWS=max(rows[i] for i in group),
                               DTYPE=TRITON_DTYPES[dtype], BLOCK_ROWS=BLOCK_ROWS, BLOCK_COLS=BLOCK_COLS)
    return list(sums.split(widths))
