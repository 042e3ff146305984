"""Continual-learning baselines, one file each; importing this registers their schemas."""

from lifelong.methods import finetune  # noqa: F401
