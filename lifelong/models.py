"""Causal LMs built from a preset config or loaded from a local directory (never downloaded),
and the grouping of their parameters into layers."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, GPT2Config, LlamaConfig, PretrainedConfig, PreTrainedModel
from transformers.pytorch_utils import Conv1D

from lifelong.config import ConfigError, ModelConfig, ModelFamily


def build_model(cfg: ModelConfig, tokenizer) -> PreTrainedModel:
    if cfg.path:
        path = Path(cfg.path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"model.path: no HF model (config.json) in {path}")
        # fp32 master weights whatever the checkpoint's dtype (most are saved in bf16 or fp16): the
        # optimizer would round small updates away on bf16 weights, and fp16 gradients cannot be
        # unscaled; trainer.precision's autocast sets the compute dtype
        model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_config(
            _preset_config(cfg, len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id))
    # GPT2LMHeadModel's class name does not name its loss; say it, rather than be warned
    model.loss_type = "ForCausalLM"
    # training and scoring never read a KV cache: don't build one in every forward (the HF Trainer
    # turns it off too); greedy decoding asks generate() for it
    model.config.use_cache = False
    return model


_MODULE_NAMES: dict[str, tuple[str, dict[str, bool]]] = {}  # a sweep's jobs share a few models


def linear_module_names(cfg: ModelConfig) -> tuple[str, dict[str, bool], set[str]]:
    """The model's type, every module's name (-> whether it is a linear layer), and the names of the
    modules whose weight is an embedding's (GPT-2's tied LM head), from its config alone: the model
    is built on the meta device (no weights, no memory), for checks before launch."""
    key = repr(cfg)
    if key not in _MODULE_NAMES:
        hf_config = (AutoConfig.from_pretrained(cfg.path, local_files_only=True) if cfg.path
                     else _preset_config(cfg, vocab_size=8, bos_id=None, eos_id=None))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(hf_config)
        embeddings = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        _MODULE_NAMES[key] = (hf_config.model_type,
                              {name: isinstance(m, nn.Linear | Conv1D) for name, m in model.named_modules()},
                              {name for name, m in model.named_modules()
                               if not isinstance(m, nn.Embedding) and id(getattr(m, "weight", None)) in embeddings})
    return _MODULE_NAMES[key]


def _preset_config(cfg: ModelConfig, vocab_size: int, bos_id: int | None, eos_id: int | None) -> PretrainedConfig:
    special = {
        "vocab_size": vocab_size,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        # no pad id: training blocks are packed, so inputs hold no padding to warn about
    }
    if cfg.family is ModelFamily.gpt2:
        return GPT2Config(
            n_positions=cfg.max_seq_len,
            n_embd=cfg.d_model,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_inner=cfg.d_ff,
            resid_pdrop=cfg.dropout,
            embd_pdrop=cfg.dropout,
            attn_pdrop=cfg.dropout,
            # GPT-2's tanh GELU as one fused kernel: "gelu_new" computes the same formula in five
            # ops, which made fwd+bwd of tiny_gpt2 ~10% slower on CPU (measured)
            activation_function="gelu_pytorch_tanh",
            **special,
        )
    return LlamaConfig(
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layer,
        num_attention_heads=cfg.n_head,
        num_key_value_heads=cfg.n_head,
        max_position_embeddings=cfg.max_seq_len,
        attention_dropout=cfg.dropout,
        tie_word_embeddings=False,
        **special,
    )


# A "layer" is a transformer block; embeddings, final norm and LM head are rows of their own.
_BLOCK = re.compile(r"(?:^|\.)(?:h|layers|blocks)\.(\d+)\.")  # GPT-2, Falcon, Bloom | Llama, OPT, NeoX | MPT
_ROWS = (
    ("embed", re.compile(r"(?:^|\.)(?:wte|wpe|embed_tokens|embed_in|word_embeddings|word_embeddings_layernorm|"
                         r"embed_positions)\.")),
    ("final_norm", re.compile(r"(?:^|\.)(?:ln_f|norm|norm_f|final_layer_norm|final_layernorm)\.")),
    ("lm_head", re.compile(r"(?:^|\.)(?:lm_head|embed_out)\.")),
)


def layer_of(param_name: str, block_pattern: str | None = None) -> str:
    """The layer row a parameter belongs to (GPT-2, Llama/OLMo, Pythia/GPT-NeoX names).
    `block_pattern` overrides the block regex for other families; its group 1 is the index."""
    block = re.search(block_pattern, param_name) if block_pattern else _BLOCK.search(param_name)
    if block:
        index = block.group(1)
        if index is None or not index.isdigit():
            raise ConfigError("tgl.block_pattern", block_pattern, f"a regex whose group 1 is a block's index "
                              f"(digits); in {param_name!r} its group 1 is {index!r}")
        return f"layer_{int(index):02d}"
    for row, pattern in _ROWS:
        if pattern.search(param_name):
            return row
    return "other"


def block_count(cfg: ModelConfig, block_pattern: str | None = None) -> int:
    """How many transformer blocks layer_of finds among the model's module names (from its config
    alone, linear_module_names), for checks before launch."""
    _, modules, _ = linear_module_names(cfg)
    return len({row for module in modules if is_block(row := layer_of(f"{module}.weight", block_pattern))})


def is_block(row: str) -> bool:
    """Whether a layer row (layer_of's) is a transformer block, not embeddings, final norm, LM head or other."""
    return row.startswith("layer_")


def layer_names(model: nn.Module) -> list[str]:
    """Layer rows in model order (embeddings first, LM head last)."""
    seen: dict[str, None] = {}
    for name, _ in model.named_parameters():
        seen.setdefault(layer_of(name), None)
    return list(seen)
