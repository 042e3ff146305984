"""Read every run of a Hydra multirun dir: its identity (method, TGL variant, seed) and results."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from lifelong.track.jsonl import read_jsonl_metrics


@dataclass
class Run:
    directory: Path
    overrides: list[str]
    method: str
    tgl: str
    seed: int
    results: dict | None  # None: the run is missing or failed
    grad_norms: dict[str, float] = field(default_factory=dict)  # mean per layer over training
    traces: list[dict] = field(default_factory=list)  # TGL traces, if any

    @property
    def cell(self) -> tuple[str, str]:
        return self.method, self.tgl


def expected_jobs(sweep_dir: Path) -> list[list[str]]:
    """The override list of every job the sweep asked for (from its multirun.yaml)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())
    task = multirun["hydra"]["overrides"]["task"]
    given = {override.split("=")[0].lstrip("+~") for override in task}
    params = multirun["hydra"]["sweeper"].get("params") or {}  # a preset's sweep, as BasicSweeper adds it
    task = [f"{key}={value}" for key, value in params.items() if key not in given] + task
    parsed = OverridesParser.create().parse_overrides(task)
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


def _job_dirs(sweep_dir: Path) -> dict[frozenset[str], Path]:
    found = {}
    for overrides_file in sweep_dir.glob("*/.hydra/overrides.yaml"):
        found[frozenset(yaml.safe_load(overrides_file.read_text()))] = overrides_file.parent.parent
    return found


def _choice(overrides: list[str], key: str, default: str) -> str:
    for override in overrides:
        name, _, value = override.partition("=")
        if name.lstrip("+") == key:
            return value
    return default


def collect_runs(sweep_dir: Path) -> list[Run]:
    if not (sweep_dir / "multirun.yaml").exists():
        raise FileNotFoundError(f"{sweep_dir} is not a Hydra multirun dir (no multirun.yaml)")
    directories = _job_dirs(sweep_dir)
    runs = []
    for job in expected_jobs(sweep_dir):
        directory = directories.get(frozenset(job), sweep_dir / "<never started>")
        config_file = directory / "config.yaml"
        config = yaml.safe_load(config_file.read_text()) if config_file.exists() else {}
        results_file = directory / "results.json"
        run = Run(
            directory=directory,
            overrides=job,
            method=config.get("method", {}).get("name") or _choice(job, "method", "finetune"),
            tgl=config.get("tgl", {}).get("name") or _choice(job, "tgl", "none"),
            seed=int(config.get("seed", _choice(job, "seed", "0"))),
            results=json.loads(results_file.read_text()) if results_file.exists() else None,
        )
        metrics = directory / "metrics.jsonl"
        if run.results is not None and metrics.exists():
            records = read_jsonl_metrics(metrics)
            layers = dict.fromkeys(k for r in records for k in r if k.startswith("grad_norm/"))
            for key in layers:  # a layer frozen in some stages (LoRA, TGL) is averaged where it trained
                values = [r[key] for r in records if key in r]
                run.grad_norms[key.removeprefix("grad_norm/")] = sum(values) / len(values)
            run.traces = [json.loads(p.read_text()) for p in sorted(directory.glob("trace_stage_*.json"))]
        runs.append(run)
    return runs
