"""The recipe: lifelong pretraining, stage after stage, with evaluation after each stage.

    lifelong-train                                   # tiny GPT-2 on the synthetic stream, CPU
    lifelong-train model=tiny_llama trainer.lr=3e-4  # any override Hydra accepts
    lifelong-train -m method=finetune seed=0,1,2     # a sweep

Read `train()` top to bottom: build the stream, tokenizer and model; then for every stage let
the method prepare, train `steps_per_stage` optimizer steps, let the method wrap up, and
evaluate every stage's probes. Methods plug in through the hooks of `lifelong/methods/base.py`.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lifelong.config import CONF_DIR, ConfigError, Device, Precision, TrainConfig, to_train_config
from lifelong.data.stream import PROBE_SETS, Stream
from lifelong.data.tokens import load_tokenizer, pack, train_tokenizer
from lifelong.eval.metrics import summarize
from lifelong.eval.perplexity import EncodedProbes, encode_probes, perplexity
from lifelong.methods.base import Method, StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, build_scheduler, default_param_groups
from lifelong.track.jsonl import JsonlLogger
from lifelong.track.plots import grad_norm_heatmap
from lifelong.track.runinfo import run_info

AUTOCAST = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device is Device.cuda and not torch.cuda.is_available():
        raise ConfigError("trainer.device", "cuda", "cpu or auto: no CUDA device is visible")
    return torch.device(device.value)


def build_tokenizer(cfg: TrainConfig, stream: Stream, run_dir: Path):
    """The model's own tokenizer for a local model; else a BPE trained on the stream, saved
    with the run so its checkpoints can be read back."""
    if cfg.model.path is not None:
        tokenizer = load_tokenizer(Path(cfg.model.path))
    else:
        tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    return tokenizer


def stage_batches(blocks: torch.Tensor, steps: int, batch_size: int, seed: int) -> torch.Tensor:
    """The stage's batch order: shuffled epochs over the blocks, fixed by (seed, stage), so
    step k always sees the same batch. Returns indices [steps * batch_size]."""
    generator = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    epochs = -(-needed // len(blocks))
    order = torch.cat([torch.randperm(len(blocks), generator=generator) for _ in range(epochs)])
    return order[:needed]


def evaluate(model, probes: list[dict[str, EncodedProbes]], cfg: TrainConfig, device, pad_id: int):
    """Perplexity of every stage's every probe set: one row of the stage x stage matrices."""
    dtype = AUTOCAST[cfg.trainer.precision]
    return [
        {name: perplexity(model, sets[name], cfg.trainer.eval_batch_size, device, pad_id, dtype)
         for name in PROBE_SETS}
        for sets in probes
    ]


def format_row(stage: int, row: list[dict[str, float | None]]) -> str:
    lines = [f"Perplexity after training stage {stage} (rows: probes of stage j)",
             "  stage  " + "".join(f"{name:>11}" for name in PROBE_SETS)]
    for j, sets in enumerate(row):
        cells = "".join(f"{sets[n]:>11.2f}" if sets[n] is not None else f"{'-':>11}" for n in PROBE_SETS)
        lines.append(f"  {j:>5}  {cells}")
    return "\n".join(lines)


