"""Corrupt checkpoints on real files: flipped bits in tensor data are caught by the CRC-32s."""

from __future__ import annotations

import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from lifelong.launch.checkpoint import checkpoint_dir, load_latest_checkpoint, save_checkpoint


def weights(step: int) -> torch.Tensor:
    return torch.arange(4096, dtype=torch.float32) + 10_000 * step  # distinct bytes per checkpoint


def save(run_dir: Path, step: int) -> Path:
    return save_checkpoint(run_dir, step, {"global_step": step, "model": {"weight": weights(step)}}, keep=3)


def flip_a_bit_in_the_weights(path: Path, step: int) -> None:
    data = bytearray(path.read_bytes())
    start = data.find(weights(step).numpy().tobytes())
    assert start > 0
    data[start + 8191] ^= 0x01  # the 2048th float's top byte: a large silent change if undetected
    path.write_bytes(bytes(data))


def assert_falls_back_from(newest: Path, run_dir: Path) -> None:
    with pytest.warns(UserWarning, match=re.escape(str(newest)) + r" is corrupt.*CRC-32.*falling back"):
        state = load_latest_checkpoint(run_dir)
    assert state is not None and state["global_step"] == 1
    assert torch.equal(state["model"]["weight"], weights(1))


def test_a_bit_flip_in_tensor_data_falls_back_to_the_previous_checkpoint(tmp_path):
    save(tmp_path, 1)
    newest = save(tmp_path, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean checkpoint loads without complaint
        state = load_latest_checkpoint(tmp_path)
    assert state["global_step"] == 2 and torch.equal(state["model"]["weight"], weights(2))
    flip_a_bit_in_the_weights(newest, 2)
    assert_falls_back_from(newest, tmp_path)


def test_checkpoints_carry_crcs_even_when_torch_is_told_not_to_compute_them(tmp_path):
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        save(tmp_path, 1)
        newest = save(tmp_path, 2)
    finally:
        torch.serialization.set_crc32_options(previous)
    flip_a_bit_in_the_weights(newest, 2)
    assert_falls_back_from(newest, tmp_path)


def test_a_corrupt_checkpoint_is_set_aside_so_pruning_keeps_the_good_ones(tmp_path):
    """Left in place, a corrupt newest stayed the newest by name, and pruning (keep=1) deleted the good
    checkpoint the resumed run wrote at an earlier step (preempted again): each relaunch started over."""
    save(tmp_path, 1)
    newest = save(tmp_path, 3)
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated
    with pytest.warns(UserWarning, match=r"step_00000003.pt is corrupt.*set aside as .*\.corrupt, falling back"):
        assert load_latest_checkpoint(tmp_path)["global_step"] == 1
    assert newest.with_name(newest.name + ".corrupt").exists() and not newest.exists()
    save_checkpoint(tmp_path, 2, {"global_step": 2, "model": {"weight": weights(2)}}, keep=1)  # resumed, preempted
    assert [p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")] == ["step_00000002.pt"]
    assert load_latest_checkpoint(tmp_path)["global_step"] == 2
    (tmp_path / "checkpoints" / "step_00000002.pt").write_bytes(b"")
    with pytest.warns(UserWarning, match=r"as step_00000002.pt.corrupt, no earlier one: starting from scratch"):
        assert load_latest_checkpoint(tmp_path) is None


WRITE_PAST_A_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import torch
from lifelong.launch.checkpoint import save_checkpoint, write_atomically
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
run_dir = Path(sys.argv[1])
save_checkpoint(run_dir, 1, {"model": {"weight": torch.zeros(10)}}, keep=3)
write_atomically(run_dir / "config.yaml", "seed: 0\\n")
resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, resource.RLIM_INFINITY))
for write in (lambda: save_checkpoint(run_dir, 2, {"model": {"weight": torch.zeros(100_000)}}, keep=3),
              lambda: write_atomically(run_dir / "config.yaml", "seed: 1\\n" * 100_000)):
    try:
        write()
    except OSError as error:
        print(error)
"""


def test_a_write_that_fails_names_the_file_and_the_space_left_and_leaves_the_last_good_one(tmp_path):
    """A full disk (here a file size limit) fails the write with an error naming the file and the
    space left, removes its temp file, and leaves the previous checkpoint and config.yaml whole."""
    done = subprocess.run([sys.executable, "-c", WRITE_PAST_A_FILE_SIZE_LIMIT, str(tmp_path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    errors = done.stdout.splitlines()
    assert len(errors) == 2
    assert re.match(rf"writing {re.escape(str(checkpoint_dir(tmp_path) / 'step_00000002.pt'))} failed .*MiB free there",
                    errors[0])
    assert re.match(rf"writing {re.escape(str(tmp_path / 'config.yaml'))} failed .*File too large.*MiB free there",
                    errors[1])
    assert sorted(p.name for p in checkpoint_dir(tmp_path).iterdir()) == ["step_00000001.pt"]
    assert (tmp_path / "config.yaml").read_text() == "seed: 0\n" and not list(tmp_path.glob("*.tmp"))
    assert torch.equal(load_latest_checkpoint(tmp_path)["model"]["weight"], torch.zeros(10))


def test_the_temp_file_of_a_write_a_crash_cut_short_is_removed_on_resume(tmp_path):
    save(tmp_path, 1)
    stale = checkpoint_dir(tmp_path) / "step_00000002.pt.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert load_latest_checkpoint(tmp_path)["global_step"] == 1
    assert not stale.exists()
