"""Fused per-layer gradient norms and clipping against naive per-parameter computation; the presets."""

from __future__ import annotations

import pytest
import torch

from lifelong.config import ModelConfig, ModelFamily
from lifelong.data.tokens import train_tokenizer
from lifelong.models import build_model, layer_of
from lifelong.optim import LayerGradNorms


def grads_of(family: ModelFamily):
    torch.manual_seed(0)
    tokenizer = train_tokenizer(["some text to train a tokenizer on"] * 10, 300)
    model = build_model(ModelConfig(family=family, n_layer=3, d_model=32, n_head=2, d_ff=64), tokenizer)
    ids = torch.randint(0, len(tokenizer), (2, 16))
    model(input_ids=ids, labels=ids).loss.backward()
    return model


def test_layer_norms_match_naive_and_clip_matches_torch():
    for family in (ModelFamily.gpt2, ModelFamily.llama):
        model = grads_of(family)
        norms = LayerGradNorms(model)
        per_layer, total = norms.compute()
        naive: dict[str, float] = {}
        for name, p in model.named_parameters():
            naive[layer_of(name)] = naive.get(layer_of(name), 0.0) + p.grad.double().pow(2).sum().item()
        assert norms.layers[0] == "embed" and "layer_02" in norms.layers
        for layer, value in zip(norms.layers, per_layer.tolist(), strict=True):
            assert abs(value - naive[layer] ** 0.5) < 1e-5 * max(1.0, value)
        reference = [p.grad.clone() for p in model.parameters()]
        ref_params = [torch.nn.Parameter(torch.zeros_like(g)) for g in reference]
        for p, g in zip(ref_params, reference, strict=True):
            p.grad = g.clone()
        torch_total = torch.nn.utils.clip_grad_norm_(ref_params, 0.1)
        assert torch.allclose(total, torch_total, rtol=1e-5)
        norms.clip_(total, 0.1)
        for p, ref in zip(model.parameters(), ref_params, strict=True):
            assert torch.allclose(p.grad, ref.grad, rtol=1e-5, atol=1e-8)


def test_layer_rows_per_family():
    assert layer_of("transformer.h.3.attn.c_attn.weight") == "layer_03"
    assert layer_of("model.layers.11.mlp.up_proj.weight") == "layer_11"
    assert layer_of("gpt_neox.layers.0.attention.query_key_value.weight") == "layer_00"
    assert layer_of("base_model.model.transformer.h.1.attn.c_attn.lora_A.default.weight") == "layer_01"
    assert layer_of("transformer.wte.weight") == "embed"
    assert layer_of("model.embed_tokens.weight") == "embed"
    assert layer_of("transformer.ln_f.weight") == "final_norm"
    assert layer_of("model.norm.weight") == "final_norm"
    assert layer_of("lm_head.weight") == "lm_head"


@pytest.mark.parametrize(("config", "extra"), [
    ("MptConfig", {"d_model": 32, "n_heads": 2, "n_layers": 3, "max_seq_len": 32}),  # transformer.blocks.N, norm_f
    ("BloomConfig", {"hidden_size": 32, "n_head": 2, "n_layer": 3}),  # word_embeddings(_layernorm)
    ("FalconConfig", {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3}),
    ("OPTConfig", {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3, "ffn_dim": 64,
                   "word_embed_proj_dim": 32}),  # embed_positions
    ("PhiConfig", {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3,
                   "intermediate_size": 64}),  # final_layernorm
    ("GPTNeoXConfig", {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 3, "intermediate_size": 64}),
])
def test_every_parameter_of_other_families_has_its_row(config, extra):
    """Blocks, embeddings and the final norm are found by name in each family: a family whose blocks
    went unfound left TGL two rows to rank (the embeddings and everything else)."""
    import transformers

    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(getattr(transformers, config)(vocab_size=64, **extra))
    rows = {layer_of(name) for name, _ in model.named_parameters()}
    assert {"layer_00", "layer_01", "layer_02", "embed", "final_norm"} <= rows <= {
        "layer_00", "layer_01", "layer_02", "embed", "final_norm", "lm_head"}


def test_gpt2_preset_activation_is_gpt2s_tanh_gelu():
    """The preset uses the fused kernel but must compute GPT-2's own GELU ("gelu_new")."""
    from transformers.activations import ACT2FN

    model = build_model(ModelConfig(family=ModelFamily.gpt2, n_layer=1, d_model=16, n_head=2, d_ff=32,
                                    max_seq_len=8), train_tokenizer(["a b c"] * 5, 260))
    x = torch.linspace(-6, 6, 1001)
    torch.testing.assert_close(model.transformer.h[0].mlp.act(x), ACT2FN["gelu_new"](x))
