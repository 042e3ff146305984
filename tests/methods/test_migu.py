"""MIGU: after one step exactly the rows with the largest summed |output| change."""

from __future__ import annotations

import importlib
import os
import warnings

import pytest
import torch
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

from lifelong.config import ConfigError, ModelFamily
from lifelong.launch.checks import validate_command_line
from lifelong.methods.lora_migu import LoRAMIGU, LoRAMIGUConfig
from lifelong.methods.migu import MIGU, MIGUConfig, linear_targets, output_magnitudes, row_thresholds
from lifelong.methods.migu_kept_rows import kept_row_indices
from tests.methods.conftest import blocks, context, tiny_model


def independent_output_sums(model, data, extra: dict[str, nn.Module] | None = None):
    """Summed |output| per output feature of every linear layer (and of `extra` modules), by hooks
    of the test's own."""
    sums, handles = {}, []
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear | Conv1D) or name in (extra or {}):
            def hook(mod, inp, out, name=name):
                sums[name] = sums.get(name, 0) + out.detach().abs().double().reshape(-1, out.shape[-1]).sum(0)
            handles.append(module.register_forward_hook(hook))
    model.eval()  # dropout is 0; eval mode keeps MIGU's own hooks from counting these passes
    with torch.no_grad():
        for micro in data:
            model(input_ids=micro)
    model.train()
    for handle in handles:
        handle.remove()
    return sums


@pytest.mark.parametrize("q", [0.0, 0.3, 0.5, 0.7, 1.0])
@pytest.mark.parametrize("width", [1, 2, 7, 128])
def test_row_thresholds_keep_what_torch_quantile_keeps(q, width):
    generator = torch.Generator().manual_seed(width)
    values = torch.randn(5, width, generator=generator)
    values[0] = values[0].round()  # ties
    values[1] = 1.0  # all tied
    thresholds = row_thresholds(values, q)
    assert torch.equal(values >= thresholds, values >= torch.quantile(values, q, dim=1, keepdim=True))
    assert (values == thresholds).any(dim=1).all()  # each threshold is one of its row's values


def one_step(model, method, data):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for micro in data:  # two micro-batches accumulate into one step
        model(input_ids=micro, labels=micro).loss.backward()
    method.transform_gradients(model)
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("fraction", [0.5, 0.7])
def test_rows_with_largest_output_update_biases_unmasked(tokenizer, tmp_path, fraction):
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=s) for s in range(2)]
    sums = independent_output_sums(model, data)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    migu = MIGU(MIGUConfig(mask_fraction=fraction))
    migu.before_stage(context(1, data, model, tmp_path))
    one_step(model, migu, data)
    checked = 0
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear | Conv1D) or name == "lm_head":  # lm_head is tied to wte
            continue
        rows_dim = 1 if isinstance(module, Conv1D) else 0
        changed = (module.weight != before[f"{name}.weight"]).any(dim=1 - rows_dim)
        expected = sums[name] >= torch.quantile(sums[name].float(), fraction).double()
        assert torch.equal(changed, expected), name
        assert changed.sum() == (~(sums[name] < torch.quantile(sums[name].float(), fraction).double())).sum()
        assert changed.float().mean() == pytest.approx(1 - fraction, abs=0.05)
        if module.bias is not None:
            assert (module.bias != before[f"{name}.bias"]).all(), f"{name}.bias is masked"
        checked += 1
    assert checked == 2 * 4  # c_attn, c_proj, c_fc, mlp c_proj per block
    assert not migu.counted  # accumulators reset after the step


def test_each_step_masks_by_its_own_outputs(tokenizer, tmp_path):
    """The sums are kept in buffers reused across steps: a step's mask must not remember the last."""
    model = tiny_model(tokenizer)
    first, second = [blocks(len(tokenizer), 2, seed=0)], [blocks(len(tokenizer), 2, seed=1)]
    migu = MIGU(MIGUConfig(mask_fraction=0.5))
    migu.before_stage(context(1, first, model, tmp_path))
    one_step(model, migu, first)
    sums = independent_output_sums(model, second)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, migu, second)
    fc = model.transformer.h[1].mlp.c_fc
    changed = (fc.weight != before["transformer.h.1.mlp.c_fc.weight"]).any(dim=0)
    expected = sums["transformer.h.1.mlp.c_fc"] >= torch.quantile(sums["transformer.h.1.mlp.c_fc"].float(), 0.5)
    assert torch.equal(changed, expected)


