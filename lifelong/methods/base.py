"""The method interface: small optional hooks the trainer calls (DESIGN.md section 2).

A continual-learning baseline and a TGL variant are both `Method`s; the trainer calls every
active one in order, so they compose. Copy `finetune.py` to start a new one, add its YAML to
conf/method/ and its module to the import line of lifelong/methods/__init__.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lifelong.data.stream import Stream
from lifelong.data.tokens import ConcatBlocks


@dataclass
class StageContext:
    """What a hook may look at around a stage."""

    index: int  # the stage being trained
    stream: Stream
    stage_blocks: list[torch.Tensor]  # packed token blocks [N, seq_len] of stages 0..index
    model: nn.Module
    tokenizer: Any
    device: torch.device
    run_dir: Path
    micro_batch_size: int
    logger: Any  # lifelong.track logger: log(record), log_image(key, path, step)
    is_main: bool = True  # rank 0: the one process that writes files
    grad_accum: int = 1  # micro-batches per optimizer step
    world_size: int = 1  # processes sharing the global batch (micro-batch x grad_accum x world_size)


class Method:
    """Every hook is optional; the defaults are plain fine-tuning."""

    def wrap_model(self, model: nn.Module) -> nn.Module:
        return model

    def param_groups(self, model: nn.Module, lr: float, weight_decay: float) -> list[dict] | None:
        """Optimizer parameter groups, or None for one group of all trainable parameters."""
        return None

    def stage_data(self, ctx: StageContext) -> torch.Tensor | ConcatBlocks:
        """The packed blocks to train on in this stage. The trainer only takes their len and
        indexes rows with index tensors, so a ConcatBlocks view of several stages will do."""
        return ctx.stage_blocks[ctx.index]

    def extra_loss(self, model: nn.Module) -> torch.Tensor | None:
        """A term added to every micro-batch's loss (a distillation loss, say). A penalty on the
        parameters alone is cheaper as its gradient in transform_gradients (see EWC)."""
        return None

    def transform_gradients(self, model: nn.Module) -> None:
        """Runs after accumulation (and DDP sync / AMP unscale), before clipping, in fp32."""

    def before_stage(self, ctx: StageContext) -> None:
        pass

    def after_stage(self, ctx: StageContext) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
