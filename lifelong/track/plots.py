"""PNG plots written into the run dir: per-layer grad-norm heatmaps and TGL traces."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def grad_norm_heatmap(records: list[dict], stage: int, path: Path) -> Path | None:
    """Layer x step heatmap of the `grad_norm/<layer>` values logged during `stage`."""
    rows = [r for r in records if r.get("stage") == stage]
    layers = [k.removeprefix("grad_norm/") for k in rows[0] if k.startswith("grad_norm/")] if rows else []
    if not layers:
        return None
    values = np.array([[r.get(f"grad_norm/{layer}", np.nan) for r in rows] for layer in layers])
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(layers) + 1.5))
    image = ax.imshow(np.log10(values + 1e-12), aspect="auto", cmap="viridis")
    ax.set_yticks(range(len(layers)), layers)
    ticks = np.linspace(0, len(rows) - 1, min(len(rows), 8)).astype(int)
    ax.set_xticks(ticks, [rows[i]["step"] for i in ticks])
    ax.set_xlabel("step")
    ax.set_title(f"log10 gradient norm per layer, stage {stage}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def trace_plot(layers: list[str], temporal: list[float], control: list[float], selected: list[str],
               mean: float, title: str, path: Path) -> Path:
    """Temporal vs control gradient norm per layer, selected layers marked, and the mean relative
    norm the selection compares with (the blocks', select.py)."""
    x = np.arange(len(layers))
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.5 * len(layers) + 2), 6), sharex=True)
    top.bar(x - 0.2, temporal, 0.4, label="temporal (knowledge spans)")
    top.bar(x + 0.2, control, 0.4, label="control")
    top.set_ylabel("gradient L2 norm")
    top.legend()
    relative = np.array(temporal) / np.maximum(np.array(control), 1e-12)
    colors = ["tab:red" if layer in selected else "tab:gray" for layer in layers]
    bottom.bar(x, relative, color=colors)
    bottom.axhline(mean, color="black", linestyle="--", linewidth=1, label="mean of the blocks' r")
    bottom.set_ylabel("relative norm r (red: selected)")
    bottom.set_xticks(x, layers, rotation=45, ha="right")
    bottom.legend()
    top.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
