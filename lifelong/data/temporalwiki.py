"""TemporalWiki (Jang et al. 2022) from its released files on disk.

    ROOT/TWiki_Diffsets/wikipedia_0809_gpt2.csv     one column `text`: the 08->09 diffset
    ROOT/twiki_probes/0801-0901_changed.csv         header subject,relation,object
    ROOT/twiki_probes/0801-0901_unchanged.csv       (TWiki_Probes/, as the zip is named, works too)

Paths and columns as joeljang/temporalwiki's Datasets.py reads them; a diffset row is a
"Title. text" piece of at most 512 GPT-2 tokens, read through datasets' Arrow cache.

A stage is a month pair (`0809`): its diffset is the training text, its probes are the
changed / unchanged facts of that pair (TemporalWiki has no new-entity probes). A probe is
`subject relation object`, scored over the whole sequence as in TemporalWiki, or over the
object only (`probe_target: object`). Changed facts with their object spans are the temporal
side of TGL's tracing.
"""

from __future__ import annotations

import csv
from pathlib import Path

from lifelong.data.jsonl import DataFormatError
from lifelong.data.stream import Probe, Stage, Stream, TextFiles


def read_csv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header; a missing column, a short or long row, or an empty field names the
    file and line."""
    if not path.exists():
        raise FileNotFoundError(f"missing TemporalWiki file: {path}")
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        absent = [c for c in columns if c not in (reader.fieldnames or [])]
        if absent:
            raise DataFormatError(f"{path}:1: header lacks column(s) {absent} (has {reader.fieldnames})")
        rows = []
        for row in reader:
            if any(row.get(c) is None for c in columns):
                raise DataFormatError(f"{path}:{reader.line_num}: row has fewer fields than the header")
            if None in row:  # DictReader's key for the fields past the header's: an unquoted comma?
                raise DataFormatError(f"{path}:{reader.line_num}: row has more fields than the header "
                                      f"(extra: {row[None]}; quote a field that holds a comma)")
            if blank := [c for c in columns if not row[c].strip()]:  # an empty object is a span of no token
                raise DataFormatError(f"{path}:{reader.line_num}: empty {', '.join(blank)}")
            rows.append(row)
    return rows


def fact_probe(row: dict[str, str], target: str) -> Probe:
    text = f"{row['subject']} {row['relation']} {row['object']}"
    if target == "object":
        return Probe(text, (len(text) - len(row["object"]), len(text)))
    return Probe.whole(text)


def stage_files(root: Path, pair: str) -> tuple[Path, Path, Path]:
    """(diffset, changed probes, unchanged probes) of a month pair such as 0809."""
    probes_dir = next((d for d in (root / "twiki_probes", root / "TWiki_Probes") if d.is_dir()), root / "twiki_probes")
    probes_prefix = f"{pair[:2]}01-{pair[2:]}01"
    return (root / "TWiki_Diffsets" / f"wikipedia_{pair}_gpt2.csv", probes_dir / f"{probes_prefix}_changed.csv",
            probes_dir / f"{probes_prefix}_unchanged.csv")


def load_temporalwiki(root: Path, stages: list[str], probe_target: str, cache_dir: str | None = None) -> Stream:
    if not root.is_dir():
        raise FileNotFoundError(f"data.root: TemporalWiki directory not found: {root}")
    out = []
    for pair in stages:
        diffset, changed_file, unchanged_file = stage_files(root, pair)
        changed = read_csv(changed_file, ("subject", "relation", "object"))
        unchanged = read_csv(unchanged_file, ("subject", "relation", "object"))
        if not diffset.exists():
            raise FileNotFoundError(f"missing TemporalWiki file: {diffset}")
        out.append(Stage(
            name=pair,
            train=TextFiles((diffset,), cache_dir=cache_dir),
            probes={"changed": [fact_probe(r, probe_target) for r in changed],
                    "unchanged": [fact_probe(r, probe_target) for r in unchanged], "new": []},
            knowledge=[fact_probe(r, "object") for r in changed],
        ))
    return Stream(out)
