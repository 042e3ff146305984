"""Read an offline wandb run back from its `.wandb` file (wandb >= 0.31 ships no reader).

The file is a LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1, version), then
32 KiB blocks of records, each with a 7-byte header (crc32, length, type: full / first /
middle / last) and a serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[wandb_internal_pb2.Record]:
    data = path.read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:7])
    if ident != b":W&B" or magic != 0xBEE1:
        raise ValueError(f"{path} is not a wandb run file")
    out, pending, position = [], b"", 7
    while position + HEADER.size <= len(data):
        room = BLOCK - position % BLOCK
        if room < HEADER.size:  # a block's tail too short for a header is padding
            position += room
            continue
        _crc, length, kind = HEADER.unpack_from(data, position)
        if kind == 0 and length == 0:
            position += room
            continue
        chunk = data[position + HEADER.size : position + HEADER.size + length]
        position += HEADER.size + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            out.append(record)
    return out


def read_offline_run(run_file: Path) -> tuple[str, list[dict[str, Any]]]:
    """(run id, history rows) of an offline run file."""
    run_id, history = "", []
    for record in records(run_file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
        elif kind == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            history.append(row)
    return run_id, history