def test_first_stage_is_unmasked_and_eval_does_not_count(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=0)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    migu = MIGU(MIGUConfig())
    migu.before_stage(context(0, data, model, tmp_path))
    one_step(model, migu, data)
    weight = model.transformer.h[0].mlp.c_fc.weight
    assert (weight != before["transformer.h.0.mlp.c_fc.weight"]).any(dim=0).all()
    migu.before_stage(context(1, data, model, tmp_path))
    model.eval()
    with torch.no_grad():
        model(input_ids=data[0])
    assert not migu.counted


def test_outputs_are_released_when_the_forward_returns(tokenizer, tmp_path):
    """The layers' outputs are held only until the model's forward returns: not through the
    backward, where they would add to the step's peak memory."""
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=0)]
    migu = MIGU(MIGUConfig())
    migu.before_stage(context(1, data, model, tmp_path))
    loss = model(input_ids=data[0], labels=data[0]).loss
    assert not migu.pending and len(migu.counted) == 2 * 4
    loss.backward()


@pytest.fixture
def interpreted_triton_sums():
    """migu_triton's sums, the kernel run by Triton's interpreter on the CPU (tests/conftest.py).
    Triton has no wheels but Linux's: elsewhere these tests are skipped."""
    pytest.importorskip("triton")
    assert os.environ["TRITON_INTERPRET"] == "1"
    return importlib.import_module("lifelong.methods.migu_triton").triton_output_magnitudes


def test_triton_sums_equal_eager_sums(interpreted_triton_sums):
    """The GPU kernel against the eager sums: several dtypes in one call (one launch each), widths
    and row counts that are not multiples of the kernel's blocks, outputs of different row counts,
    and an output that is not contiguous."""
    generator = torch.Generator().manual_seed(0)
    outputs = [torch.randn(2, rows, width, generator=generator).to(dtype)
               for dtype in (torch.bfloat16, torch.float16, torch.float32)
               for rows, width in ((37, 96), (37, 130), (5, 32), (40, 257))]
    outputs.append(torch.randn(37, 2, 64, generator=generator).transpose(0, 1))
    got = interpreted_triton_sums(outputs)
    for sums, want in zip(got, output_magnitudes(outputs), strict=True):
        assert sums.dtype == torch.float32
        torch.testing.assert_close(sums, want, rtol=1e-5, atol=0)


def test_triton_kernel_arguments_avoid_the_launchers_locals(interpreted_triton_sums):
    """On a GPU Triton binds a kernel's arguments in a generated function whose locals include
    `params`, `specialization` and `options`: an argument so named reaches the compiler as a dict
    ("failed to specialize argument of type: dict", benchmarks/ewc_triton.py on an H200). The
    interpreter never runs that function, so the test above cannot see it."""
    kernel = importlib.import_module("lifelong.methods.migu_triton")._abs_column_sums
    assert not {"params", "specialization", "options"} & set(kernel.arg_names)


def step_with_sums(tokenizer, tmp_path, data, magnitudes) -> tuple[list[torch.Tensor], list[str]]:
    """A fresh model's MIGU step (stage 1) with `magnitudes` as its sums, set as the plan sets them
    on a GPU (a pre-hook after MIGU's, which makes the plan): its parameters after the step, and
    the warnings it gave."""
    model = tiny_model(tokenizer)
    migu = MIGU(MIGUConfig())
    migu.before_stage(context(1, data, model, tmp_path))
    model.register_forward_pre_hook(lambda module, inputs: setattr(migu, "output_magnitudes", magnitudes))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        one_step(model, migu, data)
    return [p.detach().clone() for p in model.parameters()], [str(w.message) for w in caught]


def test_migu_with_triton_sums_masks_as_with_eager_sums(tokenizer, tmp_path, interpreted_triton_sums):
    """A MIGU step with the GPU kernel's sums trains every weight exactly as with the eager sums."""
    data = [blocks(len(tokenizer), 2, seed=0), blocks(len(tokenizer), 2, seed=1)]
    eager, _ = step_with_sums(tokenizer, tmp_path, data, output_magnitudes)
    triton, _ = step_with_sums(tokenizer, tmp_path, data, interpreted_triton_sums)
    for eager_param, triton_param in zip(eager, triton, strict=True):
        assert torch.equal(eager_param, triton_param)


