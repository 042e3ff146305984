"""Ops each method adds to an optimizer step: a device-independent view of launch-bound GPU cost.

    python benchmarks/op_counts.py

A GPU step of a ~100M model at a modest batch is partly launch-bound: every op the framework or
a method adds costs a kernel launch whatever its size. This counts the compute ops (leaf aten
ops, views and allocations left out) torch.profiler records in one step (forward, backward, the
method's `transform_gradients`, per-layer norms and clipping, AdamW) of gpt2_100m's layout
(12 blocks, 48 linear layers) at a tiny width, on the CPU. Counts do not depend on the width.
The CPU runs a `_foreach_*` op one tensor at a time, and so it is counted here; CUDA fuses
lists of same-shape tensors into a few kernels (EWC's penalty gradient, AdamW), so those
counts overstate a GPU's launches. MIGU's masks broadcast, so CUDA applies them one by one too.
Writes benchmarks/results/op_counts.json.
"""

from __future__ import annotations

import torch
from common import method_step, save_result
from torch.profiler import profile

# ops that launch no kernel: views, allocations, dtype no-ops
NO_KERNEL = {"aten::view", "aten::select", "aten::as_strided", "aten::slice", "aten::unsqueeze", "aten::expand",
             "aten::t", "aten::transpose", "aten::detach", "aten::alias", "aten::reshape", "aten::_reshape_alias",
             "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::permute", "aten::squeeze",
             "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::to", "aten::lift_fresh",
             "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::_unsafe_view"}
METHODS = ["finetune", "ewc", "migu", "lora", "lora_migu"]


def ops_per_step(method_name: str) -> int:
    step, _ = method_step(["model.n_layer=12", f"method={method_name}"], micro_batch=1)
    with profile() as prof:
        step()
    return sum(1 for e in prof.events() if e.name.startswith("aten::") and e.name not in NO_KERNEL
               and not any(c.name.startswith("aten::") for c in e.cpu_children))


def main() -> None:
    torch.set_num_threads(1)
    counts = {name: ops_per_step(name) for name in METHODS}
    result = {
        "what": "compute ops per optimizer step (leaf aten ops, no views), 12 blocks, 1 micro-batch",
        "ops_per_step": counts,
        "extra_vs_finetune": {name: counts[name] - counts["finetune"] for name in METHODS},
    }
    save_result("op_counts", result)


if __name__ == "__main__":
    main()
