"""Every run of a Hydra multirun dir: its identity (method, TGL variant, seed) and results; the rows they form."""

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
    from lifelong.config import job_overrides

    hydra = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())["hydra"]
    return job_overrides(hydra["overrides"]["task"], sweeper_params=hydra["sweeper"].get("params"))


def _job_dirs(sweep_dir: Path) -> dict[frozenset[str], list[Path]]:
    """Run dirs (those holding .hydra/overrides.yaml) by their overrides, at any depth: Hydra does not
    escape '/' in override_dirname, so `data.root=/a/b` nests a job's dir. A list, finished dirs first:
    a sweep of an older version (run dirs named `<job number>_<overrides>`) relaunched with more jobs
    numbered them anew and left a job's unfinished dir beside its finished one."""
    found: dict[frozenset[str], list[Path]] = {}
    for overrides_file in sorted(sweep_dir.rglob(".hydra/overrides.yaml")):
        overrides = frozenset(yaml.safe_load(overrides_file.read_text()))
        found.setdefault(overrides, []).append(overrides_file.parent.parent)
    for directories in found.values():
        directories.sort(key=lambda directory: not _finished(directory))  # stable
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
        matching = directories.get(frozenset(job))
        directory = matching.pop(0) if matching else sweep_dir / "<never started>"  # each dir serves one job
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
    for run in runs:  # a second finished run of a job would be dropped unseen
        extra = [d for d in directories.get(frozenset(run.overrides), []) if _finished(d)]
        if extra:
            raise ValueError(f"two finished runs of one job: {run.directory} and {extra[0]} (a job's run dir "
                             "copied, or an older sweep's; move the one not to report)")
    return runs


def runs_left_out(sweep_dir: Path, runs: list[Run]) -> list[Path]:
    """Finished run dirs of the sweep dir that are no job of its last launch (its multirun.yaml): the
    other jobs of an earlier launch into the same sweep dir."""
    taken = {run.directory for run in runs}
    return sorted(d for job in _job_dirs(sweep_dir).values() for d in job if _finished(d) and d not in taken)


def _finished(run_dir: Path) -> bool:
    return (run_dir / "results.json").exists()


def _without_seed(overrides: list[str]) -> frozenset[str]:
    return frozenset(o for o in overrides if o.partition("=")[0].lstrip("+~") != "seed")


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """The report's rows: runs that differ only in their seed, labelled 'method / tgl', plus in
    parentheses the overrides that set this row apart from others of its method / tgl, e.g.
    'ewc / none (trainer.lr=0.01)'.

    Only seeds are averaged over: runs that differ in anything else (a learning rate swept with one
    seed) are different settings, so they get rows of their own instead of a mean ± std that mixes
    them up. Two runs of one row with the same seed (a repeated job, a copied run dir) are an error
    naming both directories, as counting a run twice would shrink the std.
    """
    by_cell: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        by_cell.setdefault(run.cell, []).append(run)
    rows: dict[str, list[Run]] = {}
    for (method, tgl), cell_runs in by_cell.items():
        settings = [_without_seed(run.overrides) for run in cell_runs]
        shared = frozenset.intersection(*settings)
        for run, setting in zip(cell_runs, settings, strict=True):
            extra = ", ".join(sorted(setting - shared))
            rows.setdefault(f"{method} / {tgl}" + (f" ({extra})" if extra else ""), []).append(run)
    for label, row in rows.items():
        _check_seeds(label, row)
    return rows


def _check_seeds(label: str, row: list[Run]) -> None:
    by_seed: dict[int, Run] = {}
    for run in row:
        if run.seed in by_seed:
            raise ValueError(f"{label}: two runs with seed {run.seed} and the same overrides: "
                             f"{by_seed[run.seed].directory} and {run.directory}")
        by_seed[run.seed] = run