def test_gpu_sums_that_fail_fall_back_to_eager_sums(tokenizer, tmp_path):
    """Where the Triton sums cannot run (an old GPU, a Triton that fails to compile) MIGU warns and
    sums eagerly, with the same masks."""
    def broken(outputs):
        raise RuntimeError("no GPU Triton supports here")

    data = [blocks(len(tokenizer), 2, seed=0)]
    eager, eager_warnings = step_with_sums(tokenizer, tmp_path, data, output_magnitudes)
    fallback, fallback_warnings = step_with_sums(tokenizer, tmp_path, data, broken)
    assert not any("Triton sums failed" in w for w in eager_warnings)
    assert any("Triton sums failed" in w for w in fallback_warnings)
    for eager_param, fallback_param in zip(eager, fallback, strict=True):
        assert torch.equal(eager_param, fallback_param)


def test_an_output_changed_in_place_after_its_layer_is_an_error(tokenizer, tmp_path):
    """MIGU sums a micro-batch's outputs once it ends: an output the model changes in place in the
    meantime would feed it other values than the layer returned, so that is an error."""
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=0)]
    migu = MIGU(MIGUConfig())
    migu.before_stage(context(1, data, model, tmp_path))
    one_step(model, migu, data)  # MIGU's hooks are in place: the one below runs after them
    model.transformer.h[0].mlp.c_fc.register_forward_hook(lambda module, inputs, output: output.mul_(2))
    with pytest.raises(RuntimeError, match="Conv1D in place"):
        one_step(model, migu, data)


def test_lora_migu_masks_a_by_xa_and_b_by_the_layers_output(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=0)]
    method = LoRAMIGU(LoRAMIGUConfig(r=8, from_stage=1, mask_fraction=0.5))
    method.before_stage(context(1, data, model, tmp_path))
    with torch.no_grad():  # B = 0 would give A no gradient
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    layers = {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}
    sums = independent_output_sums(model, data, extra=layers)  # lora_A is an nn.Linear: x A; a layer: base + BA
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, method, data)
    for name, layer in layers.items():
        for part, source in (("lora_A", f"{name}.lora_A.default"), ("lora_B", name)):
            weight = getattr(layer, part)["default"].weight
            changed = (weight != before[f"{name}.{part}.default.weight"]).any(dim=1)
            assert torch.equal(changed, sums[source] >= torch.quantile(sums[source].float(), 0.5).double()), source
    for name, p in model.named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, before[name]), name


def migu_steps(model, migu, data, steps: int, autocast_dtype: torch.dtype | None = None, before_mask=None):
    """`steps` AdamW steps of `data`'s micro-batches (one step), as the trainer runs them."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(steps):
        for micro in data:
            with torch.autocast("cpu", dtype=autocast_dtype, enabled=autocast_dtype is not None):
                model(input_ids=micro, labels=micro).loss.backward()
        if before_mask is not None:
            before_mask()
        migu.transform_gradients(model)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", [ModelFamily.gpt2, ModelFamily.llama])
@pytest.mark.parametrize("micro_batches", [1, 2])
@pytest.mark.parametrize("autocast_dtype", [None, torch.bfloat16])
def test_skipping_masked_rows_trains_exactly_as_masking_them(tokenizer, tmp_path, family, micro_batches,
                                                              autocast_dtype):
    """method.skip_masked_rows: three steps leave every parameter equal to plain MIGU's (Conv1D and
    nn.Linear layers, fp32 and bf16 autocast, one micro-batch per step or two); with one micro-batch
    the masked rows' gradients are zero before the step boundary masks anything (never computed),
    where plain MIGU's are not."""
    data = [blocks(len(tokenizer), 2, seed=s) for s in range(micro_batches)]
    trained, masked_rows_grads = [], []
    for skip in (False, True):
        model = tiny_model(tokenizer, family)
        migu = MIGU(MIGUConfig(skip_masked_rows=skip))
        migu.before_stage(context(1, data, model, tmp_path, grad_accum=micro_batches))

        def masked_rows_grad(migu=migu):  # |grad| summed over the rows the step's masks zero
            keep = [mask.expand_as(t.weight) for t, mask in zip(migu.targets, migu.row_masks, strict=True)]
            if not migu.masked_in_forward:
                migu._set_masks()
            masked_rows_grads.append(sum(float(t.weight.grad[k == 0].abs().sum())
                                         for t, k in zip(migu.targets, keep, strict=True)))

        migu_steps(model, migu, data, 3, autocast_dtype, masked_rows_grad)
        trained.append([p.detach().clone() for p in model.parameters()])
        assert all(p.requires_grad for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(*trained, strict=True))
    plain, skipping = masked_rows_grads[:3], masked_rows_grads[3:]
    assert all(grad > 0 for grad in plain)
    assert all(grad == 0 for grad in skipping) == (micro_batches == 1)


