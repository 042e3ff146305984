"""Traced Gradient Layers variants, one file each; importing this registers their schemas (a new
variant's module joins the import line)."""

from lifelong.tgl import adaptive_lr, freeze, none  # noqa: F401
