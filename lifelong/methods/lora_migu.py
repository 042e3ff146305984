"""MIGU on LoRA adapters: LoRA's adapters, with MIGU's magnitude mask on their gradients.

A's rows (the r features of x A) are masked by |x A|; B's rows (the layer's output features)
by the magnitude of the layer's full output, base plus adapter (DESIGN.md section 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from lifelong.config import register, require
from lifelong.methods.base import Method, StageContext
from lifelong.methods.lora import LoRA, LoRAConfig, lora_layers
from lifelong.methods.migu import MIGU, MIGUConfig, Target


class LoRAMIGU(MIGU):
    def __init__(self, cfg: LoRAMIGUConfig):
        super().__init__(MIGUConfig(mask_fraction=cfg.mask_fraction))
        self.lora = LoRA(cfg)

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return self.lora.wrap_model(model)

    def before_stage(self, ctx: StageContext) -> None:
        self.lora.before_stage(ctx)  # adapters first, so MIGU hooks them
        super().before_stage(ctx)

    def find_targets(self, model: nn.Module) -> list[Target]:
        targets = []
        for layer in lora_layers(model):
            for name in layer.active_adapters:
                a, b = layer.lora_A[name], layer.lora_B[name]
                if a.weight.requires_grad:
                    targets += [Target(a, a.weight, 0), Target(layer, b.weight, 0)]
        return targets

    def after_stage(self, ctx: StageContext) -> None:
        self.lora.after_stage(ctx)

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lora": self.lora.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lora.load_state_dict(state["lora"])


@dataclass
class LoRAMIGUConfig(LoRAConfig):
    name: str = "lora_migu"
    mask_fraction: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        require(0 < self.mask_fraction < 1, "method.mask_fraction", self.mask_fraction, "a float in (0, 1)")

    def build(self) -> Method:
        return LoRAMIGU(self)


register("method", "lora_migu", LoRAMIGUConfig)
