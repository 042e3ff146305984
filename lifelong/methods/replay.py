"""Replay (mix-review): mix blocks of earlier stages, kept in a bounded reservoir, into each stage.

At stage t >= 1 the stage's blocks are joined by round(ratio_t * new blocks) blocks drawn from
the buffer, ratio_t = mix_ratio * decay**(t-1) (CKL uses mix_ratio 4, TemporalWiki 1; decay 0.7).
The trainer shuffles the union, so every batch holds replayed blocks at that ratio on average.
After each stage its blocks enter the buffer by reservoir sampling (every block seen so far
has the same chance to be kept), so memory stays bounded by `buffer_size`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from lifelong.config import register, require
from lifelong.data.tokens import ConcatBlocks, PickedRows
from lifelong.methods.base import Method, StageContext


class Replay(Method):
    def __init__(self, cfg: ReplayConfig):
        self.cfg = cfg
        self.buffer: torch.Tensor | None = None  # [<= buffer_size, seq_len]
        self.seen = 0  # blocks offered to the reservoir so far
        self.generator = torch.Generator().manual_seed(cfg.seed)  # the reservoir's draws

    def replay_ratio(self, stage: int) -> float:
        return self.cfg.mix_ratio * self.cfg.decay ** max(0, stage - 1)

    def stage_data(self, ctx: StageContext) -> torch.Tensor | ConcatBlocks:
        new = ctx.stage_blocks[ctx.index]
        if self.buffer is None or ctx.index == 0:
            return new
        count = round(self.replay_ratio(ctx.index) * len(new))
        # a generator of the stage's own: a run resumed mid-stage draws the same picks again
        stage_generator = torch.Generator().manual_seed(self.cfg.seed * 1000 + ctx.index)
        picks = torch.randint(len(self.buffer), (count,), generator=stage_generator)
        # nothing is copied: the stage stays memory-mapped, and the replayed blocks are read out of
        # the buffer as batches take them (mix_ratio x a large stage would be GBs of repeated rows)
        return ConcatBlocks([new, PickedRows(self.buffer, picks)])

    def after_stage(self, ctx: StageContext) -> None:
        blocks = ctx.stage_blocks[ctx.index]
        if self.buffer is None:
            self.buffer = blocks.new_empty((0, *blocks.shape[1:]))
        # the reservoir's first buffer_size blocks are kept as they come (no draw): one copy, not one per block
        fill = max(0, min(len(blocks), self.cfg.buffer_size - len(self.buffer)))
        self.buffer = torch.cat([self.buffer, blocks[:fill]])
        self.seen += fill
        for block in blocks[fill:]:
            self._offer(block)

    def _offer(self, block: torch.Tensor) -> None:
        """A block past a full buffer replaces a random one with probability buffer_size / seen."""
        slot = int(torch.randint(self.seen + 1, (1,), generator=self.generator))
        if slot < self.cfg.buffer_size:
            self.buffer[slot] = block
        self.seen += 1

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer, "seen": self.seen, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer, self.seen = state["buffer"], state["seen"]
        self.generator.set_state(state["generator"])


@dataclass
class ReplayConfig:
    name: str = "replay"
    mix_ratio: float = 1.0  # replayed blocks per new block at stage 1
    decay: float = 0.7  # the ratio is multiplied by this at every later stage
    buffer_size: int = 4096  # blocks kept from earlier stages
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.mix_ratio >= 0, "method.mix_ratio", self.mix_ratio, "a float >= 0")
        require(0 < self.decay <= 1, "method.decay", self.decay, "a float in (0, 1]")
        require(self.buffer_size > 0, "method.buffer_size", self.buffer_size, "an integer > 0")

    def build(self) -> Method:
        return Replay(self)


register("method", "replay", ReplayConfig)
