"""Tiny real models and stage contexts for method tests."""

from __future__ import annotations

import pytest
import torch

from lifelong.config import ModelConfig, ModelFamily
from lifelong.data.tokens import train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model, layer_of


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(["Ana lives in Rome. Bo works for Quark Corp."] * 20, 300)


def tiny_model(tokenizer, family: ModelFamily = ModelFamily.gpt2, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(ModelConfig(family=family, n_layer=2, d_model=32, n_head=2, d_ff=64, max_seq_len=32),
                       tokenizer)


def blocks(vocab: int, rows: int, seed: int, seq_len: int = 16) -> torch.Tensor:
    return torch.randint(0, vocab, (rows, seq_len), generator=torch.Generator().manual_seed(seed))


def context(index: int, stage_blocks: list[torch.Tensor], model, tmp_path, grad_accum: int = 1) -> StageContext:
    return StageContext(index, None, stage_blocks, model, None, torch.device("cpu"), tmp_path, 4, None,
                        grad_accum=grad_accum)


def checkpoint_at(run_dir, global_step: int) -> dict:
    """The checkpoint a run wrote after `global_step`."""
    return torch.load(run_dir / "checkpoints" / f"step_{global_step:08d}.pt", weights_only=False)


def rows_moved_only_by_weight_decay(before: dict, after: dict, key: str) -> float:
    """The share of a GPT-2 Conv1D weight's output rows (its dim 1) that changed by less than 0.1%
    between two model state dicts: rows whose gradient MIGU masked (AdamW then moves them by weight
    decay alone, lr * wd ~ 2e-5 a step), where an unmasked row moves by ~lr per element (> 1%)."""
    change = (after[key] - before[key]).norm(dim=0) / before[key].norm(dim=0)
    return (change < 1e-3).float().mean().item()


def migu_targets(state: dict, layers: set[str] | None = None) -> list[str]:
    """The block linear weights MIGU masks in a GPT-2 state dict (not the tied LM head), of `layers` only if given."""
    import re

    keys = [key for key in state if re.search(r"\.h\.\d+\.(attn|mlp)\.\w+\.weight$", key)]
    return [key for key in keys if layers is None or layer_of(key) in layers]
