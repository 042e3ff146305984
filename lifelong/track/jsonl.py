"""`metrics.jsonl`: one JSON object per logged step, flushed as written."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any


class JsonlLogger:
    def __init__(self, path: Path):
        self.path = path
        self._file = path.open("a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def log_image(self, key: str, path: Path, step: int | None = None) -> None:
        """Images stay as files in the run dir; trackers such as wandb upload them too."""

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], step: int | None = None) -> None:
        """Tables land in results.json; trackers such as wandb log them too."""

    def close(self) -> None:
        self._file.close()


def read_jsonl_metrics(path: Path) -> list[dict[str, Any]]:
    """The file's records. A last line cut short (the process died mid-write, so it lacks its newline)
    is left out with a warning: a resume must not fail on it. Any other unreadable line raises."""
    *lines, tail = path.read_text().split("\n")
    records = [json.loads(line) for line in lines if line.strip()]
    if tail.strip():
        try:
            records.append(json.loads(tail))
        except json.JSONDecodeError:
            warnings.warn(f"{path}: its last line is cut short (an interrupted write) and is left out", stacklevel=2)
    return records


class NullLogger(JsonlLogger):
    """What ranks other than 0 log to."""

    def __init__(self) -> None:
        pass

    def log(self, record: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass
