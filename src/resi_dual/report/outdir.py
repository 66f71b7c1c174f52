"""Output folders that appear complete or not at all: build in a hidden sibling, then swap it in."""

from __future__ import annotations

import glob
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def check_replaceable(out: Path, marker: str | None) -> None:
    """Refuse (before any work) an ``out`` that is a file, or a non-empty folder without ``marker`` (a
    file every complete output of this kind holds): replacing it would delete what is not ours."""
    from resi_dual.errors import ResiDualError
    from resi_dual.files import check_out_dir

    if out.is_dir():
        if any(out.iterdir()) and not (marker and (out / marker).is_file()):
            raise ResiDualError(f"--out {out} is a folder holding other files{f' (no {marker})' if marker else ''}, "
                                "and the output replaces its folder as a whole: give a new or empty folder")
    else:
        check_out_dir(out)


def _remove_dead_stages(out: Path) -> None:
    """Delete the hidden siblings of ``out`` that a killed run left (``.<name>.tmp-<pid>-…``, and
    ``.<name>.old-<pid>-…`` unless ``out`` itself is missing, when it holds the previous output)."""
    from resi_dual.files import pid_alive

    for p in out.parent.glob(f".{glob.escape(out.name)}.*-*-*"):
        kind, _, rest = p.name[len(out.name) + 2:].partition("-")
        pid = rest.split("-", 1)[0]
        if kind in ("tmp", "old") and pid.isdigit() and p.is_dir() and not pid_alive(int(pid)):
            if kind == "old" and not out.exists():
                continue
            shutil.rmtree(p, ignore_errors=True)


@contextmanager
def staged_dir(out: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty temporary folder next to ``out``; on success it replaces ``out`` (an existing
    ``out`` is moved aside first and removed after the swap), on any error it is deleted. An ``out``
    that is a file, or a non-empty folder without ``marker``, is refused first (:func:`check_replaceable`)."""
    out = Path(out).resolve()
    check_replaceable(out, marker)
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_stages(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-{os.getpid()}-", dir=out.parent))
        os.replace(out, old / "previous")
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
