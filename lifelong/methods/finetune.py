"""Full fine-tuning: train every parameter on each stage in turn. The lower bound."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.config import register
from lifelong.methods.base import Method


class FineTune(Method):
    """All hooks are the defaults of `Method`."""


@dataclass
class FineTuneConfig:
    name: str = "finetune"

    def build(self) -> Method:
        return FineTune()


register("method", "finetune", FineTuneConfig)
