"""Traced Gradient Layers variants, one file each; importing this registers their schemas."""

from lifelong.tgl import adaptive_lr, freeze, none  # noqa: F401
