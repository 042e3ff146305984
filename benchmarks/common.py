"""Shared by the benchmarks: step times of a real `lifelong` run, read from its metrics.jsonl, and
one training step of a method assembled from the trainer's own pieces."""

from __future__ import annotations

import json
import multiprocessing
import os
import statistics
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lifelong.config import TrainConfig, compose_train_config
from lifelong.data.tokens import labelled_tokens, lm_inputs, pack, summed_token_loss, train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, build_scheduler, default_param_groups
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.train import AUTOCAST, resolve_device, train

RESULTS = Path(__file__).parent / "results"


def git(*args: str) -> str:
    """git's output, run at the repository's root."""
    return subprocess.run(["git", *args], cwd=RESULTS.parent.parent, capture_output=True, text=True).stdout.strip()


def code_version() -> str:
    """The commit the figures come from, "+" if the working tree differed from it; or
    $LIFELONG_CODE_VERSION where set: a machine that received a copy of the working tree may hold a
    stale .git (the device tool's copy keeps the session's first), so the sender names the commit."""
    if os.environ.get("LIFELONG_CODE_VERSION"):
        return os.environ["LIFELONG_CODE_VERSION"]
    # the figures themselves are tracked files: writing them does not make the code differ
    changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results",
                  ":!benchmarks/RESULTS.md")
    return git("rev-parse", "--short", "HEAD") + ("+" if changed else "")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued kernels, so that a clock read after it covers them."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def in_fresh_interpreter(function: Callable[..., Any], *args: Any) -> Any:
    """`function(*args)` in a newly spawned interpreter: process-wide state one run sets (lifelong
    keeps freed host memory, lifelong/launch/host_memory.py) must not carry over to the next."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(function, args)


def rotated(names: list[str], repetition: int) -> list[str]:
    """The arms' order in one repetition of an interleaved comparison: rotated each time, so no arm
    always runs first (an arm that always ran first measured several percent slower here)."""
    shift = repetition % len(names)
    return names[shift:] + names[:shift]


def quartiles(values: list[float]) -> list[float]:
    """[first, third] quartile: the spread reported with a median of paired ratios."""
    return statistics.quantiles(values, n=4)[::2]


def save_result(name: str, result: dict) -> None:
    """Write results/<name>.json (with the commit measured) and print it."""
    result = {**result, "commit": code_version()}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


def lifelong_step_times(overrides: list[str], run_dir: Path, stage: int) -> list[float]:
    """Mean step time of every logged window of `stage` (a window covers `log_every` steps and
    the previous window's logging call: windows tile the loop)."""
    cfg = compose_train_config(["trainer.progress=false", *overrides], run_dir=str(run_dir))
    train(cfg)
    tokens_per_step = cfg.trainer.micro_batch_size * cfg.trainer.grad_accum * cfg.data.seq_len
    records = read_jsonl_metrics(run_dir / "metrics.jsonl")
    return [tokens_per_step / r["tokens_per_s"] for r in records if r["stage"] == stage]


def in_windows_of(step_times: list[float], steps: int) -> list[float]:
    """Windows of one step each, as the mean step time of each `steps` consecutive ones: the windows
    of a run that logs every `steps` steps, so that two arms' medians are over equal windows (a
    median of single steps reads low where step times are skewed)."""
    return [statistics.fmean(step_times[i : i + steps]) for i in range(0, len(step_times) - steps + 1, steps)]


def steady_median(window_times: list[float]) -> float:
    """Median over windows, the first (warm-up) window left out."""
    return statistics.median(window_times[1:])


def model_parameters(cfg: TrainConfig) -> int:
    """Parameters of the model a run of `cfg` builds (its vocab comes from the stream's tokenizer)."""
    tokenizer = train_tokenizer(cfg.data.build().all_text(), cfg.data.vocab_size)
    return sum(p.numel() for p in build_model(cfg.model, tokenizer).parameters())


def method_step(overrides: list[str], micro_batch: int, stage: int = 1) -> tuple[Callable[[], None], torch.device]:
    """One optimizer step of the trainer's loop for the composed config's method: forward, loss,
    the method's extra loss, backward, `transform_gradients`, per-layer norms and clipping,
    AdamW, the schedule's step, on the config's device under its autocast precision (fp16's
    loss scaling left out). The method is prepared as for `stage` (its earlier stages finished
    without training): from stage 1 on every method is active (MIGU masks, EWC holds a Fisher
    per finished stage, LoRA's adapters train). The model is built from seed 0. `train` is one
    function, so this copies its step: if the loop changes, this must follow. Returns the step
    and the device it runs on."""
    cfg = compose_train_config([f"data.num_stages={stage + 1}", *overrides])
    device = resolve_device(cfg.trainer.device)
    autocast_dtype = AUTOCAST[cfg.trainer.precision]
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = pack(tokenizer, stream.stages[0].train, cfg.data.seq_len)
    torch.manual_seed(0)
    method = cfg.method.build()
    model = method.wrap_model(build_model(cfg.model, tokenizer)).to(device)
    contexts = [StageContext(index, stream, [blocks] * (stage + 1), model, tokenizer, device, RESULTS,
                             micro_batch, None) for index in range(stage + 1)]
    for finished in contexts[:-1]:
        method.before_stage(finished)
        method.after_stage(finished)
    method.before_stage(contexts[-1])
    groups = method.param_groups(model, cfg.trainer.lr, cfg.trainer.weight_decay)
    optimizer = build_optimizer(cfg.trainer, groups or default_param_groups(model, cfg.trainer.weight_decay))
    scheduler = build_scheduler(cfg.trainer, optimizer)
    norms = LayerGradNorms(model)
    batch = blocks[torch.arange(micro_batch) % len(blocks)]  # a small stream may hold fewer blocks
    ids, labels = lm_inputs(batch, device)
    loss_scale = 1 / labelled_tokens(batch)
    window_loss = torch.zeros((), device=device)

    def step() -> None:
        nonlocal window_loss
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = summed_token_loss(model(input_ids=ids).logits, labels) * loss_scale
            extra = method.extra_loss(model)
        (loss if extra is None else loss + extra).backward()
        window_loss += loss.detach().float()
        method.transform_gradients(model)
        _, total = norms.compute()
        norms.clip_(total, cfg.trainer.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # optimizer state and caches exist before anything is measured
        step()
    return step, device
