"""EWC's gradient term as shipped vs fused in one Triton launch, side by side in paired rounds.

    python benchmarks/ewc_variants.py [--rounds 20] [--steps 10] [--model gpt2_large] [--micro-batch 8] [--device cuda]

EWC misses its target at paper scale on a GPU (benchmarks/RESULTS.md), where its term is bound
by memory traffic. Every variant gets its own model and optimizer, prepared as for stage 1
(common.method_step), and runs `--steps` steps per round next to finetune's, in a rotating order:
  ewc         as shipped (sub + addcmul: 7 passes over the parameters' size)
  ewc_triton  fused (ewc_triton.py: 5 passes, one launch)
On a GPU the step is bf16 autocast at 512 tokens, the model and micro-batch as given (default
gpt2_large 8 x 512, as gpu.py's paper scale); on a CPU the tiny preset. Prints each variant's
median step time and median ratio to finetune's, and saves benchmarks/results/ewc_variants_<device>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import types

import torch
from common import save_result
from methods_paired import paired_variants, patched

from lifelong.methods.ewc import EWC, EWCConfig

EWC_INIT = EWC.__init__


def fused_transform_gradients(self: EWC, model: torch.nn.Module) -> None:
    """EWC.transform_gradients with ewc_triton's kernel: one EWCGradient per set of parameters with
    a gradient and of the term's tensors, made at the first step that needs it. After a stage the
    term holds new tensors (merged, or online EWC's latest), so the kernel is keyed by their ids
    too; a cached kernel keeps its tensors alive, so those ids are not reused meanwhile."""
    from ewc_triton import EWCGradient  # Triton: on the GPU machine, not in the project's deps

    names = tuple(name for name in self.anchor if self.params[name].grad is not None)
    if not names:
        return
    anchors, fishers = [self.anchor[n] for n in names], [self.fisher[n] for n in names]
    key = (names, tuple(map(id, anchors)), tuple(map(id, fishers)))
    cache = self.__dict__.setdefault("fused", {})
    if key not in cache:
        cache[key] = EWCGradient([self.params[n].detach() for n in names], anchors, fishers)
    cache[key]([self.params[n].grad for n in names], self.cfg.ewc_lambda)


def fused_init(self: EWC, cfg: EWCConfig) -> None:
    """EWC.__init__, and this instance's transform_gradients fused (the trainer's step looks it up
    on the instance, so the other variants' EWC keeps the shipped one)."""
    EWC_INIT(self, cfg)
    self.transform_gradients = types.MethodType(fused_transform_gradients, self)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", default="gpt2_large")
    parser.add_argument("--micro-batch", type=int, default=8)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    overrides = (["trainer=gpu", "trainer.device=cuda", f"model={args.model}", "data.seq_len=512",
                  "model.max_seq_len=512"] if args.device == "cuda" else ["trainer.device=cpu"])
    variants = {
        "finetune": ([*overrides, "method=finetune"], contextlib.nullcontext),
        "ewc": ([*overrides, "method=ewc"], contextlib.nullcontext),
        "ewc_triton": ([*overrides, "method=ewc"], lambda: patched(EWC, "__init__", fused_init)),
    }
    measured = paired_variants(variants, args.micro_batch, args.rounds, args.steps)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    save_result(f"ewc_variants_{args.device}", {"device": device, "model": args.model,
                                                 "micro_batch": args.micro_batch, **measured})


if __name__ == "__main__":
    main()
