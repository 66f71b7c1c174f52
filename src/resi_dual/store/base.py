"""The read interface every stage uses for unit encodings, on disk or in memory.

`EncodingSource` is what the spectral engine, text interpretation, zero-shot and the adapters read.
Subclasses implement ``_read_raw(rows)``; everything else (lazy contributions, per-unit affine
features, block iteration) is derived here once. `MemorySource` wraps a traced batch
(:class:`~resi_dual.core.encodings.UnitEncodings`) for tests and small in-process jobs; the
on-disk store (`resi_dual.store.disk`) is the other implementation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.core.encodings import Readout, UnitEncodings, unit_features
from resi_dual.core.units import Composition, Unit
from resi_dual.store.meta import StoreMeta


@dataclass
class RawBlock:
    """A block of consecutive rows. Shapes: dense (b, 1+L, d_model), heads (b, L, H, d_head),
    mu/sigma (b,), labels (b,) int64, output (b, d_out). Tensors are float32 (float64 on request)."""

    rows: slice | np.ndarray
    dense: torch.Tensor
    heads: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    labels: torch.Tensor
    output: torch.Tensor

    def __len__(self) -> int:
        return int(self.mu.shape[0])


class EncodingSource:
    """Unit encodings of one (model, dataset, split). Subclasses set ``composition``, ``readout``,
    ``labels`` (np.int64 (n,)), ``class_names`` (list[str]), ``sample_ids`` (list[str]), ``meta`` (:class:`StoreMeta`)
    and implement ``_read_raw``."""

    composition: Composition
    readout: Readout
    labels: np.ndarray
    class_names: list[str]
    sample_ids: list[str]
    meta: StoreMeta

    # -- to implement --------------------------------------------------------------------
    def _read_raw(self, rows: np.ndarray | slice) -> tuple[torch.Tensor, ...]:
        """Return (dense, heads, mu, sigma, output) for the rows, in the stored dtype."""
        raise NotImplementedError

    # -- derived -------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(len(self.labels))

    @property
    def units(self) -> tuple[Unit, ...]:
        return self.composition.units

    def _rows(self, rows) -> np.ndarray | slice:
        if rows is None:
            return slice(0, len(self))
        if isinstance(rows, slice):
            return rows
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= len(self)):
            raise ResiDualError(f"row index out of range for a store of {len(self)} samples")
        return rows

    def raw(self, rows=None, dtype: torch.dtype | None = torch.float32) -> RawBlock:
        """All raw tensors for the rows (a slice or an index array) as a :class:`RawBlock`.

        ``dtype=None`` keeps the stored dtype (no converted copy of fields the caller never reads)."""
        r = self._rows(rows)
        dense, heads, mu, sigma, output = (t if dtype is None else t.to(dtype) for t in self._read_raw(r))
        labels = torch.from_numpy(np.asarray(self.labels[r], dtype=np.int64))
        return RawBlock(r, dense, heads, mu, sigma, labels, output)

    def iter_blocks(self, block_rows: int = 4096, dtype: torch.dtype | None = torch.float32) -> Iterator[RawBlock]:
        """Consecutive row blocks; memory is bounded by ``block_rows`` whatever the store size."""
        for start in range(0, len(self), block_rows):
            yield self.raw(slice(start, min(start + block_rows, len(self))), dtype)

    def contributions(self, units=None, rows=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n', U', d_out) unit contributions in output space, computed from the raw encodings."""
        idx = None if units is None else self.composition.select(units)
        b = self.raw(rows, dtype)
        return self.readout.to(dtype).apply(self.composition, b.dense, b.heads, b.mu, b.sigma, idx)

    def features(self, unit: Unit | str | int, rows=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(n', d_in+2) affine coordinates ``[x/σ, 1/σ, μ/σ]`` of one unit (see `Readout.affine`)."""
        i = unit if isinstance(unit, int) else self.composition.index(unit)
        b = self.raw(rows, dtype)
        return unit_features(self.composition, i, b.dense, b.heads, b.mu, b.sigma)

    def output(self, rows=None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """(n', d_out) the model's own embedding, as recorded at encoding time."""
        return self.raw(rows, dtype).output


class MemorySource(EncodingSource):
    """An :class:`EncodingSource` over in-memory encodings (tests, small jobs)."""

    def __init__(
        self,
        enc: UnitEncodings,
        labels: Sequence[int] | np.ndarray,
        class_names: Sequence[str] | None = None,
        sample_ids: Sequence[str] | None = None,
        meta: StoreMeta | dict | None = None,
    ) -> None:
        n = len(enc)
        labels = np.asarray(labels, dtype=np.int64)
        if labels.shape != (n,):
            raise ResiDualError(f"{labels.shape[0]} labels for {n} samples")
        self.composition = enc.composition
        self.readout = enc.readout
        self.labels = labels
        self.class_names = list(class_names) if class_names is not None else [str(c) for c in range(int(labels.max()) + 1)]
        self.sample_ids = list(sample_ids) if sample_ids is not None else [str(i) for i in range(n)]
        self.meta = meta if isinstance(meta, StoreMeta) else StoreMeta.from_dict(dict(meta or {}), "meta")
        self._enc = enc

    def _read_raw(self, rows):
        e = self._enc
        return e.dense[rows], e.heads[rows], e.mu[rows], e.sigma[rows], e.output[rows]
