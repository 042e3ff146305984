"""EWC and online EWC: a quadratic penalty keeps parameters near their values after earlier
stages, weighted by the diagonal Fisher information.

After each stage: F = mean over `fisher_samples` sequences of the stage of (d loss_seq / d theta)^2
(per-sequence gradients, the empirical Fisher); the sequences are drawn at random from the
stage's blocks (seeded by the run's seed and the stage: packing puts the longest documents
first, so the first blocks would be a few long documents); under DDP the ranks share them and
sum their parts.
Penalty: lambda/2 * sum_k sum_i F_k,i (theta_i - theta*_k,i)^2 over the finished stages k
(ContinualLM uses lambda = 5000). Online EWC keeps one Fisher, F <- gamma F + F_new, and one
anchor (the latest parameters).

The stages' terms are held merged, per element: sum_k F_k (theta - a_k)^2 equals
F (theta - a)^2 + C with F = sum_k F_k, a = sum_k F_k a_k / F (the Fisher-weighted mean anchor)
and C = sum_k F_k (a_k - a)^2, which does not depend on theta. So a step's penalty gradient,
lambda F (theta - a), costs one pass over the parameters whatever the number of finished stages
(a term per stage would cost K passes at stage K), and the memory is one Fisher and one anchor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lifelong.config import register, require
from lifelong.data.tokens import lm_inputs, sample_rows
from lifelong.methods.base import Method, StageContext


def trainable(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def empirical_fisher(model: nn.Module, blocks: torch.Tensor, samples: int, device: torch.device,
                     seed: int = 0) -> dict:
    """Mean of squared per-sequence gradients of the LM loss over `samples` blocks drawn at random
    (sample_rows). Under DDP each rank takes every world_size-th of them and the sums are
    all-reduced: one process's Fisher (up to the order of float sums) at a world_size-th of the
    work per rank."""
    distributed = dist.is_available() and dist.is_initialized()
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    rows = sample_rows(len(blocks), samples, seed)
    count = len(rows)
    params = trainable(model)
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    was_training = model.training
    model.eval()  # no dropout: the Fisher of the model as it is
    inputs, targets = lm_inputs(blocks[rows[rank::world_size]], device)
    for ids, labels in zip(inputs, targets, strict=True):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids[None], labels=labels[None]).loss.backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name] += p.grad.float().square()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    for value in fisher.values():
        if distributed:
            dist.all_reduce(value)
        value /= count
    return fisher


def merge_terms(fisher: torch.Tensor, anchor: torch.Tensor, new_fisher: torch.Tensor,
                new_anchor: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
    """F (theta - a)^2 + F' (theta - a')^2 = (F + F') (theta - m)^2 + c, element-wise: returns the
    summed Fisher, m = a' + w (a - a') with w = F / (F + F') (0 where both Fishers are 0) and
    c = sum F' w (a - a')^2. m as a step from a' keeps its rounding relative to the anchors'
    difference rather than their size, so fp32 suffices (float64 would double a 710M model's
    transient memory); c is summed in float64."""
    total = fisher + new_fisher
    weight = torch.where(total > 0, fisher / total, 0.0)
    difference = anchor - new_anchor
    constant = (new_fisher * weight * difference.square()).sum(dtype=torch.float64).item()
    return total, new_anchor + weight * difference, constant


class EWC(Method):
    def __init__(self, cfg: EWCConfig):
        self.cfg = cfg
        # the finished stages' terms merged, keyed by parameter name (what trains may differ between
        # stages, e.g. LoRA from stage 1 on: a name merges the stages it trained in)
        self.fisher: dict[str, torch.Tensor] = {}
        self.anchor: dict[str, torch.Tensor] = {}
        self.constant = 0.0  # the merged penalty's part that no parameter changes
        self.params: dict[str, nn.Parameter] = {}

    def after_stage(self, ctx: StageContext) -> None:
        fisher = empirical_fisher(ctx.model, ctx.stage_blocks[ctx.index], self.cfg.fisher_samples, ctx.device,
                                  self.cfg.seed * 1000 + ctx.index)
        self.params = dict(ctx.model.named_parameters())
        anchor = {name: self.params[name].detach().clone() for name in fisher}
        if self.cfg.online:  # one decayed Fisher at the latest parameters
            self.fisher = {name: self.cfg.gamma * self.fisher[name] + value if name in self.fisher else value
                           for name, value in fisher.items()}
            self.anchor = anchor
        else:
            self.add_term(fisher, anchor)

    def add_term(self, fisher: dict[str, torch.Tensor], anchor: dict[str, torch.Tensor]) -> None:
        """Merge a finished stage's Fisher and anchor into the held term."""
        for name in fisher:
            if name in self.fisher:
                self.fisher[name], self.anchor[name], constant = merge_terms(
                    self.fisher[name], self.anchor[name], fisher[name], anchor[name])
                self.constant += constant
            else:
                self.fisher[name], self.anchor[name] = fisher[name], anchor[name]

    def penalty(self) -> torch.Tensor:
        """lambda/2 sum_k sum F_k (theta - theta*_k)^2: what the gradient below adds, for tests and reports."""
        params = [self.params[name] for name in self.anchor]
        diffs = torch._foreach_sub(params, list(self.anchor.values()))
        weighted = torch._foreach_mul(torch._foreach_mul(diffs, diffs), list(self.fisher.values()))
        total = torch.stack([w.sum() for w in weighted]).sum() if weighted else torch.zeros(())
        return self.cfg.ewc_lambda / 2 * (total + self.constant)

    @torch.no_grad()
    def transform_gradients(self, model: nn.Module) -> None:
        """Add the penalty's gradient, lambda F (theta - theta*), once per optimizer step (before
        clipping): two fused kernels instead of an autograd graph over every parameter in every
        micro-batch. Parameters without a gradient (frozen by TGL) are left alone. At paper scale
        on a GPU this term is bound by memory traffic (8.1 ms of a 78 ms step, gpt2_large on an
        H100): sub + addcmul pass over the parameters' size 7 times, sub + mul + add 9 times."""
        names = [name for name in self.anchor if self.params[name].grad is not None]
        if not names:
            return
        params = [self.params[name] for name in names]
        diffs = torch._foreach_sub(params, [self.anchor[name] for name in names])
        torch._foreach_addcmul_([p.grad for p in params], diffs, [self.fisher[name] for name in names],
                                value=self.cfg.ewc_lambda)

    def state_dict(self) -> dict[str, Any]:
        return {"fisher": self.fisher, "anchor": self.anchor, "constant": self.constant}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "terms" in state:  # a checkpoint from before the terms were merged: one term per stage
            for fisher, anchor in state["terms"]:
                self.add_term(fisher, anchor)
            return
        self.fisher, self.anchor, self.constant = state["fisher"], state["anchor"], state["constant"]

    def before_stage(self, ctx: StageContext) -> None:
        self.params = dict(ctx.model.named_parameters())  # also after a resume
        # a resume loads the terms onto the CPU; they belong with their parameters
        self.fisher, self.anchor = ({name: value.to(self.params[name].device) for name, value in part.items()}
                                    for part in (self.fisher, self.anchor))


@dataclass
class EWCConfig:
    name: str = "ewc"
    ewc_lambda: float = 5000.0
    online: bool = False
    gamma: float = 1.0  # online EWC's decay of the old Fisher
    fisher_samples: int = 32  # sequences of the finished stage the Fisher is estimated on
    seed: int = 0  # draws the Fisher's sequences (with the stage's index)

    def __post_init__(self) -> None:
        require(self.ewc_lambda >= 0, "method.ewc_lambda", self.ewc_lambda, "a float >= 0")
        require(0 <= self.gamma <= 1, "method.gamma", self.gamma, "a float in [0, 1]")
        require(self.fisher_samples > 0, "method.fisher_samples", self.fisher_samples, "an integer > 0")

    def build(self) -> Method:
        return EWC(self)


register("method", "ewc", EWCConfig)