def test_layers_frozen_after_set_up_are_left_out_of_the_plan(tokenizer, tmp_path):
    """TGL freeze freezes after MIGU's before_stage: the plan, made at the stage's first training
    forward, sums and masks only the layers that train then (with skip_masked_rows too, where a
    frozen weight must stay out of the graph), and eval forwards before it do not make it."""
    for skip in (False, True):
        model = tiny_model(tokenizer)
        data = [blocks(len(tokenizer), 2, seed=0)]
        migu = MIGU(MIGUConfig(skip_masked_rows=skip))
        migu.before_stage(context(1, data, model, tmp_path))
        model.eval()
        with torch.no_grad():
            model(input_ids=data[0])
        model.train()
        every_width = sum(t.width for t in linear_targets(model))
        frozen = model.transformer.h[0]
        frozen.requires_grad_(False)
        migu_steps(model, migu, data, 1)
        trained = [t for t in linear_targets(model) if t.weight.requires_grad]
        assert {id(t.weight) for t in migu.targets} == {id(t.weight) for t in trained}
        assert len(migu.sums) == sum(t.width for t in trained) < every_width
        assert not any(frozen_module._forward_hooks or "forward" in vars(frozen_module)
                       for frozen_module in frozen.modules())
        assert all(p.grad is None and not p.requires_grad for p in frozen.parameters())


def test_skipping_masked_rows_swaps_forwards_back(tokenizer, tmp_path):
    """A layer whose forward fails leaves its weight trainable; the next stage's set-up restores the
    layers' own forwards."""
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=0)]
    migu = MIGU(MIGUConfig(skip_masked_rows=True))
    migu.before_stage(context(1, data, model, tmp_path))
    migu_steps(model, migu, data, 1)
    fc = model.transformer.h[0].mlp.c_fc
    with pytest.raises(RuntimeError):
        fc(torch.randn(3, 5))  # a wrong width, while the layer's weight is out of the graph
    assert fc.weight.requires_grad
    assert all("forward" in vars(t.source) for t in linear_targets(model))
    migu.before_stage(context(2, data, model, tmp_path))
    migu.before_stage(context(0, data, model, tmp_path))  # stage 0 is plain fine-tuning: no swaps
    assert not any("forward" in vars(t.source) for t in linear_targets(model))


def test_skipping_masked_rows_with_more_forwards_than_micro_batches_is_an_error(tokenizer, tmp_path):
    """The masks are set when the step's last micro-batch's forward ends: another training forward
    in that step would change the sums after its rows were chosen."""
    model = tiny_model(tokenizer)
    data = [blocks(len(tokenizer), 2, seed=s) for s in range(2)]
    migu = MIGU(MIGUConfig(skip_masked_rows=True))
    migu.before_stage(context(1, data, model, tmp_path, grad_accum=1))
    with pytest.raises(RuntimeError, match=r"skip_masked_rows.*trainer.grad_accum \(1\)"):
        migu_steps(model, migu, data, 1)


def test_kept_row_indices_split_the_flags_by_source():
    generator = torch.Generator().manual_seed(0)
    widths = [5, 1, 7, 3, 4]
    keep = (torch.rand(sum(widths), generator=generator) > 0.5).float()
    keep[5] = 0.0  # a source with no kept row
    keep[13:16] = 1.0  # one with all rows kept
    bounds = torch.tensor([0, 5, 6, 13, 16, 20])
    got = kept_row_indices(keep, bounds)
    for (start, end), indices in zip(zip(bounds[:-1], bounds[1:], strict=True), got, strict=True):
        assert torch.equal(indices, keep[start:end].nonzero().squeeze(1))


def test_mask_fraction_outside_unit_interval_names_the_key():
    with pytest.raises(ConfigError, match=r"method.mask_fraction.*\(0, 1\)"):
        validate_command_line(["method=migu", "method.mask_fraction=1.5"])
