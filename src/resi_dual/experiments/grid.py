"""The shared cells of every experiment (stores, bases) and the loop that runs a grid (with a progress display).

Cell graph: ``store`` cells (model × dataset × split × limit) → ``bases`` cells (per-unit PCA of a
store) → experiment cells (``intrinsic-dim``, ``similarity``, ``specialization``, ``adaptation``),
whose rows are gathered into the experiment's tables and figures. Two experiments run with the
same ``--out`` share their stores and bases (same settings, same key).

The device models run on (``GridConfig.device`` or ``--device``) is deliberately *not* part of any
cell's key, like the number of DataLoader workers: a cell's result is the same computation wherever
it runs (encodings agree to float32 rounding and every traced batch is checked against the model's
own embedding), so a grid can be encoded on GPUs and analysed, resumed or extended on a CPU machine
from the same cache.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from resi_dual.errors import ResiDualError
from resi_dual.experiments.cells import Cell, topological, write_json_atomic
from resi_dual.experiments.config import DatasetEntry, GridConfig, ModelEntry
from resi_dual.models.registry import weights_fingerprint
from resi_dual.core.progress import task

STORE_DIR = "store"
BASES_FILE = "bases.safetensors"
ROWS_FILE = "rows.json"


def noise_dataset(n: int, size: int, seed: int, split: str = "train"):
    """``n`` uniform-noise RGB images of ``size`` px (seeded), one class ``noise``: the similarity control."""
    from PIL import Image

    from resi_dual.data.base import CallableDataset

    def get(i: int) -> Image.Image:
        rng = np.random.default_rng([seed, i])
        return Image.fromarray(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8), "RGB")

    return CallableDataset(f"noise:{seed}", "noise", split, get, np.zeros(n, np.int64), ["noise"])


@dataclass
class Grid:
    """One run of an experiment over a grid: the config, the output folder and loaded models.

    Models are loaded lazily, only when a cell that needs them is computed, and kept for the run.
    """

    config: GridConfig
    out: Path
    progress: bool = True
    workers: int = 0  # DataLoader processes for the stores (not part of any cell's settings)
    device: str = "cpu"  # where models run: cpu, cuda, cuda:N, mps (not part of any cell's settings)
    _models: dict = field(default_factory=dict)
    _cells: dict = field(default_factory=dict)

    def model(self, entry: ModelEntry):
        if entry.name not in self._models:
            from resi_dual import load_model

            self._models[entry.name] = load_model(entry.spec, convention=self.config.convention, device=self.device)
        return self._models[entry.name]

    def _unique(self, cell: Cell) -> Cell:
        """One object per key, so a cell shared by several experiments is planned once."""
        cell.root = self.out
        return self._cells.setdefault(cell.key, cell)

    # -- shared cells --------------------------------------------------------------------------
    def limit_for(self, dataset: DatasetEntry, split: str) -> int | None:
        lim = self.config.limits
        if dataset is self.config.reference or (dataset.spec == self.config.reference.spec and split == self.config.reference_split):
            return lim.reference
        return {"train": lim.train, "val": lim.val, "test": lim.test}[split]

    def store(self, model: ModelEntry, dataset: DatasetEntry, split: str, limit: int | None = None,
              noise: tuple[int, int] | None = None) -> Cell:
        """Encodings of one model × dataset × split (``noise=(n, seed)`` for the noise control)."""
        from resi_dual.data import DATA_VERSION

        settings = {
            "model": model.spec, "weights": weights_fingerprint(model.spec), "convention": self.config.convention,
            "data_version": DATA_VERSION,  # a loader/split change re-encodes the stores (see resi_dual.data)
            "dataset": dataset.spec, "root": dataset.root, "split": split, "limit": limit, "noise": noise,
            "batch_size": self.config.batch_size, "dtype": self.config.store_dtype,
        }

        def compute(cell: Cell, work: Path) -> dict:
            from resi_dual.store.writer import EncodeConfig, encode_store

            tm = self.model(model)
            if noise is not None:
                ds = noise_dataset(noise[0], int(tm.image_size), noise[1], split)
            else:
                from resi_dual.data import load_dataset

                ds = load_dataset(dataset.spec, split, root=dataset.root)
            cfg = EncodeConfig(limit=limit, batch_size=self.config.batch_size, dtype=self.config.store_dtype,
                               workers=self.workers, progress=self.progress)
            manifest = encode_store(tm, ds, work / STORE_DIR, cfg)
            return {"n": int(manifest.n_samples or 0)}

        name = f"{model.name}.{dataset.name}.{split}" + (f".{limit}" if limit else "")
        # a store resumes itself chunk by chunk, so an interrupted store cell keeps its directory
        return self._unique(Cell("store", name, settings, [], compute, resumable=True))

    def bases(self, store: Cell) -> Cell:
        """Per-unit PCA (all units, all components) of a store."""

        def compute(cell: Cell, work: Path) -> dict:
            from resi_dual.spectral.pca import fit_bases

            b = fit_bases(open_cell_store(store), progress=self.progress)
            b.save(work / BASES_FILE)
            return {"n_samples": b.n_samples, "units": len(b.labels), "content_hash": b.content_hash()}

        return self._unique(Cell("bases", store.name, {}, [store], compute))

    def analysis(self, kind: str, name: str, settings: dict, deps: list[Cell],
                 compute_rows: Callable[[], list[dict]]) -> Cell:
        """An experiment cell whose artefact is a list of table rows (``rows.json``)."""

        def compute(cell: Cell, work: Path) -> dict:
            rows = compute_rows()
            write_json_atomic(work / ROWS_FILE, rows)
            return {"rows": len(rows)}

        return self._unique(Cell(kind, name, settings, deps, compute))

    # -- running -------------------------------------------------------------------------------
    def run(self, targets: list[Cell], title: str) -> dict:
        """Compute every cell the targets need, skipping finished ones. Returns counts."""
        cells = topological(targets)
        computed = 0
        with task(self.progress, title, len(cells), keep=True, running="", last="") as step:
            step(sum(c.done() for c in cells))
            for c in cells:
                if c.done():
                    continue
                step(0, running=c.label)
                t0 = time.perf_counter()
                c.run()
                computed += 1
                step(1, running="", last=f"{c.label} ({time.perf_counter() - t0:.1f} s)")
        return {"cells": len(cells), "computed": computed, "cached": len(cells) - computed}


def open_cell_store(cell: Cell):
    from resi_dual.store import open_store

    return open_store(cell.path / STORE_DIR)


def cell_rows(cell: Cell) -> list[dict]:
    return json.loads((cell.path / ROWS_FILE).read_text())


def load_cell_bases(cell: Cell):
    from resi_dual.spectral.bases import UnitBases

    return UnitBases.load(cell.path / BASES_FILE)


def status_counts(cells: list[Cell]) -> dict[str, tuple[int, int]]:
    """Per cell kind, in order of first appearance: (done, left)."""
    kinds: dict[str, list[int]] = {}
    for c in cells:
        kinds.setdefault(c.kind, [0, 0])[0 if c.done() else 1] += 1
    return {k: (d, left) for k, (d, left) in kinds.items()}
