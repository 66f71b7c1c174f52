"""The one table writer: rows of dicts → TSV, Markdown and/or Parquet, each file written atomically.

Floats are written with one format (``.4f`` by default), so two runs on the same numbers give
byte-identical files (what the experiments' resume test compares). Parquet keeps full precision.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Sequence

from resi_dual.store.disk import atomic_write

FORMATS = ("tsv", "md", "parquet")


def format_value(v, precision: str = ".4f") -> str:
    """One table cell as text: '' for None, yes/no for booleans, ``precision`` for floats."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else format(v, precision)
    return str(v)


def write_table(rows: Sequence[dict], path: str | Path, columns: Sequence[str] | None = None, title: str = "",
                formats: Sequence[str] = ("tsv", "md"), precision: str = ".4f") -> list[Path]:
    """Write ``rows`` as ``<path>.<format>`` for each of ``formats``; returns the paths, in that order.

    Args:
        rows: one dict per row; a missing key is an empty cell.
        path: the files' common stem (a suffix is replaced); parents are created.
        columns: column order (default: the first row's keys).
        title: a ``### title`` line above the Markdown table.
        precision: format spec of floats in TSV and Markdown.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown table format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = list(columns or (rows[0].keys() if rows else []))
    cells = [[format_value(r.get(c), precision) for c in cols] for r in rows]
    written = []
    for fmt in formats:
        target = path.with_suffix(f".{fmt}")
        if fmt == "tsv":
            buf = io.StringIO()
            writer = csv.writer(buf, delimiter="\t", lineterminator="\n")  # quotes a cell only if it holds a tab, quote or newline
            writer.writerow(cols)
            writer.writerows(cells)
            data = buf.getvalue()
        elif fmt == "md":
            lines = ([f"### {title}", ""] if title else []) + ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            lines += ["| " + " | ".join(v.replace("|", "\\|") for v in row) + " |" for row in cells]
            data = "\n".join(lines) + "\n"
        else:
            data = _parquet_bytes(rows, cols)
        atomic_write(target, data.encode() if isinstance(data, str) else data)
        written.append(target)
    return written


def _parquet_bytes(rows: Sequence[dict], cols: list[str]) -> bytes:
    import pandas as pd

    buf = io.BytesIO()
    pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols).to_parquet(buf, index=False)
    return buf.getvalue()


def read_table(path: str | Path, what: str | None = None, columns: Sequence[str] = ()) -> list[dict]:
    """Rows of a TSV written by :func:`write_table`, every value a string (empty list for an empty file).
    With ``what`` (the option or file role), a missing or binary file, or one without ``columns``, is a
    one-line :class:`ResiDualError` naming ``what`` and the file."""
    if what is None:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh, delimiter="\t"))
    from resi_dual.errors import ResiDualError
    from resi_dual.files import read_text_file

    rows = list(csv.DictReader(io.StringIO(read_text_file(path, what), newline=""), delimiter="\t"))
    missing = [c for c in columns if not rows or c not in rows[0]]
    if missing:
        raise ResiDualError(f"{what}: {path} is not the expected table (no {', '.join(missing)} column"
                            f"{'s' if len(missing) > 1 else ''}{'' if rows else '; it has no rows'})")
    return rows
