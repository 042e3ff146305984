"""Where MIGU's extra step time goes: ways of summing |output| side by side, paired rounds.

    python benchmarks/migu_sums.py [--rounds 20] [--steps 10] [--micro-batch 16] [--device cuda]
    python benchmarks/migu_sums.py --model gpt2_large --micro-batch 8 --name migu_sums_cuda_paper
        --variants finetune,migu,migu_masks,migu_hook_masks,migu_skip_masked_rows
        (paper scale: one gpt2_large, 710M params, and its AdamW state per variant, 8.5 GB each)
    python benchmarks/migu_sums.py --device cpu --micro-batch 1 --rounds 300   (MIGU's parts on a CPU)
    python benchmarks/migu_sums.py --device cpu --model gpt2_100m --micro-batch 1 --rounds 30 --steps 2
        --variants finetune,migu,migu_skip_masked_rows --name migu_sums_cpu_100m
    python migu_sums.py --device cpu --model gpt2_100m --micro-batch 8 --rounds 10 --steps 1
        --variants finetune,migu,migu_skip_masked_rows --name migu_sums_cpu_100m_8x128   (matmuls dominate)

MIGU misses its target on the GPU, and sits at it on a CPU at batch 1x128 (benchmarks/RESULTS.md);
this script tells its parts apart.
Every variant gets its own model and optimizer, prepared as for stage 1 (common.method_step),
and runs `--steps` steps per round next to finetune's in a rotating order:
  migu             as shipped (on a GPU one Triton launch sums a forward's outputs, migu_triton.py)
  migu_compiled    the sums torch.compile'd instead, one call per forward (shipped before c3428ac)
  migu_eager       eager abs().sum() (abs() writes |output| out, sum reads it back)
  migu_norm        eager, one launch per output: torch.linalg.vector_norm(ord=1) reduces |output|
                   without writing it out
  migu_no_sums     hooks and masking only: the sums are never computed (masks from zeros)
  migu_masks       as shipped, but the masks set by one Triton launch that writes only the masked
                   rows' zeros (migu_mask_triton.py; a candidate, not shipped)
  migu_no_masks    as shipped, but the gradients are never masked
  migu_hook_sums   each layer's |output| summed in its own forward hook, right after it ran (on a
                   GPU one Triton launch per layer): while the output may still be in the GPU's L2
  migu_hook_masks  the thresholds at the end of the forward, and each weight's gradient masked in
                   its post-accumulate-grad hook, right after the backward wrote it (may be in L2);
                   right only for a step of one micro-batch in one process, as here
  migu_skip_masked_rows  MIGU with method.skip_masked_rows=true (lifelong/methods/migu_kept_rows.py):
                   the thresholds at the end of the forward, and each weight's gradient computed
                   for its kept rows only (a gradient matmul of 1 - T of the rows; the masked rows
                   are zeros, never computed): MIGU's masks make a share of the step's work unneeded
On a GPU the step is --model (gpt2_100m), --micro-batch x 512, bf16 as in gpu.py. On a CPU
(one thread) --model (tiny_gpt2), and only finetune, migu and the variants that leave a part
out, move it into hooks or skip the masked rows' gradients (the others change the GPU's code):
what each part of MIGU costs there. Prints each variant's median step time and its median ratio
to finetune's step, and saves them to benchmarks/results/<--name, default migu_sums_<device>>.json
(a row of RESULTS.md).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import types
from collections.abc import Callable, Iterator

import torch
from common import save_result
from methods_paired import paired_variants, patched

import lifelong.methods.migu as migu_module
from lifelong.config import TrainerConfig
from lifelong.methods.migu import MIGU, output_magnitudes
from lifelong.train import apply_process_settings

ACCUMULATE = MIGU._accumulate  # as shipped: hook_sums calls it while MIGU._accumulate is patched
GPU = ["trainer=gpu", "trainer.device=cuda", "data.seq_len=512", "model.max_seq_len=512"]


def norm_output_magnitudes(outputs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.linalg.vector_norm(o, 1, dim=tuple(range(o.dim() - 1)), dtype=torch.float32) for o in outputs]


def triton_mask_gradients(grads: list[torch.Tensor], masks: list[torch.Tensor]) -> None:
    from migu_mask_triton import triton_mask_gradients  # Triton: on the GPU machine, not in the project's deps

    triton_mask_gradients(grads, masks)


def no_sums(self: MIGU, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
    if module.training:
        self.counted.add(module)


def hook_sums(self: MIGU, module: torch.nn.Module, inputs: object, output: torch.Tensor) -> None:
    """MIGU's own hook, then its own summing of what the hook holds: this one output."""
    ACCUMULATE(self, module, inputs, output)
    self._sum_pending()


