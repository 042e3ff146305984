"""TGL: tracing is exact and side-effect free; selection rules; freeze and adaptive LR."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from lifelong.config import CONF_DIR, ModelConfig, SyntheticDataConfig, TrainerConfig
from lifelong.data.synthetic import generate_stream
from lifelong.data.tokens import lm_inputs, pack, sample_rows, train_tokenizer
from lifelong.eval.perplexity import EncodedProbes, encode_probes
from lifelong.methods.base import StageContext
from lifelong.models import build_model, is_block, layer_of
from lifelong.optim import build_optimizer, build_scheduler, default_param_groups
from lifelong.tgl.adaptive_lr import AdaptiveLRConfig
from lifelong.tgl.freeze import FreezeConfig
from lifelong.tgl.select import Rule, select_layers
from lifelong.tgl.trace import Trace, span_batch, trace_layers
from lifelong.track.jsonl import read_jsonl_metrics
from lifelong.train import train
from tests.conftest import make_config
from tests.methods.conftest import checkpoint_at, migu_targets, rows_moved_only_by_weight_decay, tiny_model

STREAM = generate_stream(SyntheticDataConfig(num_stages=2, num_entities=8, new_entities_per_stage=4,
                                             train_renderings=2))


@pytest.fixture(scope="module")
def setup():
    tokenizer = train_tokenizer(STREAM.all_text(), 320)
    blocks = [pack(tokenizer, stage.train, 32) for stage in STREAM.stages]
    return tokenizer, blocks


def ctx_for(index, model, tokenizer, blocks, tmp_path):
    return StageContext(index, STREAM, blocks[: index + 1], model, tokenizer, torch.device("cpu"), tmp_path, 4, None)


def lm_loss(model, blocks):
    ids, labels = lm_inputs(blocks)
    return model(input_ids=ids, labels=labels).loss


def naive_norms(model, losses):
    params = dict(model.named_parameters())
    rows = list(dict.fromkeys(layer_of(n) for n in params))
    total = torch.zeros(len(rows), dtype=torch.float64)
    for loss in losses:
        grads = torch.autograd.grad(loss(), list(params.values()), allow_unused=True)
        squares = dict.fromkeys(rows, 0.0)
        for name, grad in zip(params, grads, strict=True):
            if grad is not None:
                squares[layer_of(name)] += grad.double().pow(2).sum().item()
        total += torch.tensor([squares[r] ** 0.5 for r in rows])
    return rows, (total / len(losses)).tolist()


def test_trace_equals_naive_and_leaves_no_trace(setup, tmp_path):
    tokenizer, blocks = setup
    torch.manual_seed(0)  # dropout on: tracing must neither draw from nor reset the RNG
    model = build_model(ModelConfig(n_layer=2, d_model=32, n_head=2, d_ff=64, max_seq_len=32, dropout=0.1), tokenizer)
    knowledge = encode_probes(tokenizer, STREAM.stages[1].knowledge, 32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rng = torch.get_rng_state()
    trace = trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id)
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(torch.equal(p, before[n]) and p.grad is None for n, p in model.named_parameters())
    assert model.training

    model.eval()
    temporal = []
    knowledge_rows, control_rows = (sample_rows(n, 2 * 4, seed=0).tolist() for n in (len(knowledge), len(blocks[1])))
    for b in range(2):
        ids, attention, labels = span_batch(knowledge, knowledge_rows[4 * b : 4 * b + 4], tokenizer.pad_token_id)
        temporal.append(lambda i=ids, a=attention, lab=labels: model(input_ids=i, attention_mask=a, labels=lab).loss)
    control = [lambda b=b: lm_loss(model, blocks[1][control_rows[4 * b : 4 * b + 4]]) for b in range(2)]
    rows, naive_temporal = naive_norms(model, temporal)
    _, naive_control = naive_norms(model, control)
    assert trace.layers == rows
    assert trace.temporal == pytest.approx(naive_temporal, rel=1e-4)
    assert trace.control == pytest.approx(naive_control, rel=1e-4)


def test_matched_control_is_deterministic_and_scores_fewer_tokens(setup):
    tokenizer, blocks = setup
    model = tiny_model(tokenizer).eval()
    knowledge = encode_probes(tokenizer, STREAM.stages[1].knowledge, 32)
    span_tokens = round(sum(map(sum, knowledge.targets)) / len(knowledge))
    rng = torch.get_rng_state()
    matched = trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id,
                           matched_control=True)
    full = trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id)
    assert torch.equal(torch.get_rng_state(), rng)
    assert matched.temporal == full.temporal
    # a mean over span_tokens tokens instead of 31 per block: larger control norms in every layer
    assert all(m > f for m, f in zip(matched.control, full.control, strict=True))
    again = trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id,
                         matched_control=True)
    assert again.control == matched.control and span_tokens >= 1


@pytest.mark.parametrize("matched_control", [False, True])
def test_a_trace_does_not_depend_on_how_its_batches_are_chunked(setup, matched_control):
    """A batch of 4 run as 4, 2 or 1 rows at a time: the gradient of its mean token loss, whatever
    the micro-batch size the trainer runs (the batch is the global one: micro x grad_accum x ranks)."""
    tokenizer, blocks = setup
    model = tiny_model(tokenizer)
    knowledge = encode_probes(tokenizer, STREAM.stages[1].knowledge, 32)
    whole, *chunked = (trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id,
                                    matched_control=matched_control, chunk_size=chunk) for chunk in (4, 2, 1))
    for trace in chunked:
        assert trace.temporal == pytest.approx(whole.temporal, rel=1e-5)
        assert trace.control == pytest.approx(whole.control, rel=1e-5)
    smaller = trace_layers(model, knowledge, blocks[1], 2, 2, torch.device("cpu"), tokenizer.pad_token_id,
                           matched_control=matched_control)
    assert smaller.temporal != pytest.approx(whole.temporal, rel=1e-3)  # the batch size itself does matter


def test_tracing_does_not_change_training(setup, tmp_path):
    tokenizer, blocks = setup
    knowledge = encode_probes(tokenizer, STREAM.stages[1].knowledge, 32)
    losses = {}
    for traced in (False, True):
        torch.manual_seed(0)
        model = tiny_model(tokenizer)
        optimizer = build_optimizer(make_config(tmp_path / "cfg").trainer, default_param_groups(model, 0.01))
        run = []
        for step in range(4):
            if traced and step == 2:
                trace_layers(model, knowledge, blocks[1], 2, 4, torch.device("cpu"), tokenizer.pad_token_id)
            loss = lm_loss(model, blocks[1][:4])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            run.append(loss.item())
        losses[traced] = run
    assert losses[True] == losses[False]


def test_selection_rules_on_hand_built_profiles():
    layers = ["embed", "layer_00", "layer_01", "layer_02", "layer_03", "final_norm"]
    relative = [5.0, 4.0, 3.5, 3.0, 1.5, 1.0]  # the blocks' mean is 3.0; over every row it would be 3.0 - 1/12
    assert select_layers(layers, relative, Rule.above_mean) == ["layer_00", "layer_01"]  # not layer_02, not embed
    assert select_layers(layers, relative, Rule.top_k, k=3) == ["layer_00", "layer_01", "layer_02"]
    assert select_layers(layers, relative, Rule.top_fraction, fraction=0.5) == ["layer_00", "layer_01"]
    # a fraction of the 4 blocks rounds up: 0.3 -> 2 blocks (not 1), 0.1 -> 1 block (not none)
    assert select_layers(layers, relative, Rule.top_fraction, fraction=0.3) == ["layer_00", "layer_01"]
    assert select_layers(layers, relative, Rule.top_fraction, fraction=0.1) == ["layer_00"]
    assert select_layers(layers, relative, Rule.top_fraction, fraction=0.6) == ["layer_00", "layer_01", "layer_02"]
    with pytest.warns(UserWarning, match="selected no layer"):  # none above the mean: the top-1, never none
        assert select_layers(layers, [1.0] * 6, Rule.above_mean) == ["layer_00"]
    with pytest.warns(UserWarning, match="selected no layer"):
        assert select_layers(["layer_00"], [4.1], Rule.above_mean) == ["layer_00"]
    # no block row (a block_pattern that matches nothing): the rule ranks every row
    assert select_layers(["embed", "other", "lm_head"], [1.0, 3.0, 2.5], Rule.above_mean) == ["other", "lm_head"]


def test_the_trace_plots_line_is_the_mean_the_rule_compares_with(setup, tmp_path, monkeypatch):
    """The blocks' mean, not every row's: drawn over all rows, a grey block could sit above the line.
    The real trace_plot draws the figure; pyplot's close is held back so its dashed line can be read."""
    import matplotlib.pyplot as plt

    figures, close = [], plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig))
    tokenizer, blocks = setup
    freeze = FreezeConfig(from_stage=1).build()
    freeze.before_stage(ctx_for(1, tiny_model(tokenizer), tokenizer, blocks, tmp_path))
    rows = dict(zip(freeze.trace.layers, freeze.trace.relative, strict=True))
    block_r = [r for layer, r in rows.items() if is_block(layer)]
    assert len(block_r) < len(rows)  # embeddings, final norm and LM head are rows too
    assert (tmp_path / "trace_stage_1.png").stat().st_size > 0
    (figure,) = figures
    try:
        bottom = figure.axes[1]  # relative norms, below the temporal and control bars
        (line,) = [line for line in bottom.get_lines() if line.get_linestyle() == "--"]
        drawn = line.get_ydata()
    finally:
        close(figure)
    assert drawn[0] == drawn[1] == pytest.approx(sum(block_r) / len(block_r))
    assert sum(rows.values()) / len(rows) != pytest.approx(drawn[0])  # every row's mean is another line
    assert all(rows[layer] > drawn[0] for layer in freeze.selected)


