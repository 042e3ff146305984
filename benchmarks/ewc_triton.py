"""EWC's gradient term, grad += lambda F (theta - theta*), for all parameters in one Triton launch.

    python benchmarks/ewc_triton.py [--device cuda]   (checks it against the shipped foreach term)

A candidate for lifelong/methods/ewc.py, timed by ewc_variants.py; not part of the library yet.
At paper scale on a GPU the term is bound by memory traffic (8.1 ms of a 78 ms gpt2_large step on
an H100, benchmarks/RESULTS.md). The shipped sub + addcmul passes over the parameters' size 7
times (read theta, theta*; write the difference; read it, F and grad; write grad); fused, it
reads theta, theta*, F and grad and writes grad: 5 times, in one launch instead of two per group
of tensors. All tensors are fp32 (the trainer keeps fp32 parameters; autocast only computes in
bf16). The block map (which tensor and offset each program takes) and the addresses of theta,
theta* and F are fixed for a stage and made once; per step only the gradients' addresses go to
the GPU. Runs on a CPU in Triton's interpreter (TRITON_INTERPRET=1).
"""

from __future__ import annotations

import argparse
import functools

import torch
import triton
import triton.language as tl

from lifelong.methods.migu_triton import device_table

BLOCK = 4096


@triton.jit
def _ewc_gradient(block_tensor, block_start, numels, grads, thetas, anchors, fishers, ewc_lambda,
                  BLOCK: tl.constexpr):
    # not `params`: on a GPU Triton binds the arguments in a function with a local of that name
    program = tl.program_id(0)
    index = tl.load(block_tensor + program)
    offsets = tl.load(block_start + program) + tl.arange(0, BLOCK)
    inside = offsets < tl.load(numels + index)
    grad = tl.load(grads + index).to(tl.pointer_type(tl.float32))
    param = tl.load(thetas + index).to(tl.pointer_type(tl.float32))
    anchor = tl.load(anchors + index).to(tl.pointer_type(tl.float32))
    fisher = tl.load(fishers + index).to(tl.pointer_type(tl.float32))
    difference = tl.load(param + offsets, mask=inside) - tl.load(anchor + offsets, mask=inside)
    update = ewc_lambda * (tl.load(fisher + offsets, mask=inside) * difference)
    tl.store(grad + offsets, tl.load(grad + offsets, mask=inside) + update, mask=inside)


@functools.cache
def block_map(numels: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """For each program of a launch over tensors of these sizes, the tensor it takes and its first
    element (BLOCK elements a program)."""
    sizes = torch.tensor(numels)
    blocks = (sizes + BLOCK - 1) // BLOCK
    block_tensor = torch.repeat_interleave(torch.arange(len(numels)), blocks)
    block_start = torch.cat([torch.arange(int(b)) * BLOCK for b in blocks])
    return block_tensor.to(device), block_start.to(device)


def addresses(tensors: list[torch.Tensor], device: torch.device) -> torch.Tensor:
    return device_table([t.data_ptr() for t in tensors], device)


class EWCGradient:
    """grad += lambda F (theta - theta*) for fixed lists of parameters, anchors and Fishers."""

    def __init__(self, params: list[torch.Tensor], anchors: list[torch.Tensor], fishers: list[torch.Tensor]):
        for tensor in (*params, *anchors, *fishers):
            if tensor.dtype != torch.float32 or not tensor.is_contiguous():
                raise ValueError("the fused EWC term takes contiguous fp32 tensors")
        device = params[0].device
        numels = tuple(p.numel() for p in params)
        self.block_tensor, self.block_start = block_map(numels, device)
        self.numels = device_table(list(numels), device)
        self.params, self.anchors, self.fishers = (addresses(t, device) for t in (params, anchors, fishers))
        self.keep_alive = (params, anchors, fishers)  # the tables hold their addresses

    def __call__(self, grads: list[torch.Tensor], ewc_lambda: float) -> None:
        if any(g.dtype != torch.float32 or not g.is_contiguous() for g in grads):
            raise ValueError("the fused EWC term takes contiguous fp32 gradients")
        grid = (len(self.block_tensor),)
        _ewc_gradient[grid](self.block_tensor, self.block_start, self.numels, addresses(grads, grads[0].device),
                            self.params, self.anchors, self.fishers, ewc_lambda, BLOCK=BLOCK)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    shapes = [(37, 96), (5000,), (3, 4097), (1,)]  # sizes below, at and across BLOCK
    params = [torch.randn(s, generator=generator).to(args.device) for s in shapes]
    anchors = [p + 0.01 * torch.randn(p.shape, generator=generator).to(args.device) for p in params]
    fishers = [torch.rand(p.shape, generator=generator).to(args.device) for p in params]
    grads = [torch.randn(p.shape, generator=generator).to(args.device) for p in params]
    want = [g.clone() for g in grads]
    torch._foreach_addcmul_(want, torch._foreach_sub(params, anchors), fishers, value=5000.0)  # as ewc.py
    EWCGradient(params, anchors, fishers)(grads, 5000.0)
    worst = max(((g - w).abs().max() / w.abs().max()).item() for g, w in zip(grads, want, strict=True))
    print(f"fused vs foreach EWC term: max difference {worst:.2e} of the largest value")


if __name__ == "__main__":
    main()
