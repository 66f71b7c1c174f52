"""The one matplotlib set-up and the figures built on it (PNG files only, never a window).

Every figure goes through :func:`pyplot` (the Agg backend) and :func:`save_figure` (no timestamp in
the PNG, written atomically), so two runs on the same numbers give the same bytes.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from resi_dual.store.disk import atomic_write


def pyplot():
    """matplotlib.pyplot on the Agg backend: files only, never a window."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int | None = 120) -> Path:
    """Lay out ``fig``, write it as PNG at ``path`` (parents created, atomically) and close it; returns the path.

    ``dpi=None`` keeps the figure's own dpi.
    """
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi if dpi is not None else "figure", metadata={"Software": None})
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())
    return path


def heatmaps(panels: Sequence[tuple[str, object]], title: str, path: str | Path, xlabels: Sequence[str] | None = None,
             ylabels: Sequence[str] | None = None, xlabel: str = "head", ylabel: str = "layer", cmap: str = "viridis",
             annotate: bool | None = None, vmin: float | None = None, vmax: float | None = None,
             colorbar_label: str = "", dpi: int = 120) -> Path:
    """Side-by-side heatmaps of (rows, cols) matrices, one per ``(name, matrix)`` panel, row 0 at the top.

    NaN cells are blank. ``annotate`` writes the values in the cells (default: one panel of at most
    16 × 16). Tick labels default to the row and column indices. Returns the path written.
    """
    plt = pyplot()
    mats = [np.asarray(m, dtype=np.float64) for _, m in panels]
    for m in mats:
        if m.ndim != 2:
            raise ValueError(f"heatmap needs a 2-d matrix, got shape {m.shape}")
    rows, cols = mats[0].shape
    if annotate is None:
        annotate = len(mats) == 1 and rows <= 16 and cols <= 16
    width = max(3.2, 0.45 * cols + 2.0) if len(mats) == 1 else 3.2
    single_title = 0.09 * len(title) + 1.0 if len(mats) == 1 else 0.0
    fig, axes = plt.subplots(1, len(mats), squeeze=False,
                             figsize=(max(width * len(mats) + 1.0, single_title), max(3.0, 0.35 * rows + 1.5)))
    for ax, (name, _), m in zip(axes[0], panels, mats):
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax, interpolation="nearest")
        cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
        if colorbar_label:
            cb.set_label(colorbar_label)
        ax.set_title(name or title, fontsize=9 if name else 10)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(m.shape[1]), list(xlabels) if xlabels is not None else range(m.shape[1]),
                      fontsize=6 if xlabels is not None else None, rotation=90 if xlabels is not None else 0)
        ax.set_yticks(range(m.shape[0]), list(ylabels) if ylabels is not None else range(m.shape[0]),
                      fontsize=6 if ylabels is not None else None)
        if annotate:
            _annotate(ax, m, vmin, vmax)
    if len(mats) > 1 or panels[0][0]:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def heatmap(matrix, title: str, path: str | Path, **kwargs) -> Path:
    """One (rows, cols) matrix as a PNG heatmap (layer × head by default); see :func:`heatmaps` for the options."""
    return heatmaps([("", matrix)], title, path, **kwargs)


def _annotate(ax, m: np.ndarray, vmin: float | None, vmax: float | None) -> None:
    finite = m[np.isfinite(m)]
    lo = vmin if vmin is not None else (finite.min() if finite.size else 0.0)
    hi = vmax if vmax is not None else (finite.max() if finite.size else 0.0)
    mid = (lo + hi) / 2
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            if np.isfinite(m[i, j]):
                v = m[i, j]
                txt = f"{v:.0f}" if float(v).is_integer() and abs(v) >= 1 else f"{v:.2g}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=7, color="white" if v < mid else "black")


def layer_head_matrix(values: Mapping[tuple[int, int], float], n_layers: int, n_heads: int) -> np.ndarray:
    """(n_layers, n_heads) matrix from ``{(layer, head): value}``; missing cells are NaN (drawn blank)."""
    m = np.full((n_layers, n_heads), np.nan)
    for (layer, head), v in values.items():
        m[layer, head] = v
    return m


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, title: str,
              path: str | Path, logx: bool = False, dpi: int = 110) -> Path:
    """One line per ``series[name] = (x, y)``; returns the path written."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, path, dpi=dpi)


def bar_plot(groups: Sequence[str], series: Mapping[str, Sequence[tuple[float, float]]], ylabel: str, title: str,
             path: str | Path, dpi: int = 110) -> Path:
    """Grouped bars with error bars: ``series[name][g] = (mean, std)`` for group g; returns the path written."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) * max(1, len(series)) / 3 + 3, 3.4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for j, (name, vals) in enumerate(series.items()):
        ax.bar(x + j * width - 0.4 + width / 2, [v[0] for v in vals], width, yerr=[v[1] for v in vals], label=name)
    ax.set_xticks(x, list(groups), fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, path, dpi=dpi)


def ablation_figure(res, title: str, path: str | Path) -> Path:
    """Accuracy against kept heads of a :class:`~resi_dual.zeroshot.specialize.AblationResult`: one line per
    ranking (random: mean ± std band), one panel per ablation mode."""
    from resi_dual.zeroshot.specialize import fraction_label, summarize_random

    plt = pyplot()
    summary = summarize_random(res)
    modes = list(next(iter(summary.values())))
    fig, axes = plt.subplots(1, len(modes), figsize=(5.2 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for method, by_mode in summary.items():
            mean, std = by_mode[mode]
            (line,) = ax.plot(res.sizes, mean, marker="o", label=method)
            if method == "random":
                ax.fill_between(res.sizes, mean - std, mean + std, alpha=0.2, color=line.get_color())
        ax.axhline(res.base_accuracy, color="k", ls="--", lw=1, label="all heads")
        ax.set_xscale("log")
        ax.set_xticks(res.sizes, [fraction_label(s, res.n_heads) for s in res.sizes], rotation=45, fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(f"heads kept (of {res.n_heads})")
        ax.set_ylabel("top-1 accuracy")
        ax.set_title(f"{title} — {mode} ablation")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path)
