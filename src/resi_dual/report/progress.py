"""The one progress-bar factory: rich bars on stderr behind the :class:`~resi_dual.core.progress.Progress` protocol.

The package top installs :func:`bars` as what ``progress=True`` shows (docs/DESIGN.md §14).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from resi_dual.core.progress import Step


def _shown(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _columns(fields: dict, unit: str | None):
    from rich.progress import (BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:,.1f} {unit}/s" if speed else f"… {unit}/s")

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()]
    cols += [Rate()] if unit else []
    cols += [TimeElapsedColumn(), TimeRemainingColumn()]
    if fields:
        cols.append(TextColumn("  ".join(f"{k} {{task.fields[{k}]}}" for k in fields)))
    return cols


@contextmanager
def bars(description: str, total: int | None = None, unit: str | None = None, keep: bool = False,
         **fields) -> Iterator[Step]:
    """A rich bar for one loop; yields ``step(n=1, **fields)``.

    ``unit`` adds a rate column (``img`` → ``12.5 img/s``); ``keep`` leaves the finished bar on screen
    (otherwise it disappears); ``fields`` are shown after the bar (floats at 4 decimals) and updated by ``step``.
    """
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*_columns(fields, unit), console=Console(stderr=True), transient=not keep) as bar:
        task = bar.add_task(description, total=total, **{k: _shown(v) for k, v in fields.items()})

        def step(n: int = 1, **updates) -> None:
            bar.update(task, advance=n, **{k: _shown(v) for k, v in updates.items()})

        yield step
