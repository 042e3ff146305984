"""Continual-learning metrics from a stage x stage perplexity matrix.

matrix[i][j] = perplexity on the probes of stage j after training stage i (None: empty set).
Differences are taken in log-perplexity, later minus earlier, so every metric is lower-is-better
(DESIGN.md section 4; GEM's BWT and FWT, defined on accuracy, are these with the sign flipped):
- `final`: mean perplexity over stages after the last stage.
- `forgetting`: mean over j < T-1 of (log ppl after the last stage - best log ppl on j
  at any point from stage j to T-2); > 0 means knowledge was lost.
- `backward_transfer`: mean over j < T-1 of (log ppl after the last stage - log ppl right after
  stage j); > 0 means later training hurt stage j, < 0 that it helped.
- `forward_transfer` and `fuar`: below.
A diverged run's NaN perplexity gives NaN, never a clean-looking figure: Python's min and max
would drop it depending on its position.
"""

from __future__ import annotations

import math
from statistics import mean

Matrix = list[list[float | None]]


def _mean(values: list[float]) -> float | None:
    return mean(values) if values else None


def _lowest(values: list[float]) -> float:
    """min, but NaN if any value is NaN (min keeps a NaN only when it comes first)."""
    return math.nan if any(math.isnan(v) for v in values) else min(values)


def final_perplexity(matrix: Matrix) -> float | None:
    return _mean([v for v in matrix[-1] if v is not None])


def forgetting(matrix: Matrix) -> float | None:
    last = len(matrix) - 1
    gaps = []
    for j in range(last):
        seen = [matrix[i][j] for i in range(j, last) if matrix[i][j] is not None]
        if seen and matrix[last][j] is not None:
            gaps.append(math.log(matrix[last][j]) - _lowest([math.log(v) for v in seen]))
    return _mean(gaps)


def backward_transfer(matrix: Matrix) -> float | None:
    last = len(matrix) - 1
    gaps = [
        math.log(matrix[last][j]) - math.log(matrix[j][j])
        for j in range(last)
        if matrix[j][j] is not None and matrix[last][j] is not None
    ]
    return _mean(gaps)


def summarize(matrix: Matrix, initial: list[float | None]) -> dict[str, float | None]:
    return {
        "final": final_perplexity(matrix),
        "forgetting": forgetting(matrix),
        "backward_transfer": backward_transfer(matrix),
        "forward_transfer": forward_transfer(matrix, initial),
    }


def forward_transfer(matrix: Matrix, initial: list[float | None]) -> float | None:
    """Mean over j >= 1 of (log ppl on stage j's probes just before training it - log ppl of the
    untrained model on them); < 0 means earlier stages helped (GEM's FWT, in log-perplexity)."""
    gaps = [
        math.log(matrix[j - 1][j]) - math.log(initial[j])
        for j in range(1, len(matrix))
        if matrix[j - 1][j] is not None and initial[j] is not None
    ]
    return _mean(gaps)


def fuar(changed: Matrix, unchanged: Matrix, new: Matrix,
         initial: tuple[list[float | None], list[float | None], list[float | None]] | None = None) -> float | None:
    """CKL's Forgotten / (Updated + Acquired), with perplexity gaps instead of counts of facts.

    For every update stage t, from just before training stage t (row t-1) to just after (row t),
    on stage t's probes: forgotten = rise in log ppl of `unchanged`, updated = fall of `changed`,
    acquired = fall of `new`, each clipped at 0. FUAR = sum forgotten / sum (updated + acquired);
    lower is better, < 1 means more was learned than forgotten. None when nothing was updated or
    acquired; NaN when a perplexity it reads is NaN. The update stages are t >= 1: stage 0 trains a
    model built from config from scratch, so it has nothing to forget. With `initial` (the
    perplexities of the changed, unchanged and new probes before stage 0), stage 0 counts too, from
    those: a pretrained model's first stage is an update, as CKL measures against the model before it.
    """
    matrices = (changed, unchanged, new)

    def gap(which: int, t: int, sign: int) -> float:
        matrix = matrices[which]
        before, after = (matrix[t - 1][t] if t > 0 else initial[which][t]), matrix[t][t]
        if before is None or after is None:
            return 0.0
        change = sign * (math.log(after) - math.log(before))
        return change if math.isnan(change) else max(0.0, change)

    stages = range(0 if initial is not None else 1, len(changed))
    forgotten = sum(gap(1, t, +1) for t in stages)
    gained = sum(gap(0, t, -1) + gap(2, t, -1) for t in stages)
    if math.isnan(forgotten) or math.isnan(gained):
        return math.nan
    return forgotten / gained if gained > 0 else None
