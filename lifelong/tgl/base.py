"""What every TGL variant shares: when to trace, how to select, what is saved.

Before a stage (from `from_stage` on: by default 1 for a model built from config, as stage 0
trains it from scratch and its gradients say nothing yet, and 0 for a pretrained model) the
variant traces the stage's temporal vs. control gradient norms, selects layers
by `rule`, and saves the trace as `trace_stage_<t>.json` and `.png` in the run dir. With
`trace: once` the first trace is reused for every later stage.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

import torch.distributed as dist

from lifelong.config import require
from lifelong.eval.perplexity import encode_probes
from lifelong.methods.base import Method, StageContext
from lifelong.tgl.select import Rule, candidates_mean, select_layers
from lifelong.tgl.trace import Trace, trace_layers
from lifelong.track.plots import trace_plot


class When(Enum):
    every_stage = "every_stage"
    once = "once"


@dataclass
class TGLConfig:
    name: str = "tgl"
    from_stage: int | None = None  # None: 0 for a pretrained model (model.path), else 1; TrainConfig sets it
    trace: When = When.every_stage
    trace_batches: int = 4
    rule: Rule = Rule.above_mean
    k: int = 2  # for rule=top_k
    fraction: float = 0.5  # for rule=top_fraction
    block_pattern: str | None = None  # regex whose group 1 is the block index, for other families
    matched_control: bool = False  # control loss over as many tokens as a knowledge span (trace.py)
    seed: int = 0  # draws the traced rows (with the stage's index)

    def __post_init__(self) -> None:
        require(self.from_stage is None or self.from_stage >= 0, "tgl.from_stage", self.from_stage,
                "an integer >= 0, or null (0 for a model.path model, else 1)")
        require(self.trace_batches > 0, "tgl.trace_batches", self.trace_batches, "an integer > 0")
        require(self.k > 0, "tgl.k", self.k, "an integer > 0")
        require(0 < self.fraction <= 1, "tgl.fraction", self.fraction, "a float in (0, 1]")
        if self.block_pattern is not None:
            try:
                problem = "it has no group" if re.compile(self.block_pattern).groups < 1 else None
            except re.error as error:
                problem = f"not a regex: {error}"
            require(problem is None, "tgl.block_pattern", self.block_pattern,
                    f"a regex whose group 1 is a block's index, e.g. 'h\\.(\\d+)\\.' ({problem})")


class TracedLayers(Method):
    def __init__(self, cfg: TGLConfig):
        self.cfg = cfg
        self.trace: Trace | None = None
        self.selected: list[str] = []
        self.history: list[dict[str, Any]] = []  # every trace taken, for the report and resume

    def before_stage(self, ctx: StageContext) -> None:
        if ctx.index < self.cfg.from_stage or (self.trace is not None and self.cfg.trace is When.once):
            return
        if self.history and self.history[-1]["stage"] == ctx.index:  # resumed mid-stage: keep its trace
            return
        stage = ctx.stream.stages[ctx.index]
        knowledge = encode_probes(ctx.tokenizer, stage.knowledge, ctx.stage_blocks[ctx.index].shape[1])
        if len(knowledge) == 0:
            raise ValueError(f"TGL needs temporal (knowledge) sequences, and stage {stage.name} has none")
        global_batch = ctx.micro_batch_size * ctx.grad_accum * ctx.world_size  # the training step's batch
        self.trace = trace_layers(
            ctx.model, knowledge, ctx.stage_blocks[ctx.index], self.cfg.trace_batches, global_batch,
            ctx.device, ctx.tokenizer.pad_token_id, self.cfg.block_pattern, self.cfg.matched_control,
            chunk_size=ctx.micro_batch_size, seed=self.cfg.seed * 1000 + ctx.index,
        )
        if dist.is_available() and dist.is_initialized():  # every rank selects from rank 0's trace: a GPU's
            shared = [self.trace]  # sums may differ in their last bits, and ranks must freeze alike
            dist.broadcast_object_list(shared, src=0)
            self.trace = shared[0]
        self.selected = select_layers(self.trace.layers, self.trace.relative, self.cfg.rule, self.cfg.k,
                                      self.cfg.fraction)
        record = {"stage": ctx.index, **asdict(self.trace), "relative": self.trace.relative,
                  "selected": self.selected, "rule": self.cfg.rule.value}
        self.history.append(record)
        if not ctx.is_main:
            return
        path = ctx.run_dir / f"trace_stage_{ctx.index}.json"
        path.write_text(json.dumps(record, indent=2))
        image = trace_plot(self.trace.layers, self.trace.temporal, self.trace.control, self.selected,
                           candidates_mean(self.trace.layers, self.trace.relative),
                           f"TGL trace before stage {ctx.index}", path.with_suffix(".png"))
        if ctx.logger is not None:
            ctx.logger.log_image(f"tgl/trace_stage_{ctx.index}", image)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "selected": self.selected}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history, self.selected = state["history"], state["selected"]
        if self.history:
            last = self.history[-1]
            self.trace = Trace(last["layers"], last["temporal"], last["control"])