def mask_in_place(weight: torch.Tensor, mask: torch.Tensor) -> None:
    weight.grad.mul_(mask)


@torch.no_grad()
def masks_at_forward_end(self: MIGU, model: torch.nn.Module, inputs: object, output: object) -> None:
    """MIGU's masks set as the forward ends (after _forward_done, registered before, so the sums are
    whole), marked so, as with method.skip_masked_rows: a step of one micro-batch then only resets
    the sums at its boundary."""
    if model.training:
        self._set_masks()
        self.masked_in_forward = True


@contextlib.contextmanager
def hook_masks() -> Iterator[None]:
    """MIGU built inside this block masks each weight's gradient in its post-accumulate-grad hook
    (right only for a step of one micro-batch in one process, as here)."""
    plan = MIGU._plan

    def plan_with_grad_hooks(self: MIGU, model: torch.nn.Module) -> None:
        plan(self, model)
        self.handles += [t.weight.register_post_accumulate_grad_hook(functools.partial(mask_in_place, mask=mask))
                         for t, mask in zip(self.targets, self.row_masks, strict=True)]
        self.handles.append(model.register_forward_hook(types.MethodType(masks_at_forward_end, self)))

    with patched(MIGU, "_plan", plan_with_grad_hooks):
        yield


VARIANTS: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
    "finetune": contextlib.nullcontext,
    "migu": contextlib.nullcontext,
    "migu_compiled": lambda: patched(migu_module, "gpu_output_magnitudes", lambda: torch.compile(output_magnitudes)),
    "migu_eager": lambda: patched(migu_module, "gpu_output_magnitudes", lambda: output_magnitudes),
    "migu_norm": lambda: patched(migu_module, "gpu_output_magnitudes", lambda: norm_output_magnitudes),
    "migu_no_sums": lambda: patched(MIGU, "_accumulate", no_sums),
    "migu_masks": lambda: patched(migu_module, "mask_gradients", triton_mask_gradients),
    "migu_no_masks": lambda: patched(migu_module, "mask_gradients", lambda grads, masks: None),
    "migu_hook_sums": lambda: patched(MIGU, "_accumulate", hook_sums),
    "migu_hook_masks": hook_masks,
    "migu_skip_masked_rows": contextlib.nullcontext,
}
OVERRIDES = {"migu_skip_masked_rows": ["method.skip_masked_rows=true"]}  # the variants that are MIGU's options
CPU_VARIANTS = ["finetune", "migu", "migu_no_sums", "migu_no_masks", "migu_hook_sums", "migu_hook_masks",
                "migu_skip_masked_rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", help="the model preset (default gpt2_100m on a GPU, tiny_gpt2 on a CPU)")
    parser.add_argument("--variants", help="comma-separated, finetune first (default: all that run on the device)")
    parser.add_argument("--name", help="results/<name>.json (default migu_sums_<device>)")
    args = parser.parse_args()
    model = args.model or ("gpt2_100m" if args.device == "cuda" else "tiny_gpt2")
    if args.device == "cuda":
        overrides, names = [*GPU, f"model={model}"], list(VARIANTS)
    else:
        apply_process_settings(TrainerConfig(num_threads=1))  # as methods_paired.py
        overrides, names = ["trainer.device=cpu", f"model={model}"], CPU_VARIANTS
    if args.variants:
        chosen = args.variants.split(",")
        if chosen[0] != "finetune" or any(name not in names for name in chosen):
            parser.error(f"--variants: {args.variants}; allowed: finetune first, then any of {', '.join(names[1:])}")
        names = chosen
    variants = {name: ([*overrides, f"method={'finetune' if name == 'finetune' else 'migu'}", *OVERRIDES.get(name, [])],
                       VARIANTS[name]) for name in names}
    measured = paired_variants(variants, args.micro_batch, args.rounds, args.steps)
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    save_result(args.name or f"migu_sums_{args.device}",
                {"device": device, "model": model, "micro_batch": args.micro_batch, **measured})


if __name__ == "__main__":
    main()
