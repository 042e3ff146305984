"""The recipe end to end on the tiny world: files, finite values, determinism."""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lifelong
from lifelong.config import ConfigError
from lifelong.data.corpus import CorpusFormatError
from lifelong.data.stream import PROBE_SETS
from lifelong.launch.checkpoint import load_latest_checkpoint
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.train import train
from tests.conftest import FIXTURES, REPO, make_config


def losses(run_dir):
    return [r["loss"] for r in read_jsonl_metrics(run_dir / "metrics.jsonl")]


def test_run_writes_config_metrics_results_and_provenance(tmp_path):
    cfg = make_config(tmp_path / "run")
    results = train(cfg)
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "results.json", "run_info.json", "tokenizer"):
        assert (run_dir / name).exists(), name
    records = read_jsonl_metrics(run_dir / "metrics.jsonl")
    stages = cfg.data.num_stages
    assert len(records) == stages * cfg.trainer.steps_per_stage
    for record in records:
        for key in ("stage", "step", "loss", "lr", "grad_norm", "tokens_per_s", "grad_norm/layer_00"):
            assert math.isfinite(record[key]), key
    assert json.loads((run_dir / "results.json").read_text()) == results
    for name in PROBE_SETS:
        matrix = results["probe_sets"][name]["matrix"]
        assert len(matrix) == stages and all(len(row) == stages for row in matrix)
        for row in matrix:
            for j, value in enumerate(row):
                empty = j == 0 and name != "new"  # the first snapshot has nothing changed
                assert (value is None) if empty else math.isfinite(value)
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["packages"]["torch"] and "sha" in info["git"]
    # the sha of the checkout the running lifelong was imported from (a clone's HEAD, not this test's)
    code_dir = Path(lifelong.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code_dir, capture_output=True, text=True, check=True)
    assert re.fullmatch(r"[0-9a-f]{40}", info["git"]["sha"]) and info["git"]["sha"] == head.stdout.strip()
    assert isinstance(info["git"]["dirty"], bool)


def test_same_seed_same_losses_other_seed_other_losses(tmp_path):
    train(make_config(tmp_path / "a", "seed=3"))
    train(make_config(tmp_path / "b", "seed=3"))
    train(make_config(tmp_path / "c", "seed=4"))
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert losses(tmp_path / "a") != losses(tmp_path / "c")


def test_a_run_treats_subnormal_floats_as_zero_unless_told_not_to(tmp_path):
    """AdamW's moments of weights whose gradient stays zero (MIGU's masked rows) decay into subnormal
    floats, which the fused CPU AdamW steps through at half speed: a run's process flushes them."""
    if not torch.set_flush_denormal(False):  # earlier runs in this process turned it on
        pytest.skip("this CPU cannot flush subnormal floats")
    subnormal = torch.tensor([1e-39])
    try:
        train(make_config(tmp_path / "kept", "trainer.flush_denormal=false"))
        assert (subnormal * 1).item() != 0
        train(make_config(tmp_path / "flushed"))
        assert (subnormal * 1).item() == 0
    finally:
        torch.set_flush_denormal(False)


def test_llama_preset_with_accumulation_and_constant_schedule(tmp_path):
    cfg = make_config(tmp_path / "run", "model=tiny_llama", "model.n_layer=2", "model.d_model=64",
                      "model.n_head=2", "model.d_ff=128", "trainer.grad_accum=2", "trainer.schedule=constant")
    results = train(cfg)
    assert results["probe_sets"]["new"]["final"] > 0
    lrs = [r["lr"] for r in read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lrs[-1] == pytest.approx(cfg.trainer.lr)


def test_accumulation_gives_the_loss_of_one_batch_despite_padding(tmp_path):
    """Blocks carry different numbers of padding tokens: each micro-batch's summed loss is divided
    by the whole step's labelled tokens, so 2 x 4 rows accumulate to the step of 8 rows at once."""
    common = ["data.seq_len=48", "trainer.schedule=constant", "data.num_stages=2", "trainer.steps_per_stage=4"]
    train(make_config(tmp_path / "one", *common, "trainer.micro_batch_size=8"))
    train(make_config(tmp_path / "two", *common, "trainer.micro_batch_size=4", "trainer.grad_accum=2"))
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)


def test_a_finished_run_is_not_trained_again(tmp_path, capsys):
    first = train(make_config(tmp_path / "run"))
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert train(make_config(tmp_path / "run")) == first
    assert "is complete" in capsys.readouterr().out
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines


def test_a_run_dir_is_not_reused_under_another_config(tmp_path):
    first = train(make_config(tmp_path / "run", "data.num_stages=2"))
    with pytest.raises(ConfigError, match=r"trainer\.lr=0\.05.*started with.*hydra\.run\.dir"):
        train(make_config(tmp_path / "run", "data.num_stages=2", "trainer.lr=0.05"))
    # what does not change the computation may change, as when a requeued job is relaunched
    assert train(make_config(tmp_path / "run", "data.num_stages=2", "trainer.progress=true")) == first


def test_a_job_that_fails_to_load_its_data_leaves_its_run_dir_free(tmp_path):
    """The run starts once its data and model are loaded: mending the data path and relaunching
    into the same run dir is not refused as another run."""
    bad, good = tmp_path / "bad", tmp_path / "good"
    shutil.copytree(FIXTURES / "jsonl", good)
    shutil.copytree(FIXTURES / "jsonl", bad)
    (bad / "2020" / "train.jsonl").write_text('{"title": "no text"}\n')
    with pytest.raises(CorpusFormatError, match="bad/2020/train.jsonl: no `text`"):
        train(make_config(tmp_path / "run", "data=jsonl", f"data.path={bad}", "data.seq_len=16"))
    assert not (tmp_path / "run" / "config.yaml").exists()
    results = train(make_config(tmp_path / "run", "data=jsonl", f"data.path={good}", "data.seq_len=16"))
    assert results["stages"] == ["2019", "2020"]


