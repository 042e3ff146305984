"""Continual-learning baselines, one file each; importing this registers their schemas (a new
method's module joins the import line)."""

from lifelong.methods import ewc, finetune, joint, lora, lora_migu, migu, replay  # noqa: F401
