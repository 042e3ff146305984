"""MIGU: update only the weight rows of linear layers whose output magnitude is large
(arXiv 2406.17245; recipe and pitfalls in DESIGN.md section 3).

A forward hook on every linear layer sums |output| per output feature (fp32) over all tokens
of the micro-batches of one optimizer step. At the step boundary (`transform_gradients`, after
accumulation, DDP sync and AMP unscale, before clipping) the sums are averaged across ranks,
a layer's rows with sum >= quantile(sums, T) keep their weight gradient and the others are
zeroed (T = fraction masked), and the sums are reset. Biases and non-linear parameters are not
masked. The first stage is plain fine-tuning. Hooks only count in training mode, so
evaluation leaves the sums alone. With LoRA (`method=lora_migu`) A's rows are masked by the
magnitude of x A and B's rows by the layer's full output.

Linear layers that share their weight with an embedding (GPT-2's tied LM head) are left out:
masking vocabulary rows there would also mask the input embeddings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers.pytorch_utils import Conv1D

from lifelong.config import register, require
from lifelong.methods.base import Method, StageContext


@dataclass
class Target:
    """A weight whose gradient rows are masked by the output magnitude of `source`."""

    source: nn.Module
    weight: nn.Parameter
    rows_dim: int  # the output-feature dim of the weight: 0 for nn.Linear, 1 for GPT-2's Conv1D

    @property
    def mask_shape(self) -> list[int]:
        """The shape a per-row mask takes to broadcast over the weight's gradient."""
        shape = [1] * self.weight.dim()
        shape[self.rows_dim] = -1
        return shape


def row_quantile(x: torch.Tensor, q: float) -> torch.Tensor:
    """`torch.quantile(x, q, dim=1, keepdim=True)` (linear interpolation) as one sort and one lerp:
    torch.quantile spends about 20 ops per call on checks and rank arithmetic."""
    position = q * (x.shape[1] - 1)
    low = math.floor(position)
    high = min(low + 1, x.shape[1] - 1)
    ordered = x.sort(dim=1).values
    return torch.lerp(ordered[:, low : low + 1], ordered[:, high : high + 1], position - low)


def linear_targets(model: nn.Module) -> list[Target]:
    embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    targets = []
    for module in model.modules():
        linear = isinstance(module, nn.Linear | Conv1D)
        if linear and module.weight.requires_grad and id(module.weight) not in embeddings:
            targets.append(Target(module, module.weight, 1 if isinstance(module, Conv1D) else 0))
    return targets


class MIGU(Method):
    def __init__(self, cfg: MIGUConfig):
        self.mask_fraction = cfg.mask_fraction
        self.active = False
        self.targets: list[Target] = []
        self.sums: dict[nn.Module, torch.Tensor] = {}
        self.handles: list[Any] = []

    def find_targets(self, model: nn.Module) -> list[Target]:
        return linear_targets(model)

    def before_stage(self, ctx: StageContext) -> None:
        self.active = ctx.index > 0
        for handle in self.handles:
            handle.remove()
        self.handles, self.sums = [], {}
        if not self.active:
            return
        # targets are found again each stage: TGL freeze may have changed what is trainable
        self.targets = self.find_targets(ctx.model)
        for source in dict.fromkeys(t.source for t in self.targets):
            self.handles.append(source.register_forward_hook(self._accumulate))

    def _accumulate(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not module.training:
            return
        # abs().sum(): 14x faster than linalg.vector_norm(ord=1) on CPU, ~2x on an H200 (measured)
        magnitude = output.detach().abs().sum(dim=tuple(range(output.dim() - 1)), dtype=torch.float32)
        if module in self.sums:
            self.sums[module] += magnitude
        else:
            self.sums[module] = magnitude

    @torch.no_grad()
    def transform_gradients(self, model: nn.Module) -> None:
        if not self.active:
            return
        sources, sums = list(self.sums), list(self.sums.values())
        if sums and dist.is_available() and dist.is_initialized():  # one collective for all layers
            flat = torch.cat(sums)
            dist.all_reduce(flat, op=dist.ReduceOp.AVG)
            sums = flat.split([len(s) for s in sums])
        # a GPU step is launch-bound at this size: layers of one width share one sort and one
        # comparison, and all masks are applied in one foreach call, not a few ops per layer
        by_width: dict[int, list[int]] = {}
        for i, layer_sums in enumerate(sums):
            by_width.setdefault(len(layer_sums), []).append(i)
        masks = {}
        for group in by_width.values():
            stacked = torch.stack([sums[i] for i in group])
            keep = (stacked >= row_quantile(stacked, self.mask_fraction)).float()
            masks.update(zip([sources[i] for i in group], keep, strict=True))
        grads, row_masks = [], []
        for target in self.targets:
            if target.weight.grad is not None and target.source in masks:
                grads.append(target.weight.grad)
                row_masks.append(masks[target.source].view(target.mask_shape))
        if grads:
            torch._foreach_mul_(grads, row_masks)
        self.sums = {}

    def state_dict(self) -> dict[str, Any]:
        # sums are reset at every step boundary, where checkpoints are taken
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = state["active"]


@dataclass
class MIGUConfig:
    name: str = "migu"
    mask_fraction: float = 0.5  # T: share of each layer's rows masked (the paper's scripts use 0.7)

    def __post_init__(self) -> None:
        require(0 < self.mask_fraction < 1, "method.mask_fraction", self.mask_fraction, "a float in (0, 1)")

    def build(self) -> Method:
        return MIGU(self)


register("method", "migu", MIGUConfig)
