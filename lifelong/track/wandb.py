"""`logger=wandb`: everything metrics.jsonl gets, plus images and tables, in a wandb run.

The run id is derived from the run's identity (its config, less what a relaunch may change,
and its run dir), so a requeued or resumed job continues the same wandb run
(`resume="allow"`). WANDB_MODE in the environment overrides `logger.mode`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from lifelong.track.jsonl import JsonlLogger


def run_id(identity: str) -> str:
    return hashlib.sha1(identity.encode()).hexdigest()[:16]


class WandbLogger(JsonlLogger):
    def __init__(self, path: Path, *, project: str, entity: str | None, mode: str, group: str | None,
                 job_type: str | None, tags: list[str], config: dict[str, Any], identity: str):
        super().__init__(path)
        import wandb

        self._wandb = wandb
        self.run = wandb.init(
            project=project, entity=entity, mode=os.environ.get("WANDB_MODE", mode), group=group,
            job_type=job_type, tags=tags, config=config, id=run_id(identity), resume="allow",
            dir=str(path.parent),
        )

    def log(self, record: dict[str, Any]) -> None:
        super().log(record)
        self.run.log(record, step=record["global_step"])

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        self.run.log({key: self._wandb.Image(str(path))}, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        self.run.log({key: self._wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self) -> None:
        super().close()
        self.run.finish()


def config_identity(config: dict[str, Any], run_dir: Path) -> str:
    """What makes a run this run: its config (lifelong.launch.checks.run_identity) and where it lives."""
    return json.dumps(config, sort_keys=True, default=str) + str(run_dir.resolve())
