"""The paper's table: rows method x TGL variant (and any other override a sweep varies besides the seed:
lifelong/report/collect.py group_runs), cells mean ± std over seeds (one seed: its value alone), best marked.

Tables (the metrics of lifelong/eval/metrics.py; lower is better unless said):
- `main`: perplexity on changed / unchanged / new probes after the last stage, forgetting
  (mean over the probe sets, in log-perplexity), FUAR, and `avg`, the mean of the final
  perplexities. Any probe set may be empty (TemporalWiki has no `new` probes, ECBD only `new`):
  its metrics are None, shown as n/a, and both means are over the others.
- `forgetting`: forgetting per probe set.
- `transfer`: backward transfer per probe set (`bwt_*`: > 0 means later stages hurt) and forward
  transfer (`fwt_*`: < 0 means earlier stages helped), in log-perplexity.
- `accuracy`: exact match and top-k span accuracy per probe set after the last stage (higher is
  better); streams with `accuracy_top_k` only (TempLAMA).

A diverged seed (NaN) is not skipped like None: its cells show nan rather than a mean over the other seeds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean

import numpy as np
import pandas as pd

from lifelong.data.stream import PROBE_SETS
from lifelong.report.collect import Run, group_runs

TABLES = ("main", "forgetting", "transfer", "accuracy")


@dataclass
class Table:
    """A report table before formatting: what the CLI writes as csv, and as md and tex via `formatted`."""

    name: str  # one of TABLES
    means: pd.DataFrame  # index: row label, one column per metric; NaN where no run gave a value
    stds: pd.DataFrame
    counts: pd.DataFrame  # how many finished runs gave each cell a value: none for an empty probe set
    finished: dict[str, int]  # finished runs per row
    missing: list[str]  # each missing or failed run: 'row (seed s): directory'
    incomplete: set[str]  # rows with a missing or failed run


def mean_of_present(values: list[float | None]) -> float | None:
    """Mean over the values that exist (None: an empty probe set), None if none does; NaN propagates.
    The rule for probe sets within a run, and for seeds within a heatmap cell (plots.py)."""
    present = [value for value in values if value is not None]
    return fmean(present) if present else None


def run_metrics(results: dict, table: str) -> dict[str, float | None]:
    sets = results["probe_sets"]
    if table == "forgetting":
        return {name: sets[name]["forgetting"] for name in PROBE_SETS}
    if table == "transfer":
        return {**{f"bwt_{name}": sets[name]["backward_transfer"] for name in PROBE_SETS},
                **{f"fwt_{name}": sets[name]["forward_transfer"] for name in PROBE_SETS}}
    if table == "accuracy":  # only streams that measure it: the others have no columns
        return {key: mean_of_present(matrix[-1]) for key, matrix in results.get("accuracy", {}).items()}
    finals = {name: sets[name]["final"] for name in PROBE_SETS}
    forgetting = mean_of_present([sets[name]["forgetting"] for name in PROBE_SETS])
    fuar = results.get("fuar")  # None: nothing was updated or acquired
    return {**finals, "forgetting": forgetting, "fuar": fuar, "avg": mean_of_present(list(finals.values()))}


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Over seeds; numpy, as it propagates NaN where statistics.stdev raises. One seed has no std (NaN)."""
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def build_table(runs: list[Run], table: str) -> Table:
    """Rows from group_runs; a cell is over the row's finished runs, skipping None (an empty probe set)."""
    rows = group_runs(runs)
    done = {label: [run_metrics(r.results, table) for r in row if r.results is not None] for label, row in rows.items()}
    columns = list(dict.fromkeys(column for metrics in done.values() for m in metrics for column in m))
    means = pd.DataFrame(index=list(rows), columns=columns, dtype=float)
    stds = means.copy()
    counts = pd.DataFrame(0, index=list(rows), columns=columns)
    for label, metrics in done.items():
        for column in columns:
            values = [m[column] for m in metrics if m.get(column) is not None]  # None: an empty probe set
            means.loc[label, column], stds.loc[label, column] = _mean_std(values)
            counts.loc[label, column] = len(values)
    lost = {label: [r for r in row if r.results is None] for label, row in rows.items()}
    missing = [f"{label} (seed {r.seed}): {r.directory}" for label, row in lost.items() for r in row]
    incomplete = {label for label, row in lost.items() if row}
    return Table(table, means, stds, counts, {label: len(m) for label, m in done.items()}, missing, incomplete)


def _cell_text(table: Table, label: str, column: str, best: bool, bold: tuple[str, str]) -> str:
    if not table.finished[label]:
        return "missing"
    if not table.counts.loc[label, column]:
        return "n/a"  # an empty probe set
    mean_value, std = table.means.loc[label, column], table.stds.loc[label, column]
    text = "nan" if math.isnan(mean_value) else f"{mean_value:.2f}" + ("" if math.isnan(std) else f" ± {std:.2f}")
    if best:
        text = f"{bold[0]}{text}{bold[1]}"
    return text + (" (incomplete)" if label in table.incomplete else "")


def formatted(table: Table, bold: tuple[str, str]) -> pd.DataFrame:
    # accuracy is higher-is-better, every other metric lower (lifelong/eval/metrics.py); NaN skipped
    best = {column: values.max() if table.name == "accuracy" else values.min()
            for column, values in table.means.items()}
    out = pd.DataFrame(index=table.means.index, columns=table.means.columns, dtype=object)
    for label in out.index:
        for column in out.columns:
            is_best = table.means.loc[label, column] == best[column]
            out.loc[label, column] = _cell_text(table, label, column, is_best, bold)
    return out


def to_markdown(table: pd.DataFrame) -> str:
    header = "| method / tgl | " + " | ".join(table.columns) + " |"
    rule = "|---|" + "---|" * len(table.columns)
    rows = [f"| {label} | " + " | ".join(table.loc[label]) + " |" for label in table.index]
    return "\n".join([header, rule, *rows]) + "\n"


def to_latex(table: pd.DataFrame) -> str:
    escape = {"_": r"\_", "±": r"$\pm$", "%": r"\%"}

    def tex(text: str) -> str:
        for old, new in escape.items():
            text = text.replace(old, new)
        return text

    lines = [r"\begin{tabular}{l" + "r" * len(table.columns) + "}", r"\toprule",
             "method / tgl & " + " & ".join(tex(c) for c in table.columns) + r" \\", r"\midrule"]
    lines += [tex(label) + " & " + " & ".join(tex(v) for v in table.loc[label]) + r" \\" for label in table.index]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"
