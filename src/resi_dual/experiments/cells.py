"""The cell cache: every unit of work of a grid has a directory keyed by the hash of what it depends on.

A :class:`Cell` has a kind (``store``, ``bases``, ``intrinsic-dim`` …), a readable name, the settings
that determine its result, and the cells it reads. Its key is
``sha256(kind, settings, keys of its dependencies)``, so a changed setting changes the keys of the
cells that depend on it — and only those. Its artefacts live in ``OUT/cells/<kind>/<name>-<key[:12]>/``;
``cell.json`` (settings, key, timing) is written atomically, *last*: a directory without it is an
interrupted run and is wiped and redone, a directory with it is never recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from resi_dual.errors import ResiDualError

CELL_FILE = "cell.json"

#: bumped when the computation of a kind of cell changes, so old cached results are not reused.
#: A change of what a dataset yields (loaders, splits, limits) bumps ``resi_dual.data.DATA_VERSION``
#: instead, which is in every store cell's settings.
CELL_VERSIONS = {"store": 1, "bases": 1, "intrinsic-dim": 2, "similarity": 1, "specialization": 1, "adaptation": 1}


def _canonical(obj: Any) -> Any:
    """JSON-ready, order-stable form of settings (tuples → lists, dataclasses → dicts)."""
    if hasattr(obj, "__dataclass_fields__"):
        return {k: _canonical(getattr(obj, k)) for k in obj.__dataclass_fields__}
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    return obj


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", text).strip("_")[:80] or "cell"


@dataclass
class Cell:
    """One cached unit of work.

    Attributes:
        kind: what it computes (``store``, ``bases``, ``intrinsic-dim`` …).
        name: readable name (``demo.fashion-mnist.train``), unique within its kind.
        settings: everything its result depends on besides its dependencies (JSON-ready).
        deps: the cells it reads.
        compute: ``compute(cell, workdir)`` writes the artefacts into ``workdir``; its return value
            (JSON-ready) is stored in ``cell.json`` as ``result``.
        resumable: keep the directory of an interrupted run (the computation resumes on its own).
        root: the grid's output folder (set by the grid).
    """

    kind: str
    name: str
    settings: dict
    deps: list["Cell"] = field(default_factory=list)
    compute: Callable[["Cell", Path], Any] | None = None
    resumable: bool = False  # keep a partial directory (the computation resumes itself, e.g. a store)
    root: Path | None = None

    @property
    def key(self) -> str:
        blob = json.dumps(
            {"kind": self.kind, "version": CELL_VERSIONS.get(self.kind, 1), "settings": _canonical(self.settings),
             "deps": sorted(d.key for d in self.deps)},
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def path(self) -> Path:
        if self.root is None:
            raise ResiDualError(f"cell {self.kind}/{self.name} has no output directory")
        return self.root / "cells" / self.kind / f"{_slug(self.name)}-{self.key[:12]}"

    @property
    def label(self) -> str:
        return f"{self.kind}/{self.name}"

    def done(self) -> bool:
        f = self.path / CELL_FILE
        if not f.is_file():
            return False
        try:
            return json.loads(f.read_text()).get("key") == self.key
        except (OSError, json.JSONDecodeError):
            return False

    def record(self) -> dict:
        """The finished cell's ``cell.json``."""
        if not self.done():
            raise ResiDualError(f"cell {self.label} has not been computed")
        return json.loads((self.path / CELL_FILE).read_text())

    @property
    def result(self) -> Any:
        return self.record().get("result")

    def run(self) -> bool:
        """Compute the cell unless it is done. Returns True when it computed."""
        if self.done():
            return False
        for d in self.deps:
            if not d.done():
                raise ResiDualError(f"cell {self.label} needs {d.label}, which is not computed")
        if self.compute is None:
            raise ResiDualError(f"cell {self.label} has nothing to compute")
        path = self.path
        if path.exists() and not self.resumable:  # left over by an interrupted run: start clean
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        result = self.compute(self, path)
        record = {
            "kind": self.kind, "name": self.name, "key": self.key, "settings": _canonical(self.settings),
            "deps": [{"label": d.label, "key": d.key} for d in self.deps],
            "seconds": round(time.perf_counter() - t0, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "result": _canonical(result),
        }
        write_json_atomic(path / CELL_FILE, record)
        return True


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and an atomic rename (fsynced: a kill leaves old or new)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def topological(cells: list[Cell]) -> list[Cell]:
    """All cells reachable from ``cells``, dependencies first, each once (by key), in a stable order."""
    out: list[Cell] = []
    seen: set[str] = set()

    def visit(c: Cell) -> None:
        if c.key in seen:
            return
        for d in c.deps:
            visit(d)
        seen.add(c.key)
        out.append(c)

    for c in cells:
        visit(c)
    return out
