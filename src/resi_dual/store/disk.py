"""The on-disk encoding store: one (model, dataset, split), chunked, resumable, read lazily.

Layout of a store directory (see docs/STORE.md)::

    plan.json              the job's identity, written first; a rerun with another plan is refused
    composition.json       units and convention (Composition.to_json)
    readout.safetensors    the per-unit readout to output space, float32
    chunks/000000.safetensors …
                           chunk k holds plan positions [k·C, (k+1)·C) minus skipped bad images:
                           dense (r, 1+L, d_model) and heads (r, L, H, d_head) in the store dtype,
                           mu, sigma (r,) float32, output (r, d_out) float32, labels and
                           dataset_index (r,) int64; its header metadata holds the sample ids,
                           skipped images and the worst decomposition errors of the chunk
    manifest.json          written last: plan + chunk list (rows, sha256) + results; a store
                           without it is incomplete

Why safetensors shards and not zarr or npy memmaps: one file per chunk makes "a chunk is complete
iff its file exists" a single atomic ``rename``; the format is a JSON header plus raw little-endian
arrays (no pickles, readable by any safetensors reader, memory-mapped for lazy reads); and because
the header is written here, field order and padding are fixed, so the same chunk is the same bytes
on every run, machine and process count. Zarr would add a dependency and many small files per chunk
whose joint completeness needs its own protocol. Timestamps, versions and timings live only in
the manifest (under ``timing`` and ``run``); every other byte of a store is a function of its plan.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Iterator, Literal

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.files import atomic_write, is_tmp, tmp_name  # noqa: F401 - the store's writers use them from here
from resi_dual.core.encodings import Readout
from resi_dual.core.units import Composition, Unit
from resi_dual.store.base import EncodingSource
from resi_dual.store.meta import FORMAT, FORMAT_VERSION, StoreMeta

PLAN, MANIFEST, COMPOSITION, READOUT, CHUNKS = "plan.json", "manifest.json", "composition.json", "readout.safetensors", "chunks"
#: manifest keys that may differ between two runs of the same plan
VOLATILE_KEYS = ("timing", "run")

_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I64": np.int64, "I32": np.int32, "U8": np.uint8,
           "BOOL": np.bool_}
_CODES = {np.dtype(v): k for k, v in _DTYPES.items()}
#: storage of the raw dense/head encodings (μ, σ and outputs are always float32)
StoreDtype = Literal["float16", "float32"]
#: store dtype name -> numpy dtype of the raw dense/head encodings
STORE_DTYPES = {"float16": np.float16, "float32": np.float32}


# -- files: atomic writes and a fixed-byte safetensors writer ----------------------------------

def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n").encode()


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
                      data_hash_key: str | None = None) -> bytes:
    """A safetensors file (header + raw data) with a fixed layout: tensors in sorted name order,
    header keys sorted, compact JSON, padded with spaces to 8 bytes — so equal inputs give equal bytes.
    With ``data_hash_key``, the sha256 of the data section is recorded under that metadata key."""
    header: dict = {}
    metadata = dict(metadata or {})
    blobs, offset = [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        if a.dtype not in _CODES:
            raise ResiDualError(f"cannot store dtype {a.dtype} ({name})")
        raw = a.tobytes()
        header[name] = {"dtype": _CODES[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if data_hash_key:
        h = hashlib.sha256()
        for raw in blobs:
            h.update(raw)
        metadata[data_hash_key] = h.hexdigest()
    if metadata:
        header = {"__metadata__": {str(k): str(v) for k, v in sorted(metadata.items())}, **header}
    text = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


class ShardReader:
    """Lazy reader of one safetensors file: the header at once, arrays memory-mapped on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > 100_000_000:
                    raise ValueError("header too large")
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error) as e:
            raise ResiDualError(f"{self.path} is not a readable safetensors file ({e})") from None
        self.metadata: dict[str, str] = header.pop("__metadata__", {}) or {}
        self.header = header
        self.data_start = 8 + n
        self._maps: dict[str, np.ndarray] = {}

    def __contains__(self, name: str) -> bool:
        return name in self.header

    def array(self, name: str) -> np.ndarray:
        """The named array, memory-mapped read-only (shape and dtype from the header)."""
        if name not in self._maps:
            if name not in self.header:
                raise ResiDualError(f"{self.path}: no tensor {name!r}")
            h = self.header[name]
            dtype, shape = np.dtype(_DTYPES[h["dtype"]]).newbyteorder("<"), tuple(h["shape"])
            begin, end = h["data_offsets"]
            if end == begin:
                self._maps[name] = np.zeros(shape, dtype)
            else:
                self._maps[name] = np.memmap(self.path, dtype=dtype, mode="r", offset=self.data_start + begin, shape=shape)
        return self._maps[name]

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(np.array(self.array(k))) for k in self.header}


