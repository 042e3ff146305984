"""Ops each method adds to an optimizer step: a device-independent view of launch-bound GPU cost.

    python benchmarks/op_counts.py

A GPU step of a ~100M model at a modest batch is partly launch-bound: every op the framework or
a method adds costs a kernel launch whatever its size. This counts the compute ops (leaf aten
ops, views and allocations left out) torch.profiler records in one step (forward, backward, the
method's `transform_gradients`, per-layer norms and clipping, AdamW) of gpt2_100m's layout
(12 blocks, 48 linear layers) at a tiny width, on the CPU. Counts do not depend on the width.
Writes benchmarks/results/op_counts.json.
"""

from __future__ import annotations

import torch
from common import RESULTS, save_result
from torch.profiler import profile

from lifelong.config import compose_train_config
from lifelong.data.tokens import lm_inputs, pack, train_tokenizer
from lifelong.methods.base import StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, default_param_groups
from lifelong.train import summed_token_loss

# ops that launch no kernel: views, allocations, dtype no-ops
NO_KERNEL = {"aten::view", "aten::select", "aten::as_strided", "aten::slice", "aten::unsqueeze", "aten::expand",
             "aten::t", "aten::transpose", "aten::detach", "aten::alias", "aten::reshape", "aten::_reshape_alias",
             "aten::unbind", "aten::split", "aten::split_with_sizes", "aten::permute", "aten::squeeze",
             "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::to", "aten::lift_fresh",
             "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::_unsafe_view"}
METHODS = ["finetune", "migu", "lora", "lora_migu"]


def ops_per_step(method_name: str) -> int:
    cfg = compose_train_config(["data.num_stages=2", "model.n_layer=12", f"method={method_name}"])
    stream = cfg.data.build()
    tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    blocks = pack(tokenizer, stream.stages[0].train, cfg.data.seq_len)
    torch.manual_seed(0)
    method = cfg.method.build()
    model = method.wrap_model(build_model(cfg.model, tokenizer))
    # prepared as for stage 1, where every method is active (MIGU masks from the second stage on)
    for index in (0, 1):
        method.before_stage(StageContext(index, stream, [blocks, blocks], model, tokenizer, torch.device("cpu"),
                                         RESULTS, 1, None))
    groups = method.param_groups(model, cfg.trainer.lr, cfg.trainer.weight_decay)
    optimizer = build_optimizer(cfg.trainer, groups or default_param_groups(model, cfg.trainer.weight_decay))
    norms = LayerGradNorms(model)
    ids, labels = lm_inputs(blocks[:1])

    def step() -> None:
        summed_token_loss(model(input_ids=ids).logits, labels).backward()
        method.transform_gradients(model)
        _, total = norms.compute()
        norms.clip_(total, cfg.trainer.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):  # optimizer state and caches exist before counting
        step()
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
