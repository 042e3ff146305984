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
import random
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

# the schemas conf/ extends: Hydra's --help and --cfg compose without validate_command_line, which imports them too
import lifelong.methods  # noqa: F401
import lifelong.tgl  # noqa: F401
from lifelong.config import (
    CONF_DIR,
    ConfigError,
    Device,
    Precision,
    TrainConfig,
    TrainerConfig,
    to_train_config,
)
from lifelong.data import corpus
from lifelong.data.stream import PROBE_SETS, Stream
from lifelong.data.tokens import labelled_tokens, lm_inputs, load_tokenizer, summed_token_loss, train_tokenizer
from lifelong.eval.accuracy import span_accuracy
from lifelong.eval.metrics import fuar, summarize
from lifelong.eval.perplexity import EncodedProbes, encode_probes, perplexity
from lifelong.launch.checkpoint import (
    checkpoint_dir,
    load_latest_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_atomically,
)
from lifelong.launch.checks import (
    check_device_visible,
    check_same_identity,
    check_same_run,
    run_identity,
    save_run_config,
)
from lifelong.launch.distributed import DistEnv, any_rank, init_distributed, mean_across_ranks
from lifelong.launch.host_memory import keep_freed_host_memory
from lifelong.launch.preemption import Preemption
from lifelong.methods.base import Method, StageContext
from lifelong.models import build_model
from lifelong.optim import LayerGradNorms, build_optimizer, build_scheduler, default_param_groups
from lifelong.track import build_logger
from lifelong.track.deferred import DeferredMetrics
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.track.plots import grad_norm_heatmap
from lifelong.track.runinfo import run_info

AUTOCAST = {Precision.fp32: None, Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}

# what a checkpoint holds (`checkpoint`), and mid-stage also the optimizer's state: a resume from an
# older lifelong's checkpoint that lacks one would fail part-way, so it is refused up front
CHECKPOINT_KEYS = {"stage", "step", "global_step", "model", "rng", "scaler", "hooks", "matrices", "initial"}
MID_STAGE_KEYS = {"optimizer", "scheduler", "window_loss"}
PREEMPTION_POLL_STEPS = 10  # with several ranks; SLURM warns ahead of the kill (--signal=USR2@120)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: Device) -> torch.device:
    if device is Device.auto:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_device_visible(device)
    return torch.device(device.value)


def build_tokenizer(cfg: TrainConfig, stream: Stream, run_dir: Path, save: bool):
    """The model's own tokenizer for a local model; else a BPE trained on the stream (the same
    on every rank), saved with the run so its checkpoints can be read back."""
    if cfg.model.path:
        tokenizer = load_tokenizer(Path(cfg.model.path))
    else:
        tokenizer = train_tokenizer(stream.all_text(), cfg.data.vocab_size)
    if save:
        tokenizer.save_pretrained(str(run_dir / "tokenizer"))
    return tokenizer


def keep_metrics_until(path: Path, global_step: int) -> None:
    """On resume, drop metrics logged after the checkpoint, so each step appears once."""
    if path.exists():
        kept = [r for r in read_jsonl_metrics(path) if r["global_step"] <= global_step]
        write_atomically(path, "".join(json.dumps(r) + "\n" for r in kept))


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


def evaluate_accuracy(model, stream: Stream, tokenizer, device) -> list[dict[str, float | None]]:
    """TempLAMA's protocol: greedy exact match and top-k of every stage's probe spans, keyed
    `<probe set>/exact_match` and `<probe set>/top_k`."""
    rows = []
    for stage in stream.stages:
        row = {}
        for name in PROBE_SETS:
            scores = span_accuracy(model, tokenizer, stage.probes.get(name, []), device, stream.accuracy_top_k)
            row.update({f"{name}/{metric}": value for metric, value in scores.items()})
        rows.append(row)
    return rows


def format_row(stage: int, row: list[dict[str, float | None]]) -> str:
    lines = [f"Perplexity after training stage {stage} (rows: probes of stage j)",
             "  stage  " + "".join(f"{name:>11}" for name in PROBE_SETS)]
    for j, sets in enumerate(row):
        cells = "".join(f"{sets[n]:>11.2f}" if sets[n] is not None else f"{'-':>11}" for n in PROBE_SETS)
        lines.append(f"  {j:>5}  {cells}")
    return "\n".join(lines)