@pytest.mark.parametrize("freeze_non_block", [False, True])
def test_freeze_keeps_unselected_layers_bit_identical(setup, tmp_path, freeze_non_block):
    tokenizer, blocks = setup
    model = tiny_model(tokenizer)
    freeze = FreezeConfig(from_stage=1, rule=Rule.top_k, k=1, freeze_non_block=freeze_non_block).build()
    ctx = ctx_for(1, model, tokenizer, blocks, tmp_path)
    freeze.before_stage(ctx)
    selected = freeze.selected
    assert len(selected) == 1
    assert (tmp_path / "trace_stage_1.json").exists() and (tmp_path / "trace_stage_1.png").exists()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = build_optimizer(make_config(tmp_path / "cfg").trainer, default_param_groups(model, 0.01))
    for _ in range(3):
        lm_loss(model, blocks[1][:4]).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    assert all(is_block(layer) for layer in selected)
    for name, p in model.named_parameters():
        if layer_of(name) in selected or not (is_block(layer_of(name)) or freeze_non_block):
            assert not torch.equal(p, before[name]), name  # embeddings, final norm: trained unless freeze_non_block
        else:
            assert torch.equal(p, before[name]), name
    freeze.after_stage(ctx)
    assert all(p.requires_grad for p in model.parameters())


