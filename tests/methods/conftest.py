"""Tiny real models and stage contexts for method tests."""

from __future__ import annotations

import pytest
import torch

from lifelong.config import ModelConfig, ModelFamily
from lifelong.data.tokens import train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model


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
