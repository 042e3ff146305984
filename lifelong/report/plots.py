"""Report plots: stage x stage perplexity heatmaps per row, and the gradient localization profile."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lifelong.data.stream import PROBE_SETS  # noqa: E402
from lifelong.report.collect import Run, group_runs  # noqa: E402
from lifelong.report.tables import mean_of_present  # noqa: E402


def _mean_matrix(runs: list[Run], name: str) -> np.ndarray:
    """Each cell's mean over seeds by the tables' rule (tables.mean_of_present): a seed's empty cell
    (None, an empty probe set) is skipped, a diverged seed's NaN makes the cell NaN, a cell no seed
    has is NaN. NaN is drawn blank."""
    matrices = [r.results["probe_sets"][name]["matrix"] for r in runs]
    return np.array([[mean_of_present(list(seeds)) for seeds in zip(*rows, strict=True)]
                     for rows in zip(*matrices, strict=True)], dtype=float)


def _finished_rows(runs: list[Run]) -> dict[str, list[Run]]:
    rows = {label: [r for r in row if r.results is not None] for label, row in group_runs(runs).items()}
    return {label: row for label, row in rows.items() if row}


def _file_stem(label: str) -> str:
    """A row label as a file name: a label may hold paths (data.root=/a/b) and spaces."""
    return re.sub(r"[^\w.=-]+", "_", label).strip("_")


def stage_heatmaps(runs: list[Run], out_dir: Path) -> list[Path]:
    paths = []
    for label, group in _finished_rows(runs).items():
        fig, axes = plt.subplots(1, len(PROBE_SETS), figsize=(4 * len(PROBE_SETS), 3.5))
        for ax, name in zip(axes, PROBE_SETS, strict=True):
            matrix = _mean_matrix(group, name)
            image = ax.imshow(np.log(matrix), cmap="magma_r")
            ax.set_title(f"{name}: log ppl")
            ax.set_xlabel("probes of stage j")
            ax.set_ylabel("after training stage i")
            fig.colorbar(image, ax=ax, fraction=0.046)
        fig.suptitle(f"{label} (mean over {len(group)} seeds)")
        fig.tight_layout()
        path = out_dir / f"heatmap_{_file_stem(label)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        paths.append(path)
    return paths


def localization_profile(runs: list[Run], out_dir: Path) -> Path | None:
    """Mean training grad norm per layer per row; and, where TGL traced, temporal vs control."""
    rows = {label: [r for r in row if r.grad_norms] for label, row in _finished_rows(runs).items()}
    rows = {label: row for label, row in rows.items() if row}
    if not rows:
        return None
    traced = [t for row in rows.values() for r in row for t in r.traces]
    fig, axes = plt.subplots(1, 2 if traced else 1, figsize=(12 if traced else 7, 4), squeeze=False)
    for label, group in rows.items():
        layers = list(group[0].grad_norms)
        values = [np.mean([r.grad_norms.get(layer, np.nan) for r in group]) for layer in layers]
        axes[0][0].plot(layers, values, marker="o", label=label)
    axes[0][0].set_yscale("log")
    axes[0][0].set_title("mean training gradient norm per layer")
    axes[0][0].tick_params(axis="x", rotation=45)
    axes[0][0].legend(fontsize=7)
    if traced:
        # traces of one row set are averaged: the most common one (a LoRA run traces its adapters' rows only)
        by_rows = Counter(tuple(t["layers"]) for t in traced)
        layers, count = by_rows.most_common(1)[0]
        temporal = np.mean([t["temporal"] for t in traced if tuple(t["layers"]) == layers], axis=0)
        control = np.mean([t["control"] for t in traced if tuple(t["layers"]) == layers], axis=0)
        x = np.arange(len(layers))
        axes[0][1].bar(x - 0.2, temporal, 0.4, label="temporal (knowledge spans)")
        axes[0][1].bar(x + 0.2, control, 0.4, label="control")
        axes[0][1].set_xticks(x, layers, rotation=45)
        others = len(traced) - count
        axes[0][1].set_title(f"TGL traces: mean of {count}" + (f" ({others} of other rows left out)" if others else ""))
        axes[0][1].legend()
    fig.tight_layout()
    path = out_dir / "localization_profile.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
