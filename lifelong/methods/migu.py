"""MIGU: update only the weight rows of linear layers whose output magnitude is large
(arXiv 2406.17245; recipe and pitfalls in DESIGN.md section 3).

A forward hook on every linear layer sums |output| per output feature (fp32) over all tokens
of the micro-batches of one optimizer step. At the step boundary (`transform_gradients`, after
accumulation, DDP sync and AMP unscale, before clipping) the sums are averaged across ranks,
a layer's rows with sum >= quantile(sums, T) keep their weight gradient and the others are
zeroed (T = fraction masked). Biases and non-linear parameters are not masked. The first
stage is plain fine-tuning. Hooks only count in training mode, so evaluation leaves the sums
alone. With LoRA (`method=lora_migu`) A's rows are masked by the magnitude of x A and B's rows
by the layer's full output.

With `skip_masked_rows` the step's last micro-batch computes each weight's gradient for its kept
rows only (migu_kept_rows.py): its masks are set as its forward ends, and a step of one
micro-batch then needs no masking at the boundary.

Linear layers that share their weight with an embedding (GPT-2's tied LM head) are left out:
masking vocabulary rows there would also mask the input embeddings.

A GPU step of a ~100M model is partly launch-bound, so the per-step work is a fixed plan made
once per stage, at its first training forward (after every hook's set-up, so layers that TGL
freezes are not in it): all sums live in one flat buffer (one collective under DDP), ordered so that
the layers of one width form one [layers, width] view (one threshold and one comparison per
width), and every weight's mask is a view of one flat boolean buffer made in advance. The
layers' hooks only hold their outputs; when the model's forward returns, one call sums them all
(on a GPU one Triton launch, migu_triton.py), so they are held through the forward alone, not the
backward.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from transformers.pytorch_utils import Conv1D

from lifelong.config import register, require
from lifelong.methods.base import Method, StageContext
from lifelong.methods.migu_kept_rows import KeptRowsForward, kept_row_indices


@dataclass
class Target:
    """A weight whose gradient rows are masked by the output magnitude of `source`."""

    source: nn.Module
    weight: nn.Parameter
    rows_dim: int  # the output-feature dim of the weight: 0 for nn.Linear, 1 for GPT-2's Conv1D

    @property
    def width(self) -> int:
        return self.weight.shape[self.rows_dim]

    def row_mask(self, keep: torch.Tensor) -> torch.Tensor:
        """`keep` (one flag per row) viewed to broadcast over the weight's gradient."""
        shape = [1] * self.weight.dim()
        shape[self.rows_dim] = -1
        return keep.view(shape)


def row_thresholds(x: torch.Tensor, q: float) -> torch.Tensor:
    """Per row of `x`, the smallest value at or above `torch.quantile(row, q)` (linear
    interpolation), so `x >= row_thresholds(x, q)` flags the same values as `x >= quantile`.
    The quantile lies between the order statistics at floor and ceil of q * (width - 1), with no
    value strictly between them, so the one at ceil is that threshold: one kthvalue (selection,
    ~10x faster than sort at GPT-2's widths on CPU) instead of two and their interpolation."""
    rank = math.ceil(q * (x.shape[1] - 1))
    return x.kthvalue(rank + 1, dim=1, keepdim=True).values


