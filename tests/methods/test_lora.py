"""LoRA through peft: only adapters train; merging folds (alpha/r) B A into the base weight."""

from __future__ import annotations

import torch

from lifelong.config import ModelFamily
from lifelong.methods.lora import LoRA, LoRAConfig
from tests.methods.conftest import blocks, context, tiny_model


def train_steps(model, data, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(input_ids=data, labels=data).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def test_only_adapters_change_and_merge_is_base_plus_scaled_ba(tokenizer, tmp_path):
    for family, targets in ((ModelFamily.gpt2, ["c_attn"]), (ModelFamily.llama, ["q_proj", "v_proj"])):
        model = tiny_model(tokenizer, family)
        data = [blocks(len(tokenizer), 4, seed=0)]
        lora = LoRA(LoRAConfig(r=4, alpha=16.0, merge_each_stage=True, from_stage=0))
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        lora.before_stage(context(0, data, model, tmp_path))
        trainable = [n for n, p in model.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        assert {n.split(".")[-4] for n in trainable} == set(targets)
        train_steps(model, data[0])
        for name, p in model.named_parameters():
            base_name = name.replace(".base_layer", "")
            if "lora_" in name:
                continue
            assert torch.equal(p, before[base_name]), name  # the base is frozen
        adapters = dict(model.named_parameters())
        with torch.no_grad():
            out_before_merge = model(input_ids=data[0]).logits
        expected = {}
        for name, p in adapters.items():
            if name.endswith("lora_A.default.weight"):
                prefix = name[: -len("lora_A.default.weight")]
                delta = (16.0 / 4) * adapters[prefix + "lora_B.default.weight"] @ p
                base = adapters[prefix + "base_layer.weight"]
                expected[prefix] = base.detach() + (delta.T if family is ModelFamily.gpt2 else delta).detach()
        lora.after_stage(context(0, data, model, tmp_path))
        for prefix, weight in expected.items():
            assert torch.allclose(adapters[prefix + "base_layer.weight"], weight, atol=1e-6)
            assert torch.count_nonzero(adapters[prefix + "lora_B.default.weight"]) == 0  # fresh adapter
        with torch.no_grad():
            assert torch.allclose(model(input_ids=data[0]).logits, out_before_merge, atol=1e-5)


def test_adapters_start_at_from_stage(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    lora = LoRA(LoRAConfig(from_stage=1))
    lora.before_stage(context(0, [], model, tmp_path))
    assert all(p.requires_grad for p in model.parameters())
    lora.before_stage(context(1, [], model, tmp_path))
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