def check_resumable(run_dir: Path, state: dict, world_size: int) -> None:
    """A ValueError naming what the latest checkpoint lacks, if it lacks anything a resume reads, or
    if another number of processes wrote it: the ranks share the global batch, so it would change."""
    missing = (CHECKPOINT_KEYS | (MID_STAGE_KEYS if state.get("step") else set())) - state.keys()
    if missing:
        raise ValueError(f"the latest checkpoint in {checkpoint_dir(run_dir)} lacks {', '.join(sorted(missing))}: an "
                         "older lifelong wrote it. Resume with that version, or move the directory away to start over")
    started = state.get("world_size", world_size)  # checkpoints of older versions do not say
    if started != world_size:
        raise ValueError(f"{run_dir} was trained by {started} processes and this launch has {world_size}: they share "
                         f"the global batch, so resume it with {started} (torchrun --nproc_per_node, or the cluster's "
                         "tasks and nodes), or give this run another run dir")


def checkpoint(run_dir: Path, env: DistEnv, tc: TrainerConfig, global_step: int, state: dict, model: nn.Module,
               hooks: list[Method], matrices: dict, initial: list[dict], scaler: torch.amp.GradScaler,
               identity: dict) -> None:
    """Everything a resume needs besides `state` (position and optimizer), and the run's identity
    (what a resume checks it against); rank 0 writes."""
    if env.is_main:
        save_checkpoint(run_dir, global_step, {
            **state, "global_step": global_step, "model": model.state_dict(), "rng": rng_state(),
            "scaler": scaler.state_dict(), "world_size": env.world_size, "identity": identity,
            "hooks": [h.state_dict() for h in hooks], "matrices": matrices, "initial": initial,
        }, tc.keep_checkpoints)
    if env.world_size > 1:
        torch.distributed.barrier()


def apply_process_settings(tc: TrainerConfig) -> None:
    """The trainer's settings of the whole process: torch's threads, glibc's allocator, subnormal
    floats as zero. A benchmark timing the trainer's step outside `train` applies them too."""
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    if tc.keep_host_memory:
        keep_freed_host_memory()
    if tc.flush_denormal:
        torch.set_flush_denormal(True)


