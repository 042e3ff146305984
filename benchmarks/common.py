"""Shared by the benchmarks: step times of a real `lifelong` run, read from its metrics.jsonl."""

from __future__ import annotations

import json
import statistics
import subprocess
from pathlib import Path

from lifelong.config import TrainConfig, compose_train_config
from lifelong.data.tokens import train_tokenizer
from lifelong.models import build_model
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.train import train

RESULTS = Path(__file__).parent / "results"


def git(*args: str) -> str:
    """git's output, run at the repository's root."""
    return subprocess.run(["git", *args], cwd=RESULTS.parent.parent, capture_output=True, text=True).stdout.strip()


def code_version() -> str:
    """The commit the figures come from, "+" if the working tree differed from it."""
    # the figures themselves are tracked files: writing them does not make the code differ
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results",
                  ":!benchmarks/RESULTS.md")
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


def save_result(name: str, result: dict) -> None:
    """Write results/<name>.json (with the commit measured) and print it."""
    result = {**result, "commit": code_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def lifelong_step_times(overrides: list[str], run_dir: Path, stage: int) -> list[float]:
    """Mean step time of every logged window of `stage` (a window covers `log_every` steps, its
    tokens/s is measured around the steps and the logging itself)."""
    cfg = compose_train_config(["trainer.progress=false", *overrides], run_dir=str(run_dir))
    train(cfg)
    tokens_per_step = cfg.trainer.micro_batch_size * cfg.trainer.grad_accum * cfg.data.seq_len
    records = read_jsonl_metrics(run_dir / "metrics.jsonl")
    return [tokens_per_step / r["tokens_per_s"] for r in records if r["stage"] == stage]


def steady_median(window_times: list[float]) -> float:
    """Median over windows, the first (warm-up) window left out."""
    return statistics.median(window_times[1:])


def model_parameters(cfg: TrainConfig) -> int:
    """Parameters of the model a run of `cfg` builds (its vocab comes from the stream's tokenizer)."""
    tokenizer = train_tokenizer(cfg.data.build().all_text(), cfg.data.vocab_size)
    return sum(p.numel() for p in build_model(cfg.model, tokenizer).parameters())