def test_adaptive_lr_gives_the_configured_per_layer_rates(setup, tmp_path):
    tokenizer, blocks = setup
    model = tiny_model(tokenizer)
    method = AdaptiveLRConfig(from_stage=1, min_scale=0.5, max_scale=2.0).build()
    method.before_stage(ctx_for(1, model, tokenizer, blocks, tmp_path))
    trace = json.loads((tmp_path / "trace_stage_1.json").read_text())
    blocks = {layer: r for layer, r in zip(trace["layers"], trace["relative"], strict=True) if is_block(layer)}
    mean = sum(blocks.values()) / len(blocks)
    expected = {layer: 1e-3 * min(2.0, max(0.5, blocks[layer] / mean)) if layer in blocks else 1e-3
                for layer in trace["layers"]}
    optimizer = torch.optim.AdamW(method.param_groups(model, 1e-3, 0.01))
    seen = {}
    for group in optimizer.param_groups:
        seen[group["layer"]] = group["lr"]
        assert group["weight_decay"] == (0.01 if group["params"][0].dim() >= 2 else 0.0)
    assert seen == pytest.approx(expected)
    assert len(set(seen.values())) > 1
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_adaptive_lr_clamps_each_blocks_scale_to_min_and_max_scale(setup):
    """A trace whose blocks sit at 0.5 and 1.5 times their mean, with bounds 0.75 and 1.25: the
    blocks train at lr * min_scale and lr * max_scale, not at their unclamped ratios; the
    embeddings (r = 5, not a block) and final norm at lr."""
    tokenizer, _ = setup
    model = tiny_model(tokenizer)
    method = AdaptiveLRConfig(min_scale=0.75, max_scale=1.25).build()
    method.trace = Trace(["embed", "layer_00", "layer_01", "final_norm"], [5.0, 3.0, 1.0, 1.0], [1.0] * 4)
    assert method.layer_scales() == pytest.approx({"layer_00": 1.25, "layer_01": 0.75})
    rates = {group["layer"]: group["lr"] for group in method.param_groups(model, 1e-3, 0.01)}
    assert rates == pytest.approx({"embed": 1e-3, "layer_00": 1.25e-3, "layer_01": 0.75e-3, "final_norm": 1e-3})


