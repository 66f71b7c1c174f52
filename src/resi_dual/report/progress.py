"""The one progress-bar factory: rich bars on stderr behind the :class:`~resi_dual.core.progress.Progress` protocol.

The package top installs :func:`bars` as what ``progress=True`` shows (docs/DESIGN.md §14).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from resi_dual.core.progress import Step


def _columns(fields: dict):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    cols = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn()]
    if fields:
        cols.append(TextColumn("  ".join(f"{k} {{task.fields[{k}]}}" for k in fields)))
    return cols


@contextmanager
def bars(description: str, total: int | None = None, transient: bool = True, **fields) -> Iterator[Step]:
    """A rich bar for one loop: yields ``step(n=1, **fields)``; the bar disappears when the loop ends
    (``transient``). ``fields`` are shown after the bar and updated by ``step``."""
    from rich.console import Console
    from rich.progress import Progress

    with Progress(*_columns(fields), console=Console(stderr=True), transient=transient) as bar:
        task = bar.add_task(description, total=total, **fields)

        def step(n: int = 1, **updates) -> None:
            bar.update(task, advance=n, **updates)

        yield step
