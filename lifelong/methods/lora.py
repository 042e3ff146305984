"""LoRA via peft: the base model is frozen, low-rank adapters W + (alpha/r) B A are trained.

Adapters are injected (in place, `peft.inject_adapter_in_model`) from stage `from_stage` on, as a
LoRA continual learner starts from a pretrained model: by default stage 0 for a `model.path` model,
and stage 1 for one built from config, whose stage 0 (pre)trains the base model in full.
Target modules default per family (GPT-2 `c_attn`, a Conv1D so `fan_in_fan_out`; Llama
`q_proj`, `v_proj`). `merge_each_stage: true` folds the adapters into the base weights at the
end of every stage and starts the next stage from fresh adapters (B = 0, so the function is
unchanged; a target whose weight is an embedding's, GPT-2's tied lm_head, is refused with it);
`false` keeps training one set of adapters across stages. Whether adapters exist is
the method's state: a resumed run injects them in `wrap_model`, before the checkpoint's weights
(adapters included) are loaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import check_target_module_exists
from torch import nn

from lifelong.config import ConfigError, register, require
from lifelong.methods.base import Method, StageContext

DEFAULT_TARGETS = {"gpt2": ["c_attn"], "llama": ["q_proj", "v_proj"], "gpt_neox": ["query_key_value"],
                   "olmo": ["q_proj", "v_proj"], "olmo2": ["q_proj", "v_proj"]}


def lora_layers(model: nn.Module) -> list[LoraLayer]:
    return [m for m in model.modules() if isinstance(m, LoraLayer)]


class LoRA(Method):
    def __init__(self, cfg: LoRAConfig):
        self.cfg = cfg
        self.injected = False

    def wrap_model(self, model: nn.Module) -> nn.Module:
        if self.injected:  # resuming after `from_stage` began: the checkpoint holds adapters
            self.inject(model)
        return model

    def before_stage(self, ctx: StageContext) -> None:
        if ctx.index == self.cfg.from_stage and not self.injected:
            self.inject(ctx.model)
            self.injected = True

    def state_dict(self) -> dict[str, Any]:
        return {"injected": self.injected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.injected = state["injected"]

    def inject(self, model: nn.Module) -> None:
        model_type = model.config.model_type
        targets = self.cfg.targets(model_type)
        peft_config = LoraConfig(
            r=self.cfg.r, lora_alpha=self.cfg.alpha, lora_dropout=self.cfg.dropout, target_modules=targets,
            fan_in_fan_out=model_type == "gpt2", bias="none",
        )
        inject_adapter_in_model(peft_config, model)  # freezes every non-adapter parameter

    @torch.no_grad()
    def after_stage(self, ctx: StageContext) -> None:
        if not self.cfg.merge_each_stage:
            return
        for layer in lora_layers(ctx.model):
            layer.merge()  # base weight += scaling * B A
            layer.merged_adapters.clear()  # keep the adapter in the forward pass ...
            for name in layer.active_adapters:  # ... restarted from B = 0
                layer.reset_lora_parameters(name, init_lora_weights=True)


@dataclass
class LoRAConfig:
    name: str = "lora"
    r: int = 8
    alpha: float = 32.0
    dropout: float = 0.0
    target_modules: list[str] | None = None  # None: the family's default (DEFAULT_TARGETS)
    merge_each_stage: bool = False
    # stage from which adapters train; before it the model trains in full. None: 0 for a pretrained
    # model (model.path), else 1 (stage 0 trains a model built from config from scratch); TrainConfig sets it
    from_stage: int | None = None

    def __post_init__(self) -> None:
        require(self.from_stage is None or self.from_stage >= 0, "method.from_stage", self.from_stage,
                "an integer >= 0, or null (0 for a model.path model, else 1)")
        require(self.r > 0, "method.r", self.r, "an integer > 0")
        require(self.alpha > 0, "method.alpha", self.alpha, "a float > 0")
        require(0 <= self.dropout < 1, "method.dropout", self.dropout, "a float in [0, 1)")

    def targets(self, model_type: str) -> list[str]:
        targets = list(DEFAULT_TARGETS.get(model_type, []) if self.target_modules is None else self.target_modules)
        require(bool(targets), "method.target_modules", self.target_modules,
                "module names to adapt" + (f": model type {model_type!r} has no default" if self.target_modules is None
                                           else " (null for the family's default)"))
        return targets

    def check_model(self, model_type: str, modules: dict[str, bool], tied: set[str]) -> None:
        """Before launch: every target names a linear layer, matched as peft's injection will match it;
        with merge_each_stage none has its weight tied to an embedding, as merging B A into it would
        change the input embeddings too (GPT-2's lm_head is wte's weight)."""
        for target in self.targets(model_type):
            single = LoraConfig(target_modules=[target])
            matched = [name for name in modules if check_target_module_exists(single, name)]
            if not matched or not all(modules[name] for name in matched):
                linear = sorted({name.rpartition(".")[2] for name, is_linear in modules.items() if is_linear})
                raise ConfigError("method.target_modules", target, f"names of the model's linear layers: "
                                  f"{', '.join(linear)}")
            if self.merge_each_stage and (shared := [name for name in matched if name in tied]):
                raise ConfigError("method.target_modules", target, f"with method.merge_each_stage=true, linear layers "
                                  f"whose weight is not an embedding's ({', '.join(shared)} shares one: merging "
                                  "into it would change the input embeddings too)")

    def build(self) -> Method:
        return LoRA(self)


register("method", "lora", LoRAConfig)