def test_the_logged_lr_is_the_one_the_step_used(tmp_path, monkeypatch):
    """Linear warmup over 3 of 6 steps: step k (1-based) of a stage trains at lr * k / 3. Under
    adaptive_lr (stage 1 on) the logged rate is the schedule's, not one layer's scaled rate. Each
    optimizer step's own groups are read as it runs (a step pre-hook on the trainer's optimizer): every
    group's rate over its starting rate, times lr, is the rate logged for that step."""
    import lifelong.train
    from lifelong.optim import build_optimizer

    used = []  # per optimizer step: each group's schedule factor times the base lr

    def observed_optimizer(*args, **kwargs):
        optimizer = build_optimizer(*args, **kwargs)
        optimizer.register_step_pre_hook(lambda opt, *_: used.append(
            [0.003 * group["lr"] / group["initial_lr"] for group in opt.param_groups]))
        return optimizer

    monkeypatch.setattr(lifelong.train, "build_optimizer", observed_optimizer)
    train(make_config(tmp_path / "run", "data.num_stages=2", "trainer.warmup_fraction=0.5", "trainer.lr=0.003",
                      "tgl=adaptive_lr"))
    lrs = [r["lr"] for r in read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert lrs[:3] == pytest.approx([0.001, 0.002, 0.003]) and lrs[6:9] == pytest.approx([0.001, 0.002, 0.003])
    assert len(used) == len(lrs) == 12
    for step, (logged, rates) in enumerate(zip(lrs, used, strict=True)):
        assert rates == pytest.approx([logged] * len(rates)), step


def test_local_model_path_and_jsonl_stream(tmp_path, monkeypatch):
    """A model saved by one run loads from disk (model=local) and trains on a jsonl stream, in fp32
    though saved in bf16, as most public checkpoints are; being pretrained, its FUAR counts stage 0."""
    import lifelong.train
    from lifelong.data.tokens import load_tokenizer
    from lifelong.eval.metrics import fuar

    calls = []
    monkeypatch.setattr(lifelong.train, "fuar", lambda *args: calls.append(args) or fuar(*args))
    from lifelong.models import build_model

    first = make_config(tmp_path / "first")
    tokenizer = load_tokenizer(_save_tokenizer(first, tmp_path))
    model = build_model(first.model, tokenizer)
    model.to(torch.bfloat16).save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    for stage, fact in enumerate(["Ana lives in Rome.", "Ana lives in Oslo."]):
        directory = tmp_path / "stream" / f"s{stage}"
        directory.mkdir(parents=True)
        (directory / "train.jsonl").write_text(json.dumps({"text": fact}) + "\n")
        (directory / "probes_changed.jsonl").write_text(json.dumps({"text": fact, "target": fact[-5:-1]}) + "\n")
    cfg = make_config(tmp_path / "run", "model=local", f"model.path={tmp_path / 'model'}", "data=jsonl",
                      f"data.path={tmp_path / 'stream'}", "data.seq_len=16")
    results = train(cfg)
    assert results["stages"] == ["s0", "s1"]
    assert math.isfinite(results["probe_sets"]["changed"]["matrix"][1][1])
    trained = load_latest_checkpoint(tmp_path / "run")["model"]
    assert {value.dtype for value in trained.values() if value.is_floating_point()} == {torch.float32}
    sets = results["probe_sets"]
    assert calls[-1][3] == tuple(sets[name]["initial"] for name in ("changed", "unchanged", "new"))
    train(make_config(tmp_path / "built"))  # a model built from config: stage 0 learns from scratch
    assert len(calls[-1]) == 4 and calls[-1][3] is None


def test_a_local_model_with_fewer_embedding_rows_than_its_tokenizer_is_refused_before_the_run(tmp_path):
    """A token id past the embedding's rows was an IndexError in the first evaluation, after the run dir
    was claimed."""
    from lifelong.config import ConfigError
    from lifelong.data.tokens import load_tokenizer
    from lifelong.models import build_model

    first = make_config(tmp_path / "first")
    tokenizer = load_tokenizer(_save_tokenizer(first, tmp_path))
    model = build_model(first.model, tokenizer)
    model.resize_token_embeddings(len(tokenizer) - 10)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    cfg = make_config(tmp_path / "run", "model=local", f"model.path={tmp_path / 'model'}")
    with pytest.raises(ConfigError, match=rf"model.path=.*each of its tokenizer's {len(tokenizer)} tokens"):
        train(cfg)
    assert not (tmp_path / "run" / "config.yaml").exists()


def _save_tokenizer(cfg, tmp_path):
    from lifelong.data.tokens import train_tokenizer

    tokenizer = train_tokenizer([*cfg.data.build().all_text(), "Ana lives in Rome Oslo."], 384)
    tokenizer.save_pretrained(tmp_path / "tok")
    return tmp_path / "tok"


def test_cli_default_entry_point_runs_a_job(tmp_path):
    run_dir = tmp_path / "cli"
    done = subprocess.run(
        [sys.executable, "-m", "lifelong.train", "experiment=smoke", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "Perplexity after training stage 2" in done.stdout
    assert (run_dir / "results.json").exists() and (run_dir / ".hydra" / "overrides.yaml").exists()
