"""Tracking: metrics.jsonl always, wandb optionally; run metadata and plots."""

from __future__ import annotations

from pathlib import Path

from lifelong.track.jsonl import JsonlLogger, NullLogger


def default_group(run_dir: Path) -> str:
    """A sweep's runs share a wandb group, its dir's name: the nearest dir above the run dir holding
    Hydra's multirun.yaml, as a path override (`data.path=/a/b`) nests a job's dir. Else the run dir's parent."""
    run_dir = run_dir.resolve()
    return next((d for d in run_dir.parents if (d / "multirun.yaml").exists()), run_dir.parent).name


def build_logger(cfg, run_dir: Path, is_main: bool):
    """The run's logger: rank 0 only; every logger writes metrics.jsonl."""
    if not is_main:
        return NullLogger()
    if cfg.logger.kind != "wandb":
        return JsonlLogger(run_dir / "metrics.jsonl")
    from omegaconf import OmegaConf

    from lifelong.launch.checks import run_identity
    from lifelong.track.runinfo import run_info
    from lifelong.track.wandb import WandbLogger, config_identity

    config = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True, enum_to_str=True)
    config.pop("run_dir")
    # the config a relaunch may change (logger, threads, ...) must not start another wandb run
    identity = config_identity(run_identity(cfg), run_dir)
    info = run_info()
    return WandbLogger(
        run_dir / "metrics.jsonl",
        project=cfg.logger.project, entity=cfg.logger.entity, mode=cfg.logger.mode.value,
        group=cfg.logger.group or default_group(run_dir), job_type=cfg.logger.job_type or cfg.method.name,
        tags=list(cfg.logger.tags),
        config={**config, "git_sha": info["git"]["sha"], "packages": info["packages"]}, identity=identity,
    )


__all__ = ["build_logger", "JsonlLogger", "NullLogger"]
