"""`lifelong-report SWEEP_DIR`: the paper's table from a sweep, as Markdown, CSV and LaTeX, plus plots.

    lifelong-report outputs/sweeps/2026-11-24_12-00-00 --table main --format md,csv,tex

A run without results.json (missing or failed) is never dropped silently: the report names
it and exits 1, unless --allow-missing, which marks its cells in the table. The jobs are those of
the sweep's last launch (multirun.yaml); finished runs of an earlier launch's other jobs are named
as left out. A dir that is no sweep, or a run counted twice, exits 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from lifelong.report.collect import collect_runs, runs_left_out
from lifelong.report.plots import localization_profile, stage_heatmaps
from lifelong.report.tables import TABLES, build_table, formatted, to_latex, to_markdown

FORMATS = ("md", "csv", "tex")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="lifelong-report", description=__doc__.split("\n")[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--table", choices=TABLES, default="main")
    parser.add_argument("--format", default="md,csv,tex", help=f"comma-separated subset of {','.join(FORMATS)}")
    parser.add_argument("--out", type=Path, default=None, help="output dir (default: SWEEP_DIR/report)")
    parser.add_argument("--allow-missing", action="store_true", help="mark missing runs instead of failing")
    args = parser.parse_args(argv)
    unknown = set(args.format.split(",")) - set(FORMATS)
    if unknown:
        parser.error(f"--format: unknown {sorted(unknown)}; allowed: {', '.join(FORMATS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = collect_runs(args.sweep_dir)
        table = build_table(runs, args.table)
    except (FileNotFoundError, ValueError) as error:  # not a sweep dir; a run counted twice
        print(f"lifelong-report: {error}", file=sys.stderr)
        return 2
    left_out = runs_left_out(args.sweep_dir, runs)
    if left_out:
        print(f"Left out, as no job of the sweep's last launch ({args.sweep_dir / 'multirun.yaml'}): "
              f"{len(left_out)} finished run dir(s), e.g. {left_out[0]}", file=sys.stderr)
    if table.means.columns.empty and any(table.finished.values()):
        print(f"--table {args.table}: no finished run of {args.sweep_dir} measured it (accuracy: streams with "
              "accuracy_top_k only, as TempLAMA)", file=sys.stderr)
        return 2
    if table.missing and not args.allow_missing:
        print("Missing or failed runs (use --allow-missing to report without them):", file=sys.stderr)
        for line in table.missing:
            print(f"  {line}", file=sys.stderr)
        return 1
    out = args.out or args.sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "md" in args.format:
        path = out / f"{args.table}.md"
        path.write_text(to_markdown(formatted(table, ("**", "**"))))
        written.append(path)
        print(path.read_text())
    if "csv" in args.format:
        path = out / f"{args.table}.csv"
        seeds = pd.Series(table.finished, name="seeds")  # finished runs per row; a cell's std is NaN for one
        csv = table.means.add_suffix("_mean").join(table.stds.add_suffix("_std")).join(seeds)
        csv.to_csv(path, index_label="method / tgl")
        written.append(path)
    if "tex" in args.format:
        path = out / f"{args.table}.tex"
        path.write_text(to_latex(formatted(table, (r"\textbf{", "}"))))
        written.append(path)
    written += stage_heatmaps(runs, out)
    profile = localization_profile(runs, out)
    written += [profile] if profile else []
    if table.missing:
        print("Marked as missing: " + "; ".join(table.missing), file=sys.stderr)
    print("Wrote " + ", ".join(str(p) for p in written))
    return 0


def entry() -> None:
    sys.exit(main())
