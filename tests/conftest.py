"""Shared fixtures: offline environment, real Hydra composition of the project's configs."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Triton kernels run in Triton's interpreter on the CPU; that is chosen when triton.language is
# first imported, which torch may do while this file's imports load it
os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

from lifelong.config import TrainConfig, compose_train_config  # noqa: E402
from lifelong.launch.checkpoint import checkpoint_dir  # noqa: E402
from lifelong.track.jsonl import read_jsonl_metrics  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FIXTURES = REPO / "tests" / "fixtures"


def pytest_configure(config: pytest.Config) -> None:
    """Offline, with a throwaway HF cache: set before collection, since datasets reads its
    cache location when it is first imported."""
    os.environ.update(
        HF_HOME=tempfile.mkdtemp(prefix="hf_home_"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline",
        TRANSFORMERS_VERBOSITY="error", TOKENIZERS_PARALLELISM="false",
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(os.environ["HF_HOME"], ignore_errors=True)


def crashed_copy(finished: Path, run_dir: Path, last_step: int) -> Path:
    """`finished`'s run dir as a crash right after global step `last_step` would have left it: no
    results.json, no checkpoint after that step (its later metrics are dropped on resume)."""
    shutil.copytree(finished, run_dir)
    (run_dir / "results.json").unlink()
    for path in checkpoint_dir(run_dir).glob("step_*.pt"):
        if int(path.stem.removeprefix("step_")) > last_step:
            path.unlink()
    return run_dir


def losses(run_dir: Path) -> list[tuple[int, float]]:
    """(global step, loss) of every record the run logged, in order."""
    return [(r["global_step"], r["loss"]) for r in read_jsonl_metrics(run_dir / "metrics.jsonl")]


def make_config(run_dir: Path, *overrides: str) -> TrainConfig:
    """Compose conf/train.yaml with the smoke experiment plus overrides, as the CLI would."""
    return compose_train_config(["experiment=smoke", *overrides], run_dir=str(run_dir))