def train(cfg: TrainConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if (run_dir / "results.json").exists() or (run_dir / "metrics.jsonl").exists():
        raise FileExistsError(f"{run_dir} already holds a run; set hydra.run.dir to a new directory")
    if cfg.trainer.num_threads:
        torch.set_num_threads(cfg.trainer.num_threads)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.trainer.device)
    autocast_dtype = AUTOCAST[cfg.trainer.precision]
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    (run_dir / "run_info.json").write_text(json.dumps(run_info(), indent=2))

    stream = cfg.data.build()
    tokenizer = build_tokenizer(cfg, stream, run_dir)
    model = build_model(cfg.model, tokenizer)
    hooks: list[Method] = [cfg.method.build(), cfg.tgl.build()]
    for hook in hooks:
        model = hook.wrap_model(model)
    model.to(device).train()

    seq_len = cfg.data.seq_len
    stage_blocks = [pack(tokenizer, stage.train, seq_len) for stage in stream.stages]
    probes = [
        {name: encode_probes(tokenizer, stage.probes.get(name, []), seq_len) for name in PROBE_SETS}
        for stage in stream.stages
    ]
    num_stages = len(stream.stages)
    matrices = {name: [[None] * num_stages for _ in range(num_stages)] for name in PROBE_SETS}
    logger = JsonlLogger(run_dir / "metrics.jsonl")
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision is Precision.fp16)
    tc = cfg.trainer
    step_batch = tc.micro_batch_size * tc.grad_accum

    for t in range(num_stages):
        ctx = StageContext(t, stream, stage_blocks[: t + 1], model, tokenizer, device, run_dir,
                           tc.micro_batch_size, logger)
        for hook in hooks:
            hook.before_stage(ctx)
        blocks = hooks[0].stage_data(ctx)
        groups = next((g for h in hooks if (g := h.param_groups(model, tc.lr, tc.weight_decay)) is not None), None)
        optimizer = build_optimizer(tc, groups or default_param_groups(model, tc.weight_decay))
        scheduler = build_scheduler(tc, optimizer)
        norms = LayerGradNorms(model)
        order = stage_batches(blocks, tc.steps_per_stage, step_batch, cfg.seed * 1000 + t)
        tokens_per_step = step_batch * seq_len
        window_start, window_loss = time.perf_counter(), torch.zeros((), device=device)
        stage_records: list[dict] = []

        for step in tqdm(range(tc.steps_per_stage), desc=f"stage {t}", disable=not tc.progress,
                         leave=False, dynamic_ncols=True):
            step_order = order[step * step_batch : (step + 1) * step_batch]
            for micro in range(tc.grad_accum):
                rows = step_order[micro * tc.micro_batch_size : (micro + 1) * tc.micro_batch_size]
                batch = blocks[rows].to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = model(input_ids=batch, labels=batch).loss
                    for hook in hooks:
                        extra = hook.extra_loss(model)
                        if extra is not None:
                            loss = loss + extra
                scaler.scale(loss / tc.grad_accum).backward()
                window_loss += loss.detach().float() / tc.grad_accum
            scaler.unscale_(optimizer)
            for hook in hooks:
                hook.transform_gradients(model)
            layer_norms, total_norm = norms.compute()
            norms.clip_(total_norm, tc.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)

            if (step + 1) % tc.log_every == 0 or step + 1 == tc.steps_per_stage:
                steps_in_window = (step % tc.log_every) + 1
                elapsed = time.perf_counter() - window_start
                record = {
                    "stage": t,
                    "step": step + 1,
                    "global_step": t * tc.steps_per_stage + step + 1,
                    "loss": window_loss.item() / steps_in_window,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": total_norm.item(),
                    "tokens_per_s": steps_in_window * tokens_per_step / elapsed,
                }
                record.update({f"grad_norm/{n}": v for n, v in zip(norms.layers, layer_norms.tolist(),
                                                                    strict=True)})
                logger.log(record)
                stage_records.append(record)
                window_start, window_loss = time.perf_counter(), torch.zeros((), device=device)

        for hook in hooks:
            hook.after_stage(ctx)
        heatmap = grad_norm_heatmap(stage_records, t, run_dir / f"grad_norms_stage_{t}.png")
        if heatmap is not None:
            logger.log_image(f"grad_norm_heatmap/stage_{t}", heatmap, step=(t + 1) * tc.steps_per_stage)
        row = evaluate(model, probes, cfg, device, tokenizer.pad_token_id)
        for j, sets in enumerate(row):
            for name in PROBE_SETS:
                matrices[name][t][j] = sets[name]
        print(format_row(t, row), flush=True)

    logger.close()
    results = {
        "stages": [stage.name for stage in stream.stages],
        "probe_sets": {
            name: {"matrix": matrices[name], **summarize(matrices[name])} for name in PROBE_SETS
        },
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2))
    return results


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    train(to_train_config(cfg))


def main() -> None:
    """Console entry: check every job's config first, then hand over to Hydra."""
    from lifelong.config import validate_command_line

    if not any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "--info") for a in sys.argv[1:]):
        try:
            validate_command_line(sys.argv[1:])
        except ConfigError as error:
            print(f"Config error: {error}", file=sys.stderr)
            sys.exit(2)
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    hydra_main()


if __name__ == "__main__":
    main()