#: chunk files this process has read and found equal to their manifest's sha256: (path, inode, size, mtime)
_CHECKED: set[tuple] = set()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def chunk_path(root: Path, k: int) -> Path:
    return Path(root) / CHUNKS / f"{k:06d}.safetensors"


# -- reading a complete store ------------------------------------------------------------------

class DiskStore(EncodingSource):
    """A complete store opened for reading (see module docstring for the layout).

    Attributes:
        path: the store directory; meta: the manifest as a :class:`StoreMeta` (given as the validated
        raw manifest dict, whose integrity is checked against the files first); composition, readout (float32);
        labels (n,) int64; class_names; sample_ids (n,) list[str]; chunk_offsets (K+1,) first row of
        each chunk. Reads are lazy: only the rows (and, for ``features``, the unit) asked for are read.
    """

    def __init__(self, path: str | Path, meta: dict) -> None:
        from resi_dual.store import integrity

        self.path = Path(path)
        problems = integrity.manifest_problems(self.path, meta)
        if problems:
            raise integrity.fail(self.path, meta, MANIFEST, problems[0].removeprefix(MANIFEST + " "))
        self.meta = StoreMeta.from_dict(meta, str(self.path / MANIFEST))
        try:
            self.composition = Composition.from_json((self.path / COMPOSITION).read_text())
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise integrity.fail(self.path, meta, COMPOSITION, f"is missing or unreadable ({type(e).__name__})") from None
        try:
            self.readout = Readout.from_state_dict(ShardReader(self.path / READOUT).tensors()).to(torch.float32)
        except (ResiDualError, KeyError, ValueError):
            raise integrity.fail(self.path, meta, READOUT, "is missing or unreadable") from None
        self.class_names = list(meta["class_names"])
        self._manifest, self._unchecked = meta, set(range(len(meta["chunks"])))
        self._shards: list[ShardReader] = []
        labels, ids, counts = [], [], []
        code = _CODES[np.dtype(STORE_DTYPES.get(meta["dtype"], np.float32))]
        for entry in meta["chunks"]:
            problem = integrity.chunk_problem(self.path / entry["file"], self.composition, code)
            if problem:
                raise integrity.fail(self.path, meta, entry["file"], problem)
            shard = ShardReader(self.path / entry["file"])
            rows = int(shard.header["labels"]["shape"][0])
            if rows != entry["rows"]:
                raise integrity.fail(self.path, meta, entry["file"], f"holds {rows} rows, the manifest says {entry['rows']}")
            self._shards.append(shard)
            labels.append(np.array(shard.array("labels")))
            ids.extend(json.loads(shard.metadata.get("sample_ids", "[]")))
            counts.append(rows)
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self.sample_ids = ids
        self.chunk_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        if len(ids) != len(self.labels):
            raise ResiDualError(f"store {self.path}: {len(ids)} sample ids for {len(self.labels)} rows")

    # -- reading -------------------------------------------------------------------------
    @property
    def split(self) -> str:
        return self.meta.split

    def _pieces(self, rows: np.ndarray | slice) -> Iterator[tuple[int, np.ndarray | slice, np.ndarray | slice]]:
        """(chunk, rows within the chunk, positions in the result) covering ``rows``."""
        if isinstance(rows, slice):
            start, stop, step = rows.indices(len(self))
            if step != 1:
                yield from self._pieces(np.arange(start, stop, step))
                return
            if stop <= start:
                return
            first = int(np.searchsorted(self.chunk_offsets, start, "right") - 1)
            k = first
            while k < len(self._shards) and self.chunk_offsets[k] < stop:
                a, b = max(start, self.chunk_offsets[k]), min(stop, self.chunk_offsets[k + 1])
                if b > a:
                    off = self.chunk_offsets[k]
                    yield k, slice(int(a - off), int(b - off)), slice(int(a - start), int(b - start))
                k += 1
            return
        rows = np.asarray(rows, dtype=np.int64)
        which = np.searchsorted(self.chunk_offsets, rows, "right") - 1
        for k in np.unique(which):
            at = np.flatnonzero(which == k)
            yield int(k), rows[at] - self.chunk_offsets[k], at

    def _n_rows(self, rows) -> int:
        if isinstance(rows, slice):
            return len(range(*rows.indices(len(self))))
        return int(np.asarray(rows).size)

    def _gather(self, name: str, rows, select=None) -> torch.Tensor:
        """Rows of one stored array across chunks; ``select`` indexes the trailing axes."""
        n = self._n_rows(rows)
        out = None
        for k, local, at in self._pieces(rows):
            if k in self._unchecked:
                self._check_chunk(k)
            mm = self._shards[k].array(name)
            part = mm[local] if select is None else mm[(local, *select)]
            if out is None:
                out = np.empty((n, *part.shape[1:]), dtype=part.dtype)
            out[at] = part
        if out is None:  # no rows: shape from the first shard's header
            h = self._shards[0].header[name] if self._shards else {"shape": [0], "dtype": "F32"}
            shape = tuple(h["shape"][1:])
            if select is not None:
                shape = np.zeros(shape)[(*select,)].shape
            out = np.zeros((0, *shape), dtype=_DTYPES[h["dtype"]])
        return torch.from_numpy(out)

    def _check_chunk(self, k: int) -> None:
        """The first read of chunk ``k`` in this process: its sha256 against the manifest's, so flipped
        data bytes are an error naming the chunk, not silently wrong results (``RESI_DUAL_CHECK_READS=0``
        skips it)."""
        self._unchecked.discard(k)
        entry = self._manifest["chunks"][k]
        path = self.path / entry["file"]
        st = path.stat()
        key = (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns)
        if not entry.get("sha256") or key in _CHECKED or os.environ.get("RESI_DUAL_CHECK_READS", "1") == "0":
            return
        if file_sha256(path) != entry["sha256"]:
            from resi_dual.store import integrity

            self._unchecked.add(k)
            raise integrity.fail(self.path, self._manifest, entry["file"],
                                 "does not match its sha256 checksum in the manifest (corrupted; found on reading "
                                 f"it, `resi-dual verify {self.path}` checks every chunk)")
        _CHECKED.add(key)

    def _read_raw(self, rows):
        return tuple(self._gather(name, rows) for name in ("dense", "heads", "mu", "sigma", "output"))

    def features(self, unit: Unit | str | int, rows=None, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """(n', d_in+2) ``[x_u/σ, 1/σ, μ/σ]`` of one unit, reading only that unit's columns."""
        i = unit if isinstance(unit, int) else self.composition.index(unit)
        u = self.composition.units[i]
        r = self._rows(rows)
        if u.kind == "head":
            x = self._gather("heads", r, (u.layer, u.head))
        else:
            x = self._gather("dense", r, (self.composition.dense_slot(u),))
        mu, sigma = self._gather("mu", r).to(dtype), self._gather("sigma", r).to(dtype)
        x = x.to(dtype)
        return torch.cat([x / sigma[:, None], (1.0 / sigma)[:, None], (mu / sigma)[:, None]], dim=1)

    def iter_units(self, units=None, rows=None, dtype: torch.dtype = torch.float64) -> Iterator[tuple[Unit, torch.Tensor]]:
        """``(unit, features)`` for each selected unit in turn (memory: one unit at a time)."""
        for i in self.composition.select(units):
            yield self.composition.units[i], self.features(i, rows, dtype)

    def verify(self) -> dict:
        """The full check (reads the whole store): see :func:`resi_dual.store.integrity.verify_store`."""
        from resi_dual.store.integrity import verify_store

        return verify_store(self.path)

    def __repr__(self) -> str:
        m = self.meta
        return (f"DiskStore({str(self.path)!r}, model={m.model_spec!r}, dataset={m.dataset_spec!r}, "
                f"split={m.split!r}, n={len(self)}, dtype={m.plan.dtype})")


def read_manifest(path: Path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise ResiDualError(f"store {path} {'is a file, not a store directory' if path.exists() else 'does not exist'}")
    mf = path / MANIFEST
    if not mf.exists():
        if (path / PLAN).exists():
            raise ResiDualError(f"store {path} is incomplete (encoding stopped before it finished); "
                                "run the same `resi-dual encode` command again to resume it")
        raise ResiDualError(f"{path} is not a resi-dual store (no {MANIFEST})")
    try:
        meta = json.loads(mf.read_text())
    except ValueError as e:
        raise ResiDualError(f"{mf} is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise ResiDualError(f"{path} is not a resi-dual store ({MANIFEST} has format {meta.get('format')!r})")
    if int(meta.get("format_version", 0)) > FORMAT_VERSION:
        raise ResiDualError(f"store {path} has format version {meta['format_version']}; this resi-dual reads ≤ {FORMAT_VERSION}")
    from resi_dual.store.integrity import REQUIRED_KEYS, fail

    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise fail(path, meta, MANIFEST, f"lacks {', '.join(missing)}")
    return meta


def open_store(path: str | Path, model=None, split: str | None = None, dataset: str | None = None,
               verify: bool = False) -> DiskStore:
    """Open a complete store; optionally insist on the model, split or dataset it must hold.

    Args:
        model: a spec string, or a loaded model (its ``weights_hash()`` and composition are compared).
        split, dataset: the split (``train``/``val``/``test``) and dataset spec or name expected.
        verify: check every chunk's sha256 against the manifest.
    Raises:
        ResiDualError naming the mismatch; nothing is modified.
    """
    path = Path(path)
    raw = read_manifest(path)
    meta = StoreMeta.from_dict(raw, str(path / MANIFEST))
    if split is not None and meta.split != split:
        raise ResiDualError(f"store {path} holds the {meta.split!r} split, not {split!r}")
    if dataset is not None and dataset not in (meta.dataset_spec, meta.dataset_name):
        raise ResiDualError(f"store {path} holds dataset {meta.dataset_spec!r}, not {dataset!r}")
    if model is not None:
        if isinstance(model, str):
            if model != meta.model_spec:
                raise ResiDualError(f"store {path} was encoded with model {meta.model_spec!r}, not {model!r}")
        else:
            h = model.weights_hash()
            if h != meta.weights_hash:
                raise ResiDualError(
                    f"store {path} was encoded with model {meta.model_spec!r} (weights {meta.weights_hash[:12]}), "
                    f"not {getattr(model, 'spec', '?')!r} (weights {h[:12]})")
    store = DiskStore(path, raw)
    if model is not None and not isinstance(model, str) and not store.composition.same_model(model.composition):
        raise ResiDualError(f"store {path}: the model's unit layout or convention differs from the store's")
    if verify:
        store.verify()
    return store