def output_magnitudes(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each output's |values| summed over every dim but the last (the output features), in fp32.
    abs().sum(): 14x faster than linalg.vector_norm(ord=1) on CPU (measured)."""
    return [o.abs().sum(dim=tuple(range(o.dim() - 1)), dtype=torch.float32) for o in outputs]


def mask_gradients(grads: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    """Zero the masked rows: each gradient times its keep flags (1.0 or 0.0), viewed to broadcast
    over it. Float flags: a bool mask costs a type conversion per element (~35% slower on CPU)."""
    torch._foreach_mul_(grads, masks)


def gpu_output_magnitudes() -> Callable[[list[torch.Tensor]], list[torch.Tensor]]:
    """The sums on a GPU: one Triton launch for all outputs, or eager where Triton is missing."""
    try:
        from lifelong.methods.migu_triton import triton_output_magnitudes
    except ImportError:
        warnings.warn("MIGU: Triton is not installed, so |output| is summed eagerly (slower)", stacklevel=2)
        return output_magnitudes
    return triton_output_magnitudes


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
        self.skip_masked_rows = cfg.skip_masked_rows
        self.active = False
        self.targets: list[Target] = []
        self.handles: list[Any] = []
        self.plan_handle: Any = None  # the pre-hook that makes the stage's plan at its first training forward
        self.counted: set[nn.Module] = set()  # sources whose sums hold this step's magnitudes
        self.pending: dict[nn.Module, tuple[torch.Tensor, int]] = {}  # source -> (output, its version)
        self.sums = torch.zeros(0)  # every source's per-row sums, sources of one width adjacent
        self.rows: dict[nn.Module, torch.Tensor] = {}  # source -> its view of `sums`
        self.by_width: list[tuple[torch.Tensor, torch.Tensor]] = []  # [layers, width] views of sums, keep
        self.row_masks: list[torch.Tensor] = []  # per target, its view of the keep flags
        self.keep = torch.ones(0)  # the keep flags of every source's rows, laid out as `sums`
        self.grad_accum = 1  # micro-batches per step
        self.forwards = 0  # training forwards since the last step boundary
        self.masked_in_forward = False  # skip_masked_rows: this step's masks were set as its last forward ended
        self.kept: dict[nn.Module, torch.Tensor] = {}  # skip_masked_rows: source -> its kept rows' indices
        self.bounds = torch.zeros(0, dtype=torch.long)  # skip_masked_rows: where each source's rows start in `sums`
        self.output_magnitudes = output_magnitudes
        self.mask_gradients = mask_gradients

    def find_targets(self, model: nn.Module) -> list[Target]:
        return linear_targets(model)

    def before_stage(self, ctx: StageContext) -> None:
        self.active = ctx.index > 0
        for handle in self.handles:
            handle.remove()
        self.handles, self.counted, self.pending = [], set(), {}
        self.grad_accum, self.forwards, self.masked_in_forward = ctx.grad_accum, 0, False
        if not self.active:
            return
        # the plan is made at the stage's first training forward, after every hook's before_stage: it
        # then covers only what trains (TGL freeze freezes after this hook; its frozen layers cost nothing)
        self.plan_handle = ctx.model.register_forward_pre_hook(self._plan_once)
        self.handles += [self.plan_handle, ctx.model.register_forward_hook(self._forward_done)]

    def _plan_once(self, model: nn.Module, inputs: Any) -> None:
        if model.training:
            self.plan_handle.remove()  # the plan holds for the whole stage
            self._plan(model)

    def _plan(self, model: nn.Module) -> None:
        """Find the targets and lay out the stage's sums and masks; hook the sources."""
        # targets are found again each stage, as what trains changes (LoRA's adapters appear)
        self.targets = self.find_targets(model)
        width = {t.source: t.width for t in self.targets}
        sources = sorted(width, key=width.__getitem__)  # stable: model order within a width
        device = self.targets[0].weight.device if self.targets else torch.device("cpu")
        self.sums = torch.zeros(sum(width.values()), device=device)
        self.keep = keep = torch.ones(len(self.sums), device=device)
        keep_rows, self.rows, self.by_width, start = {}, {}, [], 0
        for layer_width, group in itertools.groupby(sources, key=width.__getitem__):
            group = list(group)
            end = start + layer_width * len(group)
            self.by_width.append((self.sums[start:end].view(len(group), layer_width),
                                  keep[start:end].view(len(group), layer_width)))
            for offset, source in zip(range(start, end, layer_width), group, strict=True):
                self.rows[source] = self.sums[offset : offset + layer_width]
                keep_rows[source] = keep[offset : offset + layer_width]
            start = end
        self.row_masks = [t.row_mask(keep_rows[t.source]) for t in self.targets]
        # A GPU step of gpt2_100m is host-bound: eager sums launch two kernels per layer and cost
        # MIGU 1.11x finetune's step, one Triton launch per forward 1.05x (migu_triton.py)
        self.output_magnitudes = gpu_output_magnitudes() if device.type == "cuda" else output_magnitudes
        for source in sources:
            self.handles.append(source.register_forward_hook(self._accumulate))
        if self.skip_masked_rows:
            self.bounds = torch.tensor([0, *itertools.accumulate(width[s] for s in self.rows)], device=device)
            self.handles += [KeptRowsForward(t.source, t.weight, t.rows_dim, self._last_micro_batch,
                                             lambda source=t.source: self.kept[source]) for t in self.targets]

    def _last_micro_batch(self) -> bool:
        """Whether the training forward under way is the step's last (skip_masked_rows engages)."""
        return self.forwards == self.grad_accum - 1

    def _accumulate(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not module.training:
            return
        if module in self.pending:  # a layer run twice in one forward
            self._sum_pending()
        output = output.detach()
        self.pending[module] = (output, output._version)

    def _forward_done(self, model: nn.Module, inputs: Any, output: Any) -> None:
        self._sum_pending()
        if not model.training:
            return
        if self.skip_masked_rows:
            if self.masked_in_forward:
                raise RuntimeError(f"MIGU: method.skip_masked_rows: more training forwards in one step than "
                                   f"trainer.grad_accum ({self.grad_accum}), whose last one's rows were chosen "
                                   "as it ended; a later forward would change the sums they came from")
            if self._last_micro_batch():  # its backward needs the masks: the step's sums are complete
                self._set_masks()
                self.kept = dict(zip(self.rows, kept_row_indices(self.keep, self.bounds), strict=True))
                self.masked_in_forward = True
        self.forwards += 1

    @torch.no_grad()
    def _sum_pending(self) -> None:
        """Add the held outputs' magnitudes to their sources' sums, all in one call."""
        if not self.pending:
            return
        for module, (output, version) in self.pending.items():
            if output._version != version:
                raise RuntimeError(f"MIGU: the model changed the output of {type(module).__name__} in place after "
                                   "its forward; MIGU needs the output as the layer returned it")
        outputs = [output for output, _ in self.pending.values()]
        try:
            magnitudes = self.output_magnitudes(outputs)
        except Exception as error:  # Triton needs a GPU it supports (sm_80 on for bf16)
            if self.output_magnitudes is output_magnitudes:
                raise
            warnings.warn(f"MIGU: the Triton sums failed, so |output| is summed eagerly: {error}", stacklevel=1)
            self.output_magnitudes = output_magnitudes
            magnitudes = output_magnitudes(outputs)
        torch._foreach_add_([self.rows[module] for module in self.pending], magnitudes)
        self.counted.update(self.pending)
        self.pending = {}

    @torch.no_grad()
    def transform_gradients(self, model: nn.Module) -> None:
        if not self.active:
            return
        self._sum_pending()
        if self.counted:
            if not self.masked_in_forward:
                self._set_masks()
            # a step of one micro-batch with skip_masked_rows has computed no masked row's gradient;
            # only sources that ran a forward in this step hold this step's sums
            pairs = [] if self.masked_in_forward and self.forwards == 1 else [
                (t.weight.grad, mask) for t, mask in zip(self.targets, self.row_masks, strict=True)
                if t.weight.grad is not None and t.source in self.counted]
            if pairs:
                grads, masks = zip(*pairs, strict=True)
                self.mask_gradients(list(grads), list(masks))
            self.sums.zero_()
        self.counted, self.forwards, self.masked_in_forward = set(), 0, False

    def _set_masks(self) -> None:
        """Each row's keep flag from the step's sums, averaged across ranks."""
        if dist.is_available() and dist.is_initialized():  # one collective for all layers
            dist.all_reduce(self.sums, op=dist.ReduceOp.AVG)
        for sums, keep in self.by_width:
            torch.ge(sums, row_thresholds(sums, self.mask_fraction), out=keep)

    def state_dict(self) -> dict[str, Any]:
        # sums are reset at every step boundary, where checkpoints are taken
        return {"active": self.active}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = state["active"]


@dataclass
class MIGUConfig:
    name: str = "migu"
    mask_fraction: float = 0.5  # T: share of each layer's rows masked (the paper's scripts use 0.7)
    # compute the weight gradients of kept rows only in a step's last micro-batch (migu_kept_rows.py):
    # the same training, less matmul work, more small ops; pays where matmuls dominate the step
    skip_masked_rows: bool = False

    def __post_init__(self) -> None:
        require(0 < self.mask_fraction < 1, "method.mask_fraction", self.mask_fraction, "a float in (0, 1)")

    def build(self) -> Method:
        return MIGU(self)


register("method", "migu", MIGUConfig)
