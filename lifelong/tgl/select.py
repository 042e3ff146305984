"""Which layers TGL updates, from the relative gradient norms r of a trace.

The paper's layers are the transformer blocks: the embeddings, final norm and LM head are rows
of a trace but take no part in the rule (the final norm's r stays near 1 at every stage, and
would pull the mean down until every block is above it). A trace with no block row (a
block_pattern that matches nothing) selects among all its rows."""

from __future__ import annotations

import math
import warnings
from enum import Enum

from lifelong.models import is_block


class Rule(Enum):
    above_mean = "above_mean"  # the paper's rule: r_l > mean(r)
    top_k = "top_k"
    top_fraction = "top_fraction"


def candidates(layers: list[str], relative: list[float]) -> tuple[list[str], list[float]]:
    """The rows the rule ranks and averages: the blocks, or every row if the trace has none."""
    blocks = [(layer, r) for layer, r in zip(layers, relative, strict=True) if is_block(layer)]
    chosen = blocks or list(zip(layers, relative, strict=True))
    return [layer for layer, _ in chosen], [r for _, r in chosen]


def candidates_mean(layers: list[str], relative: list[float]) -> float:
    """The mean r of the rows the rule ranks: above_mean's threshold, adaptive LR's unit scale."""
    _, relative = candidates(layers, relative)
    return sum(relative) / len(relative)


def select_layers(layers: list[str], relative: list[float], rule: Rule, k: int = 1,
                  fraction: float = 0.5) -> list[str]:
    """Selected blocks in model order; ties at the cut are broken by model order. Never empty:
    freezing every layer would leave a stage nothing to train."""
    mean = candidates_mean(layers, relative)
    layers, relative = candidates(layers, relative)
    if rule is Rule.above_mean:
        above = [layer for layer, r in zip(layers, relative, strict=True) if r > mean]
        if above:
            return above
        # all r equal (e.g. a single traced layer): none exceeds the mean
        warnings.warn(f"TGL rule above_mean selected no layer of {layers} (every relative gradient norm equals "
                      "the mean); updating the top-1 layer instead", stacklevel=2)
        return _top(layers, relative, 1)
    return _top(layers, relative, k if rule is Rule.top_k else math.ceil(fraction * len(layers)))


def _top(layers: list[str], relative: list[float], count: int) -> list[str]:
    ranked = sorted(range(len(layers)), key=lambda i: -relative[i])[: min(count, len(layers))]
    return [layers[i] for i in sorted(ranked)]
