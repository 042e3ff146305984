"""`tgl=adaptive_lr` (TGL + ALR): one learning rate per layer, scaled by its relative norm.

lr_l = lr * clamp(r_l / mean(r), min_scale, max_scale) for every transformer block l, the mean
over the blocks (select.py); the embeddings, final norm and LM head train at lr. The paper's
exact formula is not public; this is the project's reading of "scale each layer's learning rate
with the magnitude of its relative gradient norm" (DESIGN.md section 5). Weight decay stays on
matrices only.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lifelong.config import register, require
from lifelong.methods.base import Method
from lifelong.models import layer_of
from lifelong.tgl.base import TGLConfig, TracedLayers
from lifelong.tgl.select import candidates, candidates_mean


class AdaptiveLR(TracedLayers):
    cfg: AdaptiveLRConfig

    def layer_scales(self) -> dict[str, float]:
        """Each block's scale; rows not listed train at the base rate."""
        layers, relative = candidates(self.trace.layers, self.trace.relative)
        mean = candidates_mean(self.trace.layers, self.trace.relative)
        return {layer: min(self.cfg.max_scale, max(self.cfg.min_scale, r / max(mean, 1e-12)))
                for layer, r in zip(layers, relative, strict=True)}

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        if self.trace is None:
            return None
        scales = self.layer_scales()
        groups: dict[tuple[str, bool], dict] = {}
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            layer = layer_of(name, self.cfg.block_pattern)
            decay = param.dim() >= 2
            group = groups.setdefault((layer, decay), {
                "params": [], "lr": lr * scales.get(layer, 1.0), "layer": layer,
                "weight_decay": weight_decay if decay else 0.0,
            })
            group["params"].append(param)
        return list(groups.values())


@dataclass
class AdaptiveLRConfig(TGLConfig):
    name: str = "adaptive_lr"
    min_scale: float = 0.1
    max_scale: float = 10.0

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.min_scale <= 1, "tgl.min_scale", self.min_scale, "a float in (0, 1]")
        require(self.max_scale >= 1, "tgl.max_scale", self.max_scale, "a float >= 1")

    def build(self) -> Method:
        return AdaptiveLR(self)


register("tgl", "adaptive_lr", AdaptiveLRConfig)
