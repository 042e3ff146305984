"""Checkpoints: written atomically (temp file + rename), the last K kept, and on resume the
newest one that loads (a truncated or corrupt one is skipped with a warning).

torch.save writes a zip archive with a CRC-32 per record, but torch.load never checks them, so
flipped bits in tensor data would load silently: the loader verifies them first."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.serialization import config as serialization_config

PATTERN = "step_*.pt"


def checkpoint_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoints"


def rng_state() -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.copy()), "pos": pos, "has_gauss": has_gauss,
                  "gauss": gauss},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def temporary_for(path: Path) -> Iterator[Path]:
    """The temp file to write `path` through: renamed onto it once written and on disk, so a reader
    (or a relaunch after a crash) sees the old file or the new one, never a part. A write that fails
    (a full disk, a quota) removes it and says where, with the space left there."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        yield temporary
        with temporary.open("rb") as file:
            os.fsync(file.fileno())
    except (OSError, RuntimeError) as error:  # torch.save reports a failed write as a RuntimeError
        temporary.unlink(missing_ok=True)
        free = shutil.disk_usage(path.parent).free
        raise OSError(f"writing {path} failed ({error}); {free / 2**20:.0f} MiB free there") from error
    os.replace(temporary, path)


def write_atomically(path: Path, text: str) -> None:
    with temporary_for(path) as temporary:
        temporary.write_text(text)


def save_checkpoint(run_dir: Path, global_step: int, state: dict[str, Any], keep: int) -> Path:
    directory = checkpoint_dir(run_dir)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step_{global_step:08d}.pt"
    # even if CRC-32s were turned off globally: without them the loader would reject every checkpoint
    with serialization_config.patch({"save.compute_crc32": True}), temporary_for(path) as temporary:
        torch.save({**state, "complete": True}, temporary)
    for old in sorted(directory.glob(PATTERN))[:-keep]:
        old.unlink()
    return path


def verify_checksums(path: Path) -> None:
    """Raise zipfile.BadZipFile unless every record of the archive matches its CRC-32."""
    with zipfile.ZipFile(path) as archive:
        bad = archive.testzip()
    if bad is not None:
        raise zipfile.BadZipFile(f"CRC-32 mismatch in record {bad}")


def load_latest_checkpoint(run_dir: Path) -> dict[str, Any] | None:
    """The newest checkpoint that verifies and loads whole, or None when there is none. One that
    does not is set aside as `<name>.corrupt`: left among the checkpoints, it would stay the newest
    by name, and pruning would delete the good ones the resumed run writes. The temp file of a write
    a crash cut short is removed: nothing writes while a run starts."""
    for stale in checkpoint_dir(run_dir).glob(PATTERN + ".tmp"):
        stale.unlink(missing_ok=True)  # every rank reads the checkpoints
    paths = sorted(checkpoint_dir(run_dir).glob(PATTERN), reverse=True)
    for index, path in enumerate(paths):
        try:
            verify_checksums(path)
            state = torch.load(path, map_location="cpu", weights_only=True)
            problem = None if state.get("complete") is True else "is incomplete"
        except FileNotFoundError:  # another rank set it aside meanwhile
            continue
        except Exception as error:  # truncated / corrupt: zipfile and torch raise several kinds
            problem = f"is corrupt or unreadable ({type(error).__name__}: {error})"
        if problem is None:
            return state
        with contextlib.suppress(FileNotFoundError):  # every rank reads the checkpoints
            os.replace(path, path.with_name(path.name + ".corrupt"))
        then = "falling back to the previous one" if index + 1 < len(paths) else "no earlier one: starting from scratch"
        warnings.warn(f"checkpoint {path} {problem}; set aside as {path.name}.corrupt, {then}", stacklevel=2)
    return None
