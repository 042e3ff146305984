"""`tgl=none`: no gradient localization; the baseline runs as it is."""

from __future__ import annotations

from dataclasses import dataclass

from lifelong.config import register
from lifelong.methods.base import Method


@dataclass
class NoTGLConfig:
    name: str = "none"

    def build(self) -> Method:
        return Method()


register("tgl", "none", NoTGLConfig)
