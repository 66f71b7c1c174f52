"""Run one of the paper's experiments and write what it shows: ``OUT/<name>/`` tables, figures and ``run.json``.

The experiments stage computes cells and returns rows and figure specs
(:class:`~resi_dual.experiments.outputs.Outputs`); this module draws and writes them with the one
table writer and the one matplotlib set-up.
"""

from __future__ import annotations

from pathlib import Path

from resi_dual.experiments.cells import write_json_atomic
from resi_dual.experiments.config import GridConfig
from resi_dual.experiments.outputs import Bars, Heatmaps, Lines, Outputs
from resi_dual.experiments.runners import ExperimentRun, compute_experiment
from resi_dual.report.plots import bar_plot, heatmaps, line_plot
from resi_dual.report.tables import write_table


def write_outputs(outputs: Outputs, out: str | Path) -> list[Path]:
    """Write every table (TSV + Markdown) and figure (PNG) of ``outputs`` under ``out``; returns the paths."""
    out = Path(out)
    written = []
    for t in outputs.tables:
        written += write_table(t.rows, out / t.stem, t.columns, t.title)
    for f in outputs.figures:
        path = out / f"{f.stem}.png"
        if isinstance(f, Heatmaps):
            written.append(heatmaps(f.panels, f.title, path, xlabels=f.xlabels, ylabels=f.ylabels, xlabel="", ylabel="",
                                    annotate=False, dpi=110))
        elif isinstance(f, Lines):
            written.append(line_plot(f.series, f.xlabel, f.ylabel, f.title, path, logx=f.logx))
        elif isinstance(f, Bars):
            written.append(bar_plot(f.groups, f.series, f.ylabel, f.title, path))
        else:  # pragma: no cover - a new spec type without a writer is a programming error
            raise TypeError(f"no writer for {type(f).__name__}")
    return written


#: in ``OUT/<name>/`` while a run is in progress: the tables there are a previous run's
STALE = "STALE.txt"


def config_sha256(config: GridConfig) -> str:
    """A hash of the validated grid (every field, in a fixed order): which grid the tables come from."""
    import dataclasses
    import hashlib
    import json

    doc = {k: v for k, v in dataclasses.asdict(config).items() if k != "source"}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def mark_stale(results: Path, config_hash: str) -> None:
    """Before a run: its folder's tables are marked stale (and run.json removed) until it finishes."""
    from resi_dual.files import atomic_write

    if not results.is_dir():
        return
    (results / "run.json").unlink(missing_ok=True)
    atomic_write(results / STALE, f"the tables here may come from an earlier grid; a run of grid {config_hash[:16]} "
                                  "started and has not finished (run.json is written when it does)\n")


def write_run(run: ExperimentRun, out: str | Path, config_hash: str | None = None) -> Path:
    """``out/<name>/``: the run's tables, figures and ``run.json`` (with the grid's hash, written last);
    returns that folder."""
    results = Path(out) / run.name
    results.mkdir(parents=True, exist_ok=True)
    write_outputs(run.outputs, results)
    summary = dict(run.summary, config_sha256=config_hash) if config_hash else run.summary
    write_json_atomic(results / "run.json", summary)
    (results / STALE).unlink(missing_ok=True)
    return results


def status_table(cells: list, title: str):
    """A rich table of the cells done and left, per kind."""
    from rich.table import Table

    from resi_dual.experiments.grid import status_counts

    t = Table(title=title)
    for col in ("cells", "done", "left"):
        t.add_column(col, justify="right" if col != "cells" else "left")
    for kind, (done, left) in status_counts(cells).items():
        t.add_row(kind, str(done), str(left))
    return t


def run_experiment(name: str, config: GridConfig, out: str | Path, progress: bool = True, status_only: bool = False,
                   **kwargs) -> dict:
    """Compute (resuming) one experiment and write ``out/<name>/``; returns ``run.json``'s content.

    ``status_only`` prints what is done and left; ``print_encode=K`` prints the ``torchrun`` commands
    of the missing stores. Other arguments: :func:`resi_dual.experiments.runners.compute_experiment`.
    """
    writes = not (status_only or kwargs.get("print_encode"))
    config_hash = config_sha256(config)
    if writes:
        mark_stale(Path(out) / name, config_hash)
    run = compute_experiment(name, config, out, progress=progress, status_only=status_only, **kwargs)
    if kwargs.get("print_encode"):
        print("\n".join(run.encode_commands))
    elif status_only:
        from rich.console import Console

        Console().print(status_table(run.cells, f"{name}: {config.source}"))
    else:
        write_run(run, out, config_hash)
    return run.summary
