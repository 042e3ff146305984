"""MIGU's |output| sums for all of a forward's layers in one Triton launch (per dtype).

    python benchmarks/migu_triton.py [--device cuda]   (checks it against the eager sums)

A diagnostic for migu_sums.py, not part of the library: on a host-bound GPU step what MIGU's sums
cost is launches (benchmarks/RESULTS.md), and this is the fewest launches the sums can take. The
outputs' addresses, widths, row counts and offsets go to the GPU as one int64 table; program
(i, j) reads columns [j * BLOCK_COLS, (j + 1) * BLOCK_COLS) of output i over all its rows and
stores their |values| summed in fp32. Each column is summed by one program, in a fixed order, so
the sums are the same from run to run (no atomics). Runs on a CPU in Triton's interpreter
(TRITON_INTERPRET=1), which is how it was first checked.
"""

from __future__ import annotations

import argparse
import itertools

import torch
import triton
import triton.language as tl

from lifelong.methods.migu import output_magnitudes

BLOCK_ROWS, BLOCK_COLS = 32, 128
TRITON_DTYPES = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16, torch.float32: tl.float32}


@triton.jit
def _abs_column_sums(table, sums, n_outputs, MAX_ROWS: tl.constexpr, DTYPE: tl.constexpr, BLOCK_ROWS: tl.constexpr,
                     BLOCK_COLS: tl.constexpr):
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


def triton_output_magnitudes(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`output_magnitudes(outputs)`: one launch per dtype among the outputs."""
    outputs = [o if o.is_contiguous() else o.contiguous() for o in outputs]
    widths = [o.shape[-1] for o in outputs]
    offsets = list(itertools.accumulate(widths, initial=0))
    sums = torch.empty(offsets[-1], dtype=torch.float32, device=outputs[0].device)
    by_dtype = sorted(range(len(outputs)), key=lambda i: str(outputs[i].dtype))
    for dtype, group in itertools.groupby(by_dtype, key=lambda i: outputs[i].dtype):
        group = list(group)
        table = [outputs[i].data_ptr() for i in group] + [widths[i] for i in group] + \
                [outputs[i].numel() // widths[i] for i in group] + [offsets[i] for i in group]
        pinned = outputs[0].device.type == "cuda"  # a non-blocking copy needs pinned host memory
        table = torch.tensor(table, dtype=torch.int64, pin_memory=pinned).to(sums.device, non_blocking=True)
        rows = [outputs[i].numel() // widths[i] for i in group]
        grid = (len(group), triton.cdiv(max(widths[i] for i in group), BLOCK_COLS))
        _abs_column_sums[grid](table, sums, len(group), max(rows), DTYPE=TRITON_DTYPES[dtype], BLOCK_ROWS=BLOCK_ROWS,
                               BLOCK_COLS=BLOCK_COLS)
    return list(sums.split(widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    torch.manual_seed(0)
    # GPT-2 shaped outputs (c_attn, c_proj, c_fc, c_proj) in bf16 and fp32, one not contiguous
    outputs = [torch.randn(2, 37, width, device=args.device).to(dtype)
               for dtype in (torch.bfloat16, torch.float32) for width in (96, 32, 130, 32)]
    outputs.append(torch.randn(37, 2, 64, device=args.device).transpose(0, 1))
    got, want = triton_output_magnitudes(outputs), output_magnitudes(outputs)
    worst = max(((g - w).abs() / w.abs()).max().item() for g, w in zip(got, want, strict=True))
    print(f"triton vs eager sums: max relative difference {worst:.2e}")


if __name__ == "__main__":
    main()
