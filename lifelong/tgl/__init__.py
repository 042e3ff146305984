"""Traced Gradient Layers variants, one file each; importing this registers their schemas."""

from lifelong.tgl import none  # noqa: F401
