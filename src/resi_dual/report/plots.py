"""Generic plotting helpers (matplotlib, Agg backend, PNG files): shared by analysis, similarity, reports."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Mapping

import numpy as np


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, never a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int | None = 120) -> Path:
    """Lay out, write ``fig`` as PNG at ``path`` (parents created) and close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi if dpi is not None else "figure")
    pyplot().close(fig)
    return path


def heatmap(
    matrix,
    title: str,
    path: str | Path,
    cmap: str = "viridis",
    xlabel: str = "head",
    ylabel: str = "layer",
    annotate: bool | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    colorbar_label: str = "",
) -> Path:
    """Write a (rows, cols) matrix as a PNG heatmap, row 0 at the top (layer × head by default).

    NaN cells are drawn blank. ``annotate`` writes values in cells (default: when ≤ 16 × 16).
    Returns the path written.
    """
    plt = pyplot()
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"heatmap needs a 2-d matrix, got shape {m.shape}")
    rows, cols = m.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * cols + 2.0, 0.09 * len(title) + 1.0), max(3.0, 0.35 * rows + 1.5)))
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
    cb = fig.colorbar(im, ax=ax)
    if colorbar_label:
        cb.set_label(colorbar_label)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xticks(range(cols))
    ax.set_yticks(range(rows))
    if annotate is None:
        annotate = rows <= 16 and cols <= 16
    if annotate:
        finite = m[np.isfinite(m)]
        lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
        hi = vmax if vmax is not None else (finite.max() if finite.size else 0.0)
        mid = (lo + hi) / 2
        for i in range(rows):
            for j in range(cols):
                if np.isfinite(m[i, j]):
                    v = m[i, j]
                    txt = f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.2g}"
                    ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if v < mid else "black")
    return save_figure(fig, path)


def layer_head_matrix(values: Mapping[tuple[int, int], float], n_layers: int, n_heads: int) -> np.ndarray:
    """(n_layers, n_heads) matrix from ``{(layer, head): value}``; missing cells are NaN (drawn blank)."""
    m = np.full((n_layers, n_heads), np.nan)
    for (layer, head), v in values.items():
        m[layer, head] = v
    return m


def bar_chart(labels: Iterable[str], values: Iterable[float], title: str, path: str | Path, ylabel: str = "") -> Path:
    """A simple bar chart PNG (e.g. per-layer MLP values)."""
    plt = pyplot()
    labels, values = list(labels), list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.4 * len(labels) + 2.0), 3.2))
    ax.bar(range(len(values)), values)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    return save_figure(fig, path)
