"""The paper's table: rows method x TGL variant, cells mean ± std over seeds, best marked.

Tables (every metric is lower-is-better):
- `main`: perplexity on changed / unchanged / new probes after the last stage, forgetting
  (mean over the three probe sets, in log-perplexity; lifelong/eval/metrics.py), and `avg`,
  the mean of the three final perplexities.
- `forgetting`: forgetting per probe set.
"""

from __future__ import annotations

import math
from statistics import mean, stdev

import pandas as pd

from lifelong.data.stream import PROBE_SETS
from lifelong.report.collect import Run

TABLES = ("main", "forgetting")


def run_metrics(results: dict, table: str) -> dict[str, float]:
    sets = results["probe_sets"]
    if table == "forgetting":
        return {name: sets[name]["forgetting"] for name in PROBE_SETS}
    finals = {name: sets[name]["final"] for name in PROBE_SETS}
    forgetting = [sets[n]["forgetting"] for n in PROBE_SETS if sets[n]["forgetting"] is not None]
    return {**finals, "forgetting": mean(forgetting) if forgetting else math.nan, "avg": mean(finals.values())}


def build_table(runs: list[Run], table: str) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """(means, stds, missing cells); index 'method / tgl', one column per metric."""
    cells: dict[tuple[str, str], list[dict[str, float]]] = {}
    missing = []
    for run in runs:
        cells.setdefault(run.cell, [])
        if run.results is None:
            missing.append(f"{run.method} / {run.tgl} (seed {run.seed}): {run.directory}")
        else:
            cells[run.cell].append(run_metrics(run.results, table))
    index = [f"{method} / {tgl}" for method, tgl in cells]
    columns = list(run_metrics(next(r.results for r in runs if r.results), table)) if any(
        r.results for r in runs) else []
    means = pd.DataFrame(index=index, columns=columns, dtype=float)
    stds = pd.DataFrame(index=index, columns=columns, dtype=float)
    for label, values in zip(index, cells.values(), strict=True):
        for column in columns:
            column_values = [v[column] for v in values if v[column] is not None and not math.isnan(v[column])]
            means.loc[label, column] = mean(column_values) if column_values else math.nan
            stds.loc[label, column] = stdev(column_values) if len(column_values) > 1 else 0.0
    return means, stds, missing


def _cell_text(mean_value: float, std_value: float, best: bool, incomplete: bool, bold: tuple[str, str]) -> str:
    if math.isnan(mean_value):
        return "missing"
    text = f"{mean_value:.2f} ± {std_value:.2f}"
    if best:
        text = f"{bold[0]}{text}{bold[1]}"
    return text + (" (incomplete)" if incomplete else "")


def formatted(means: pd.DataFrame, stds: pd.DataFrame, incomplete_rows: set[str],
              bold: tuple[str, str]) -> pd.DataFrame:
    best = {column: means[column].min(skipna=True) for column in means.columns}
    out = pd.DataFrame(index=means.index, columns=means.columns, dtype=object)
    for label in means.index:
        for column in means.columns:
            value = means.loc[label, column]
            out.loc[label, column] = _cell_text(value, stds.loc[label, column], value == best[column],
                                                label in incomplete_rows, bold)
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