def train(cfg: TrainConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    check_same_run(run_dir, cfg)
    if (run_dir / "results.json").exists():  # a re-launched sweep skips finished runs
        print(f"{run_dir} is complete (results.json); nothing to do", flush=True)
        return json.loads((run_dir / "results.json").read_text())
    apply_process_settings(cfg.trainer)
    device = resolve_device(cfg.trainer.device)
    env = init_distributed(device.type)
    if env.world_size > 1 and device.type == "cuda":
        device = torch.device("cuda", env.local_rank)
    seed_everything(cfg.seed)
    autocast_dtype = AUTOCAST[cfg.trainer.precision]
    identity = run_identity(cfg)
    resume = load_latest_checkpoint(run_dir)
    if resume:
        check_resumable(run_dir, resume, env.world_size)
        if "identity" in resume:  # config.yaml guards the run dir; this, a checkpoint copied into it
            check_same_identity(resume["identity"], identity, f"the latest checkpoint in {checkpoint_dir(run_dir)} "
                                "was written with")
    if resume and env.is_main:
        print(f"Resuming {run_dir} at stage {resume['stage']}, step {resume['step']}", flush=True)
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        keep_metrics_until(run_dir / "metrics.jsonl", resume["global_step"] if resume else 0)

    stream = cfg.data.build()
    cfg.check_stage_count(len(stream.stages))  # TempLAMA's stages are known only once it is loaded
    tokenizer = build_tokenizer(cfg, stream, run_dir, save=env.is_main)
    model = build_model(cfg.model, tokenizer)
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:  # a token id past the embedding's rows is an IndexError mid-evaluation
        raise ConfigError("model.path", cfg.model.path, f"a model whose embedding has a row for each of its "
                          f"tokenizer's {len(tokenizer)} tokens (it has {rows})")
    hooks: list[Method] = [cfg.method.build(), cfg.tgl.build()]
    if resume:  # hook state first: it may change the model's structure (LoRA adapters)
        for hook, state in zip(hooks, resume["hooks"], strict=True):
            hook.load_state_dict(state)
    for hook in hooks:
        model = hook.wrap_model(model)
    if resume:
        model.load_state_dict(resume["model"])
    model.to(device).train()

    seq_len = cfg.data.seq_len
    stage_blocks = [corpus.stage_blocks(stage.train, tokenizer, seq_len) for stage in stream.stages]
    probes = [
        {name: encode_probes(tokenizer, stage.probes.get(name, []), seq_len) for name in PROBE_SETS}
        for stage in stream.stages
    ]
    if env.is_main:  # the run starts here: a job that failed to load its data or model claims no run dir
        save_run_config(run_dir, cfg)
        # each launch's code and environment; a resume (a requeue, maybe of other code) keeps the first's
        info = f"run_info_resume_{resume['global_step']:08d}.json" if resume else "run_info.json"
        (run_dir / info).write_text(json.dumps(run_info(), indent=2))

    num_stages = len(stream.stages)
    accuracy_keys = [f"{n}/{m}" for n in PROBE_SETS for m in ("exact_match", "top_k")] if stream.accuracy_top_k else []
    matrices = resume["matrices"] if resume else {n: [[None] * num_stages for _ in range(num_stages)]
                                                  for n in [*PROBE_SETS, *accuracy_keys]}
    logger = build_logger(cfg, run_dir, env.is_main)
    metrics = DeferredMetrics(logger)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.trainer.precision is Precision.fp16)
    if resume:  # fp16's loss scale carries across stages, so every checkpoint holds it
        scaler.load_state_dict(resume["scaler"])
    preemption = Preemption().install()
    tc = cfg.trainer
    local_batch = tc.micro_batch_size * tc.grad_accum
    step_batch = local_batch * env.world_size  # the global batch: ranks take disjoint slices of it
    # across ranks the preemption check is a collective and a host sync (it stalls a GPU's queue)
    preemption_poll = PREEMPTION_POLL_STEPS if env.world_size > 1 else 1
    first_stage, first_step = (resume["stage"], resume["step"]) if resume else (0, 0)
    # the untrained model's perplexities: the reference of forward transfer
    initial = resume["initial"] if resume else evaluate(model, probes, cfg, device, tokenizer.pad_token_id)

    for t in range(first_stage, num_stages):
        resuming_mid_stage = resume is not None and t == first_stage and first_step > 0
        if resume is not None and t == first_stage and not resuming_mid_stage:
            set_rng_state(resume["rng"])
        ctx = StageContext(t, stream, stage_blocks[: t + 1], model, tokenizer, device, run_dir,
                           tc.micro_batch_size, logger, env.is_main, tc.grad_accum, env.world_size)
        for hook in hooks:
            hook.before_stage(ctx)
        blocks = hooks[0].stage_data(ctx)
        groups = next((g for h in hooks if (g := h.param_groups(model, tc.lr, tc.weight_decay)) is not None), None)
        optimizer = build_optimizer(tc, groups or default_param_groups(model, tc.weight_decay))
        scheduler = build_scheduler(tc, optimizer)
        train_model = DistributedDataParallel(model) if env.world_size > 1 else model
        norms = LayerGradNorms(model, getattr(cfg.tgl, "block_pattern", None))  # the rows TGL traces
        order = stage_batches(blocks, tc.steps_per_stage, step_batch, cfg.seed * 1000 + t)
        window_loss = torch.zeros((), device=device)
        if resuming_mid_stage:
            optimizer.load_state_dict(resume["optimizer"])
            scheduler.load_state_dict(resume["scheduler"])
            window_loss += resume["window_loss"].to(device)
            set_rng_state(resume["rng"])
        start_step = first_step if resuming_mid_stage else 0
        window_start, timed_from = time.perf_counter(), start_step  # a resumed window's earlier steps ran untimed

        for step in tqdm(range(start_step, tc.steps_per_stage), desc=f"stage {t}", initial=start_step,
                         total=tc.steps_per_stage, disable=not (tc.progress and env.is_main), leave=False,
                         dynamic_ncols=True):
            step_order = order[step * step_batch : (step + 1) * step_batch]
            rank_order = step_order[env.rank * local_batch :][:local_batch]
            # every micro-batch on every rank divides its summed loss by the labelled tokens of the whole
            # global batch, so padding, accumulation and DDP give the loss of one big batch
            loss_scale = env.world_size / labelled_tokens(blocks[step_order])
            for micro in range(tc.grad_accum):
                rows = rank_order[micro * tc.micro_batch_size : (micro + 1) * tc.micro_batch_size]
                input_ids, labels = lm_inputs(blocks[rows], device)
                last_micro = micro == tc.grad_accum - 1
                sync = nullcontext() if last_micro or env.world_size == 1 else train_model.no_sync()
                with sync, torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                    loss = summed_token_loss(train_model(input_ids=input_ids).logits, labels) * loss_scale
                    for hook in hooks:
                        extra = hook.extra_loss(model)
                        if extra is not None:
                            loss = loss + extra / tc.grad_accum
                    scaler.scale(loss).backward()
                window_loss += loss.detach().float()
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
                # windows tile the loop: this logging call is timed in the next window, as a user pays it
                now = time.perf_counter()
                elapsed, window_start = now - window_start, now
                timed_steps, timed_from = step + 1 - timed_from, step + 1
                record = {"stage": t, "step": step + 1, "global_step": t * tc.steps_per_stage + step + 1,
                          # the schedule's rate at this step (under tgl=adaptive_lr each group scales it)
                          "lr": tc.lr * scheduler.lr_lambdas[0](step),
                          "tokens_per_s": timed_steps * step_batch * seq_len / elapsed}
                # loss and norms stay on the device: they are written once they reach the host
                values = torch.cat([(mean_across_ranks(window_loss) / steps_in_window).reshape(1),
                                    total_norm.reshape(1), layer_norms])
                metrics.log(record, ["loss", "grad_norm", *(f"grad_norm/{n}" for n in norms.layers)], values)
                window_loss = torch.zeros((), device=device)
            preempted = (step + 1) % preemption_poll == 0 and any_rank(preemption.requested, device)
            if preempted or (tc.checkpoint_every and (step + 1) % tc.checkpoint_every == 0
                             and step + 1 < tc.steps_per_stage):
                metrics.flush()  # the metrics file holds every step up to the checkpoint
                state = {"stage": t, "step": step + 1, "optimizer": optimizer.state_dict(),
                         # each rank holds its share of the window's loss; logging reads their mean
                         "scheduler": scheduler.state_dict(), "window_loss": mean_across_ranks(window_loss).cpu()}
                checkpoint(run_dir, env, tc, t * tc.steps_per_stage + step + 1, state, model, hooks, matrices,
                           initial, scaler, identity)
            if preempted:
                logger.close()
                preemption.hand_over()

        metrics.flush()
        for hook in reversed(hooks):  # undo in reverse: TGL releases its freeze before EWC's Fisher
            hook.after_stage(ctx)
        if env.is_main:
            records = read_jsonl_metrics(run_dir / "metrics.jsonl")
            heatmap = grad_norm_heatmap(records, t, run_dir / f"grad_norms_stage_{t}.png")
            if heatmap is not None:
                logger.log_image(f"grad_norm_heatmap/stage_{t}", heatmap, step=(t + 1) * tc.steps_per_stage)
        row = evaluate(model, probes, cfg, device, tokenizer.pad_token_id)
        for j, sets in enumerate(row):
            for name in PROBE_SETS:
                matrices[name][t][j] = sets[name]
        if accuracy_keys:
            for j, scores in enumerate(evaluate_accuracy(model, stream, tokenizer, device)):
                for key, value in scores.items():
                    matrices[key][t][j] = value
        if env.is_main:
            print(format_row(t, row), flush=True)
            logger.log_table(f"perplexity/after_stage_{t}", ["probe_stage", *PROBE_SETS],
                             [[j, *(sets[n] for n in PROBE_SETS)] for j, sets in enumerate(row)],
                             step=(t + 1) * tc.steps_per_stage)
        # the next stage starts from here: no optimizer state (each stage builds its own)
        checkpoint(run_dir, env, tc, (t + 1) * tc.steps_per_stage, {"stage": t + 1, "step": 0}, model, hooks,
                   matrices, initial, scaler, identity)
        # a signal during the stage's last steps or its evaluation would otherwise wait for the next
        # stage's first poll, after TGL's tracing; the stage's checkpoint is written: hand over now
        if t + 1 < num_stages and any_rank(preemption.requested, device):
            logger.close()
            preemption.hand_over()

    preemption.uninstall()
    logger.close()
    results = {
        "stages": [stage.name for stage in stream.stages],
        "probe_sets": {
            name: {"matrix": matrices[name], "initial": [sets[name] for sets in initial],
                   **summarize(matrices[name], [sets[name] for sets in initial])}
            for name in PROBE_SETS
        },
        # a pretrained model's stage 0 is an update; a model built from config learns from scratch in it
        "fuar": fuar(matrices["changed"], matrices["unchanged"], matrices["new"],
                     tuple([sets[name] for sets in initial] for name in ("changed", "unchanged", "new"))
                     if cfg.model.path else None),
    }
    if accuracy_keys:  # stage x stage matrices of span accuracy, as the perplexity ones
        results["accuracy"] = {key: matrices[key] for key in accuracy_keys}
    if env.is_main:
        write_atomically(run_dir / "results.json", json.dumps(results, indent=2))
    return results


@hydra.main(config_path=str(CONF_DIR), config_name="train", version_base="1.3")
def hydra_main(cfg: DictConfig) -> None:
    train(to_train_config(cfg))


def main() -> None:
    """Console entry: check every job's config first, then hand over to Hydra."""
    from lifelong.launch.checks import validate_command_line

    # conf/hydra/launcher/submitit_*.yaml give the plugin's launchers the project's defaults under the
    # plugin's own names, so Hydra validates them against its schemas: intended, not worth a warning
    warnings.filterwarnings("ignore", message="(?s).*validated against ConfigStore schema with the same name")

    if not any(a in ("-h", "--help", "--hydra-help", "-c", "--cfg", "--info") for a in sys.argv[1:]):
        try:
            validate_command_line(sys.argv[1:])
        except ConfigError as error:
            print(f"Config error: {error}", file=sys.stderr)
            sys.exit(2)
    hydra_main()


if __name__ == "__main__":
    main()
