"""Shared fixtures: offline environment, real Hydra composition of the project's configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lifelong.config import TrainConfig, compose_train_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def offline_environment(tmp_path_factory):
    home = tmp_path_factory.mktemp("hf_home")
    os.environ.update(
        HF_HOME=str(home), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
        TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
    )


def make_config(run_dir: Path, *overrides: str) -> TrainConfig:
    """Compose conf/train.yaml with the smoke experiment plus overrides, as the CLI would."""
    return compose_train_config(["experiment=smoke", *overrides], run_dir=str(run_dir))
