"""MIGU's `method.skip_masked_rows`: in a step's last micro-batch each linear weight's gradient is
computed for the rows MIGU keeps only, so the masked rows' share T of the weight-gradient matmul
is never done (the masks would zero it).

The masks are known once the last micro-batch's forward ends (its sums complete the step's), and
its backward comes after, so during that forward each layer runs with its weight out of the graph
(the layer's own backward gives the input and bias gradients) and its output goes through
`KeptRowsGrad`, whose backward adds the weight gradient of the kept rows, zeros elsewhere. Earlier
micro-batches keep the full gradient, which the step boundary masks as usual.

It pays where the weight-gradient matmuls dominate the step, and costs where small ops do
(benchmarks/migu_sums.py, step / finetune's step, CPU 1 thread): gpt2_100m 8x128 0.896x vs plain
MIGU's 1.012x; tiny_gpt2 1x128 1.164x vs 1.052x (per layer a Python autograd node, a zero fill and
an index_copy_ into Conv1D's strided columns). On a GPU: benchmarks/gpu_check.sh measures it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class KeptRowsGrad(torch.autograd.Function):
    """The identity on a layer's output; its backward returns the weight gradient of the kept rows
    (`kept()`, row indices set when the forward ended) and zeros in the others."""

    @staticmethod
    def forward(ctx: Any, output: torch.Tensor, inputs: torch.Tensor, weight: nn.Parameter, rows_dim: int,
                kept: Callable[[], torch.Tensor]) -> torch.Tensor:
        ctx.save_for_backward(inputs)
        ctx.weight, ctx.rows_dim, ctx.kept = weight, rows_dim, kept
        return output.view_as(output)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (inputs,) = ctx.saved_tensors
        kept = ctx.kept()
        grad = grad_output.reshape(-1, grad_output.shape[-1]).index_select(1, kept)
        x = inputs.reshape(-1, inputs.shape[-1])
        grad_weight = torch.zeros_like(ctx.weight)
        if ctx.rows_dim == 0:  # nn.Linear: weight [out, in]
            grad_weight.index_copy_(0, kept, (grad.t() @ x).to(grad_weight.dtype))
        else:  # GPT-2's Conv1D: weight [in, out]
            grad_weight.index_copy_(1, kept, (x.t() @ grad).to(grad_weight.dtype))
        return grad_output, None, grad_weight, None, None


class KeptRowsForward:
    """Swaps `module`'s forward for one that, where `engaged()`, runs the layer with `weight` out of
    the graph and adds its kept rows' gradient through KeptRowsGrad. `remove()` swaps it back."""

    def __init__(self, module: nn.Module, weight: nn.Parameter, rows_dim: int, engaged: Callable[[], bool],
                 kept: Callable[[], torch.Tensor]):
        self.module = module
        layer_forward = module.forward

        def forward(inputs: torch.Tensor) -> torch.Tensor:
            if not (module.training and engaged()):
                return layer_forward(inputs)
            device = inputs.device.type
            if torch.is_autocast_enabled(device):  # cast once, as autocast would: KeptRowsGrad keeps this copy
                inputs = inputs.to(torch.get_autocast_dtype(device))
            weight.requires_grad_(False)
            try:
                output = layer_forward(inputs)
            finally:
                weight.requires_grad_(True)
            return KeptRowsGrad.apply(output, inputs, weight, rows_dim, kept)

        module.forward = forward

    def remove(self) -> None:
        del self.module.forward  # the class's forward again


def kept_row_indices(keep: torch.Tensor, bounds: torch.Tensor) -> list[torch.Tensor]:
    """The indices of the kept rows (keep != 0) of each source, whose flags are
    keep[bounds[i]:bounds[i + 1]]: two host syncs in all, whatever the number of sources."""
    flat = keep.nonzero().squeeze(1)
    splits = torch.searchsorted(flat, bounds).tolist()
    local = flat - bounds[torch.searchsorted(bounds, flat, right=True) - 1]
    return [local[start:end] for start, end in itertools.pairwise(splits)]
