"""Continual-learning metrics from a stage x stage perplexity matrix.

matrix[i][j] = perplexity on the probes of stage j after training stage i (None: empty set).
Differences are taken in log-perplexity so "lower is better" stays explicit:
- `final`: mean perplexity over stages after the last stage.
- `forgetting`: mean over j < T-1 of (log ppl after the last stage - best log ppl on j
  at any point from stage j to T-2); > 0 means knowledge was lost.
- `backward_transfer`: mean over j < T-1 of (log ppl right after stage j - log ppl after the
  last stage); < 0 means later training hurt stage j (avalanche's sign convention).
"""

from __future__ import annotations

import math
from statistics import mean

Matrix = list[list[float | None]]


def _mean(values: list[float]) -> float | None:
    return mean(values) if values else None


def final_perplexity(matrix: Matrix) -> float | None:
    return _mean([v for v in matrix[-1] if v is not None])


def forgetting(matrix: Matrix) -> float | None:
    last = len(matrix) - 1
    gaps = []
    for j in range(last):
        seen = [matrix[i][j] for i in range(j, last) if matrix[i][j] is not None]
        if seen and matrix[last][j] is not None:
            gaps.append(math.log(matrix[last][j]) - min(math.log(v) for v in seen))
    return _mean(gaps)


def backward_transfer(matrix: Matrix) -> float | None:
    last = len(matrix) - 1
    gaps = [
        math.log(matrix[j][j]) - math.log(matrix[last][j])
        for j in range(last)
        if matrix[j][j] is not None and matrix[last][j] is not None
    ]
    return _mean(gaps)


def summarize(matrix: Matrix) -> dict[str, float | None]:
    return {
        "final": final_perplexity(matrix),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
    }
