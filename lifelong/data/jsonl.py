"""Bring your own stream: a directory of per-stage jsonl files.

    DIR/
      <stage name>/                # stages are read in natural name order: s2 before s10
        train.jsonl                # {"text": "..."} per line; read through datasets' Arrow cache
        probes_changed.jsonl       # {"text": "...", "target": "..."} per line; probes are optional
        probes_unchanged.jsonl     #   `target` (optional) is the scored span: its last occurrence
        probes_new.jsonl           #   in `text`; without it the whole sentence is scored
        knowledge.jsonl            # optional, same fields: temporal sequences for TGL tracing
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from lifelong.data.stream import PROBE_SETS, Probe, Stage, Stream, TextFiles


class DataFormatError(ValueError):
    pass


def numbered_jsonl(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    """(line number, record) of every non-empty line; a malformed line names the file and the line,
    and so can errors found later."""
    records = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataFormatError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            if not isinstance(record, dict):
                raise DataFormatError(f"{path}:{number}: expected a JSON object")
            absent = [key for key in required if key not in record]
            if absent:
                raise DataFormatError(f"{path}:{number}: missing field(s) {absent}")
            records.append((number, record))
    return records


def probe_from_record(record: dict, where: str) -> Probe:
    text, target = record["text"], record.get("target")
    if not isinstance(text, str) or not isinstance(target, str | None):
        raise DataFormatError(f"{where}: `text` (and `target`, if given) must be strings, got {record!r}")
    if target is None:
        return Probe.whole(text)
    if not target.strip():
        raise DataFormatError(f"{where}: target {target!r} is empty (leave it out to score the whole text)")
    start = text.rfind(target)
    if start < 0:
        raise DataFormatError(f"{where}: target {target!r} does not occur in text {text!r}")
    return Probe(text, (start, start + len(target)))


def _probes(path: Path) -> list[Probe]:
    if not path.exists():
        return []
    return [probe_from_record(r, f"{path}:{number}") for number, r in numbered_jsonl(path, ("text",))]


def natural_key(name: str) -> tuple[str | int, ...]:
    """Sorts digit runs by their number, so `s2` comes before `s10` (and `2019-05` before `2019-11`,
    as a plain sort already does). Split on a captured group, text and numbers alternate, so two
    keys compare text with text and numbers with numbers."""
    return tuple(int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", name)))


def check_probe_files(stage_dir: Path) -> None:
    """A probes_*.jsonl of a set other than changed / unchanged / new would be left out unseen."""
    for path in sorted(stage_dir.glob("probes_*.jsonl")):
        if path.name.removeprefix("probes_").removesuffix(".jsonl") not in PROBE_SETS:
            sets = ",".join(PROBE_SETS)
            raise DataFormatError(f"probe files named probes_{{{sets}}}.jsonl: {path} is not one of them")


def stage_dirs(root: Path) -> list[Path]:
    """A stream's stages: the sub-directories of its root, in natural name order."""
    return sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: (natural_key(p.name), p.name))


def load_stream(root: Path, cache_dir: str | None = None) -> Stream:
    if not root.is_dir():
        raise FileNotFoundError(f"data.path: stream directory not found: {root}")
    directories = stage_dirs(root)
    if not directories:
        raise FileNotFoundError(f"data.path: no stage directories in {root}")
    stages = []
    for stage_dir in directories:
        check_probe_files(stage_dir)
        train_file = stage_dir / "train.jsonl"
        if not train_file.exists():
            raise FileNotFoundError(f"missing training file: {train_file}")
        stages.append(
            Stage(
                name=stage_dir.name,
                train=TextFiles((train_file,), cache_dir=cache_dir),
                probes={name: _probes(stage_dir / f"probes_{name}.jsonl") for name in PROBE_SETS},
                knowledge=_probes(stage_dir / "knowledge.jsonl"),
            )
        )
    return Stream(stages)
