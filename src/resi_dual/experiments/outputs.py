"""What an experiment shows, as data: tables and figure specs that :mod:`resi_dual.report` draws and writes.

The experiments stage computes numbers and never draws (report comes later in the data flow); a
runner's summary returns an :class:`Outputs` and ``resi_dual.report.experiments`` writes it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Table:
    """Rows written as ``<stem>.tsv`` and ``<stem>.md``; ``columns=None``: the first row's keys."""

    stem: str
    rows: list[dict]
    columns: list[str] | None = None
    title: str = ""


@dataclass(frozen=True)
class Heatmaps:
    """Side-by-side (rows = layers) heatmaps, one per ``(name, matrix)`` panel, as ``<stem>.png``."""

    stem: str
    panels: list[tuple[str, list[list[float]]]]
    xlabels: list[str]
    ylabels: list[str]
    title: str


@dataclass(frozen=True)
class Lines:
    """One line per ``series[name] = (x, y)``, as ``<stem>.png``."""

    stem: str
    series: dict[str, tuple[list[float], list[float]]]
    xlabel: str
    ylabel: str
    title: str
    logx: bool = False


@dataclass(frozen=True)
class Bars:
    """Grouped bars with error bars, ``series[name][g] = (mean, std)``, as ``<stem>.png``."""

    stem: str
    groups: list[str]
    series: dict[str, list[tuple[float, float]]]
    ylabel: str
    title: str


@dataclass
class Outputs:
    """An experiment's tables and figures (in the order they are written) and its extra ``run.json`` fields."""

    tables: list[Table] = field(default_factory=list)
    figures: list[Heatmaps | Lines | Bars] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def table(self, stem: str, rows: list[dict], columns: Sequence[str] | None = None, title: str = "") -> None:
        self.tables.append(Table(stem, list(rows), list(columns) if columns is not None else None, title))

    def figure(self, spec: Heatmaps | Lines | Bars) -> None:
        self.figures.append(spec)

    def find(self, stem: str) -> Table:
        """The table written as ``<stem>``."""
        return next(t for t in self.tables if t.stem == stem)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value; NaN for none)."""
    vals = [float(v) for v in values]
    if not vals:
        return float("nan"), float("nan")
    m = sum(vals) / len(vals)
    s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
    return m, s
