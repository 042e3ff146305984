"""With glibc told to keep freed host memory, a CPU training step stops page-faulting its
activations in anew.

The step's MLP activations are 32 MB and more: above the largest mmap threshold glibc ever adapts
to by itself, so by default each one is mapped and zero-filled anew every step. (Smaller models
show the same effect, but how much depends on where glibc's adaptive thresholds settle in a
given run, which made a test on them flaky.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

from lifelong.launch.host_memory import keep_freed_host_memory

# a fresh interpreter per measurement: the setting is process-wide and would leak into other tests
FAULTS_PER_STEP = """
import resource, sys, torch
from lifelong.config import ModelConfig
from lifelong.data.tokens import train_tokenizer
from lifelong.launch.host_memory import keep_freed_host_memory
from lifelong.models import build_model
if sys.argv[1] == "keep":
    assert keep_freed_host_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
tokenizer = train_tokenizer([f"entity {i} lives in city {i % 7}." for i in range(200)], 512)
model = build_model(ModelConfig(n_layer=1, d_model=64, n_head=4, d_ff=8192, max_seq_len=128), tokenizer)
optimizer = torch.optim.AdamW(model.parameters(), fused=True)
ids = torch.randint(0, len(tokenizer), (8, 128))
def step():
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    step()
before = faults()
for _ in range(5):
    step()
print((faults() - before) / 5)
"""


def faults_per_step(mode: str) -> float:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_STEP, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return float(done.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_training_step_reuses_freed_memory():
    default, kept = faults_per_step("default"), faults_per_step("keep")
    assert default > 300  # glibc maps and zero-fills the step's activations anew
    assert kept * 3 < default


def test_reports_false_where_there_is_no_mallopt(monkeypatch):
    monkeypatch.setattr("ctypes.CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    assert keep_freed_host_memory() is False