METHODS = sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml"))


def check_adaptive_rates_reached_the_optimizer(run_dir, trace):
    """Stage 1's optimizer, as its first mid-stage checkpoint (global step 4) holds it: one group per
    traced row, starting at lr * clamp(r / mean of the blocks' r, min_scale, max_scale), and after one
    step all at the schedule's factor of their start: the trainer took adaptive LR's groups."""
    saved = OmegaConf.load(run_dir / "config.yaml")
    trainer = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainerConfig), saved.trainer))
    rows = dict(zip(trace["layers"], trace["relative"], strict=True))
    mean = sum(r for layer, r in rows.items() if is_block(layer)) / sum(map(is_block, rows))
    expected = {layer: trainer.lr * (min(saved.tgl.max_scale, max(saved.tgl.min_scale, r / mean))
                                     if is_block(layer) else 1.0) for layer, r in rows.items()}
    state = torch.load(run_dir / "checkpoints" / "step_00000004.pt", weights_only=False)
    assert (state["stage"], state["step"]) == (1, 1)
    factor = build_scheduler(trainer, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)).lr_lambdas[0](1)
    groups = state["optimizer"]["param_groups"]
    assert groups and all(group["layer"] in rows for group in groups)
    for group in groups:
        assert group["initial_lr"] == pytest.approx(expected[group["layer"]], rel=1e-6), group["layer"]
        assert group["lr"] == pytest.approx(expected[group["layer"]] * factor, rel=1e-6), group["layer"]
    assert len({round(group["lr"], 12) for group in groups}) > 1  # the blocks' rates differ


def check_migu_masks_the_selected_layers(run_dir, selected):
    """MIGU's masks act on the blocks TGL trains: over stage 1's second step (global steps 4 -> 5) rows
    masked in both of its steps moved by weight decay alone, a share of each weight up to mask_fraction."""
    before, after = (checkpoint_at(run_dir, step)["model"] for step in (4, 5))
    keys = migu_targets(before, set(selected))
    assert keys
    for key in keys:
        share = rows_moved_only_by_weight_decay(before, after, key)
        assert 0.2 <= share <= 0.5, (key, share)


def check_ewcs_fisher_covers_the_layers_tgl_froze(run_dir, unselected):
    """Stage 1's Fisher is estimated after TGL releases its freeze (hooks undo in reverse): every
    parameter's merged Fisher at the run's end holds stage 1's term on top of stage 0's (the one a
    mid-stage-1 checkpoint holds), the blocks TGL froze in stage 1 included."""
    stage_0, final = (checkpoint_at(run_dir, step)["hooks"][0]["fisher"] for step in (4, 6))
    assert final.keys() == stage_0.keys() == checkpoint_at(run_dir, 6)["model"].keys() - {"lm_head.weight"}
    assert set(unselected) <= final.keys()
    unchanged = [name for name in final if torch.equal(final[name], stage_0[name])]
    assert unchanged == []


@pytest.mark.parametrize("tgl", ["freeze", "adaptive_lr"])
@pytest.mark.parametrize("method", METHODS)
def test_every_method_composes_with_tgl(tmp_path, method, tgl):
    """With freeze, whatever the method adds (EWC's gradient, MIGU's masks, LoRA's adapters, replay's
    data), the layers TGL did not select leave stage 1 bit-identical."""
    run_dir = tmp_path / "run"
    results = train(make_config(run_dir, f"method={method}", f"tgl={tgl}", "data.num_stages=2",
                                "trainer.steps_per_stage=3", "trainer.checkpoint_every=1",
                                "trainer.keep_checkpoints=3"))
    assert results["probe_sets"]["changed"]["final"] > 0
    trace = json.loads((run_dir / "trace_stage_1.json").read_text())
    if tgl == "adaptive_lr":
        check_adaptive_rates_reached_the_optimizer(run_dir, trace)
    if tgl != "freeze":
        return
    # after stage 1's first step (LoRA's adapters exist by then) and at its end
    before, after = (torch.load(run_dir / "checkpoints" / f"step_{step:08d}.pt")["model"] for step in (4, 6))
    unselected = [key for key in after if is_block(layer_of(key)) and layer_of(key) not in trace["selected"]]
    assert unselected and all(torch.equal(before[key], after[key]) for key in unselected)
    assert any(not torch.equal(before[key], after[key]) for key in after)
    if method == "migu":
        check_migu_masks_the_selected_layers(run_dir, trace["selected"])
    if method == "ewc":
        check_ewcs_fisher_covers_the_layers_tgl_froze(run_dir, unselected)


