"""Joint training: each stage trains on the union of all stages so far, with the same step
budget as every other method. The upper bound a continual learner is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.config import register
from lifelong.data.tokens import ConcatBlocks
from lifelong.methods.base import Method, StageContext


class Joint(Method):
    def stage_data(self, ctx: StageContext) -> ConcatBlocks:
        # a view, not torch.cat: stages on disk stay memory-mapped, read a batch at a time
        return ConcatBlocks(ctx.stage_blocks[: ctx.index + 1])


@dataclass
class JointConfig:
    name: str = "joint"

    def build(self) -> Method:
        return Joint()


register("method", "joint", JointConfig)
