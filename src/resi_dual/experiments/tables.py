"""Tables (TSV + Markdown) and figures (PNG) of an experiment, written from the cells' rows.

Numbers are rounded to 4 significant decimals when written, so the files of two runs on the same
cells are byte-identical (what the kill/resume test compares).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4f}"
    return str(v)


def write_table(rows: Sequence[dict], path: Path, columns: Sequence[str] | None = None, title: str = "") -> Path:
    """Write ``rows`` as ``<path>.tsv`` and ``<path>.md``. Returns the TSV path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns or (rows[0].keys() if rows else []))
    tsv = ["\t".join(cols)] + ["\t".join(_fmt(r.get(c)) for c in cols) for r in rows]
    path.with_suffix(".tsv").write_text("\n".join(tsv) + "\n")
    md = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c)).replace("|", "\\|") for c in cols) + " |" for r in rows]
    path.with_suffix(".md").write_text("\n".join(md) + "\n")
    return path.with_suffix(".tsv")


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s


def heatmaps(panels: list[tuple[str, list[list[float]]]], xlabels: list[str], ylabels: list[str], title: str,
             path: Path) -> Path:
    """Side-by-side heatmaps (rows = layers), one per ``(name, matrix)`` panel, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1, 0.28 * len(ylabels) + 1.8), squeeze=False)
    for ax, (name, mat) in zip(axes[0], panels):
        m = np.asarray(mat, dtype=float)
        im = ax.imshow(m, aspect="auto", cmap="viridis")
        ax.set_title(name, fontsize=9)
        ax.set_xticks(range(len(xlabels)), xlabels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(ylabels)), ylabels, fontsize=6)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})  # no timestamp, so reruns give the same bytes
    plt.close(fig)
    return path


def line_plot(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, title: str, path: Path,
              logx: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(4.5, 3.2))
    for name, (x, y) in series.items():
        ax.plot(x, y, marker="o", ms=3, label=name)
    if logx:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path


def bar_plot(groups: list[str], series: dict[str, list[tuple[float, float]]], ylabel: str, title: str, path: Path) -> Path:
    """Grouped bars with error bars: ``series[name][g] = (mean, std)`` for group g."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 * len(groups) * max(1, len(series)) / 3 + 3, 3.4))
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for j, (name, vals) in enumerate(series.items()):
        ax.bar(x + j * width - 0.4 + width / 2, [v[0] for v in vals], width, yerr=[v[1] for v in vals], label=name)
    ax.set_xticks(x, groups, fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)
    return path
