"""`tgl=freeze` (TGL + FP): of the transformer blocks, train only the selected ones in a stage;
the others keep their weights bit for bit. Rows that are not blocks (embeddings, final norm, LM
head, `other`; select.py) train unless `freeze_non_block`. Composes with any baseline: what is frozen is
taken from what the baseline trains (under LoRA, the adapters of non-selected layers; under MIGU,
masks apply inside the selected layers). The frozen parameters are released at the stage's end."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lifelong.config import register
from lifelong.methods.base import Method, StageContext
from lifelong.models import layer_of
from lifelong.tgl.base import TGLConfig, TracedLayers
from lifelong.tgl.select import candidates


class Freeze(TracedLayers):
    def __init__(self, cfg: TGLConfig):
        super().__init__(cfg)
        self.frozen: list[nn.Parameter] = []

    def before_stage(self, ctx: StageContext) -> None:
        super().before_stage(ctx)
        if ctx.index < self.cfg.from_stage:
            return
        ranked, keep = set(candidates(self.trace.layers, self.trace.relative)[0]), set(self.selected)
        for name, param in ctx.model.named_parameters():
            row = layer_of(name, self.cfg.block_pattern)
            if param.requires_grad and row not in keep and (row in ranked or self.cfg.freeze_non_block):
                param.requires_grad_(False)
                self.frozen.append(param)

    def after_stage(self, ctx: StageContext) -> None:
        for param in self.frozen:
            param.requires_grad_(True)
        self.frozen = []


@dataclass
class FreezeConfig(TGLConfig):
    name: str = "freeze"
    freeze_non_block: bool = False  # true: the rows that are not blocks (embeddings, final norm, ...) freeze too

    def build(self) -> Method:
        return Freeze(self)


register("tgl", "freeze", FreezeConfig)