def test_freeze_with_a_single_traced_layer_trains_it(tmp_path):
    """LoRA on a one-block model traces one row, which equals the mean: freeze must not freeze it too."""
    with pytest.warns(UserWarning, match="selected no layer"):
        results = train(make_config(tmp_path / "run", "method=lora", "tgl=freeze", "model.n_layer=1",
                                    "data.num_stages=2", "trainer.steps_per_stage=3"))
    trace = json.loads((tmp_path / "run" / "trace_stage_1.json").read_text())
    assert trace["layers"] == trace["selected"] == ["layer_00"]
    assert results["probe_sets"]["changed"]["final"] > 0


def test_a_traced_run_that_freezes_nothing_trains_exactly_like_no_tgl(tmp_path):
    """Tracing before every stage leaves the run's losses and results bit-identical."""
    common = ["data.num_stages=2", "trainer.steps_per_stage=4", "model.dropout=0.1"]
    plain = train(make_config(tmp_path / "none", *common))
    traced = train(make_config(tmp_path / "traced", *common, "tgl=freeze", "tgl.rule=top_fraction",
                               "tgl.fraction=1.0"))
    assert (tmp_path / "traced" / "trace_stage_1.json").exists()
    assert traced["probe_sets"] == plain["probe_sets"]
    losses = [[r["loss"] for r in read_jsonl_metrics(tmp_path / run / "metrics.jsonl")] for run in ("none", "traced")]
    assert losses[0] == losses[1]


def test_a_runs_trace_is_the_same_for_any_split_of_its_global_batch(tmp_path):
    """Micro-batches of 4, or 1 with grad_accum 4: one global batch of 4, so one trace and one selection."""
    traces = []
    for micro, accum in ((4, 1), (1, 4)):
        run_dir = tmp_path / f"{micro}x{accum}"
        train(make_config(run_dir, "tgl=adaptive_lr", "data.num_stages=2", "trainer.steps_per_stage=2",
                          f"trainer.micro_batch_size={micro}", f"trainer.grad_accum={accum}"))
        traces.append(json.loads((run_dir / "trace_stage_1.json").read_text()))
    assert traces[1]["relative"] == pytest.approx(traces[0]["relative"], rel=1e-5)
    assert traces[1]["selected"] == traces[0]["selected"]


def test_logged_grad_norm_rows_follow_tgls_block_pattern(tmp_path):
    """A block pattern for another family's names: the logged per-layer rows are the rows TGL
    traces (here the pattern counts only MLP parameters as a block's)."""
    run_dir = tmp_path / "run"
    train(make_config(run_dir, "tgl=freeze", r"tgl.block_pattern='h\.(\d+)\.mlp\.'", "data.num_stages=2",
                      "trainer.steps_per_stage=2"))
    trace = json.loads((run_dir / "trace_stage_1.json").read_text())
    logged = [key.removeprefix("grad_norm/") for key in read_jsonl_metrics(run_dir / "metrics.jsonl")[0]
              if key.startswith("grad_norm/")]
    assert logged == trace["layers"] and "other" in logged  # attention and block norms fall outside it


def test_span_batch_labels_only_the_spans():
    probes = EncodedProbes(ids=[[8], [9, 10]], targets=[[True], [False, True]])
    ids, attention, labels = span_batch(probes, [1, 0], pad_id=0)
    assert ids.tolist() == [[9, 10], [8, 0]]
    assert attention.tolist() == [[1, 1], [1, 0]]
    assert labels.tolist() == [[-100, 10], [8, -100]]
