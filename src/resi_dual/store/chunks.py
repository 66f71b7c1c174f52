"""The chunks of a store (the protocol is in :mod:`resi_dual.store.writer`): this rank's missing chunks are
traced batch by batch (images read and preprocessed in DataLoader workers) and each is written as one
safetensors file, atomically, with its sample ids, skipped images and largest trace and storage errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from resi_dual.core.encodings import UnitEncodings, relative_error
from resi_dual.core.progress import task
from resi_dual.data.base import BadImageError, ImageDataset
from resi_dual.errors import ResiDualError
from resi_dual.store.disk import STORE_DTYPES, atomic_write, chunk_path, safetensors_bytes
from resi_dual.store.integrity import DATA_HASH
from resi_dual.store.meta import Plan

if TYPE_CHECKING:
    from resi_dual.store.writer import EncodeConfig, Group


class _Items(torch.utils.data.Dataset):
    """Plan position → (position, PIL RGB image) or (position, BadImageError)."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray) -> None:
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, pos: int):
        try:
            return pos, self.dataset.image(int(self.indices[pos]))
        except BadImageError as e:
            return pos, e


class _Preprocess:
    """Collate: preprocess a batch's readable images in one call (batched image processors are ~2.5×
    faster than per image); if that fails, per image, so the bad one is named. Runs in the
    DataLoader workers. Returns [(position, pixels (1,3,S,S) or BadImageError)]."""

    def __init__(self, dataset: ImageDataset, indices: np.ndarray, preprocess: Callable) -> None:
        self.dataset, self.indices, self.preprocess = dataset, indices, preprocess

    def __call__(self, items):
        good = [(pos, x) for pos, x in items if not isinstance(x, BadImageError)]
        pixels: dict[int, object] = {}
        try:
            if good:
                batch = self.preprocess([im for _, im in good])
                pixels.update({pos: batch[j:j + 1] for j, (pos, _) in enumerate(good)})
        except (OSError, ValueError):
            for pos, im in good:
                try:
                    pixels[pos] = self.preprocess([im])
                except (OSError, ValueError) as e:
                    pixels[pos] = BadImageError(self.dataset.describe(int(self.indices[pos])), str(e))
        return [(pos, x if isinstance(x, BadImageError) else pixels[pos]) for pos, x in items]


def _chunk_batches(k: int, n: int, cfg: EncodeConfig) -> list[list[int]]:
    start, stop = k * cfg.chunk_rows, min((k + 1) * cfg.chunk_rows, n)
    return [list(range(a, min(a + cfg.batch_size, stop))) for a in range(start, stop, cfg.batch_size)]


def _relative_error(model, enc: UnitEncodings) -> float:
    """max over the batch of ``‖Σ_u c_u − output‖ / ‖output‖``. Uses the tracer's summed readout
    (linear: raw terms summed first, two GEMMs) when it has one, else the per-unit float64 reference."""
    if not len(enc):
        return 0.0
    summed = getattr(model, "summed_contributions", None)
    if summed is None:
        return float(enc.relative_error().max())
    return float(relative_error(summed(enc), enc.output).max())


def _write_chunk(out: Path, k: int, parts: list[dict], skipped: list[dict], dtype: str, comp) -> None:
    np_dtype = STORE_DTYPES[dtype]
    L, H, d_out = comp.n_layers, comp.n_heads, comp.d_out

    def cat(name, shape, dt):
        arrs = [p[name] for p in parts]
        return np.concatenate(arrs).astype(dt) if arrs else np.zeros((0, *shape), dt)

    tensors = {
        "dense": cat("dense", (comp.dense_slots, comp.width("mlp")), np_dtype),
        "heads": cat("heads", (L, H, comp.width("head")), np_dtype),
        "mu": cat("mu", (), np.float32),
        "sigma": cat("sigma", (), np.float32),
        "output": cat("output", (d_out,), np.float32),
        "labels": cat("labels", (), np.int64),
        "dataset_index": cat("dataset_index", (), np.int64),
    }
    ids = [s for p in parts for s in p["ids"]]
    meta = {
        "chunk": str(k),
        "sample_ids": json.dumps(ids, ensure_ascii=False),
        "skipped": json.dumps(skipped, ensure_ascii=False, sort_keys=True),
        "max_trace_error": repr(max([p["trace_error"] for p in parts], default=0.0)),
        "max_storage_error": repr(max([p["storage_error"] for p in parts], default=0.0)),
    }
    atomic_write(chunk_path(out, k), safetensors_bytes(tensors, meta, data_hash_key=DATA_HASH))


def _encode_batch(model, items, dataset, indices, ids, cfg, comp) -> tuple[dict | None, list[dict]]:
    """Trace one batch; returns (arrays for the good rows or None, skipped records)."""
    good, skipped = [], []
    for pos, x in items:
        if isinstance(x, BadImageError):
            if not cfg.skip_bad:
                raise ResiDualError(f"{x} — rerun with --skip-bad to leave it out (chunks written so far are kept)")
            skipped.append({"position": int(pos), "sample_id": ids[pos], "where": x.where, "reason": x.reason})
        else:
            good.append((pos, x))
    if not good:
        return None, skipped
    pos = [p for p, _ in good]
    pixels = torch.cat([x for _, x in good]).to(device_of(model), non_blocking=True)  # (b, 3, S, S)
    enc = model.trace(pixels, check=True)  # encodings on the CPU
    np_dtype = STORE_DTYPES[cfg.dtype]
    dense = enc.dense.detach().cpu().numpy().astype(np_dtype)
    heads = enc.heads.detach().cpu().numpy().astype(np_dtype)
    if not (np.isfinite(dense).all() and np.isfinite(heads).all()):
        raise ResiDualError(f"encodings overflow {cfg.dtype} (or are not finite) at sample {ids[pos[0]]}…; use --dtype float32")
    trace_error = _relative_error(model, enc)
    if cfg.dtype == "float32":
        storage_error = trace_error  # stored as traced
    else:
        stored = UnitEncodings(comp, enc.readout, torch.from_numpy(dense).float(), torch.from_numpy(heads).float(),
                               enc.mu, enc.sigma, enc.output)
        storage_error = _relative_error(model, stored)
    sel = indices[pos]
    return {
        "dense": dense, "heads": heads,
        "mu": enc.mu.detach().cpu().numpy().astype(np.float32),
        "sigma": enc.sigma.detach().cpu().numpy().astype(np.float32),
        "output": enc.output.detach().cpu().numpy().astype(np.float32),
        "labels": dataset.labels[sel].astype(np.int64),
        "dataset_index": sel.astype(np.int64),
        "ids": [ids[p] for p in pos],
        "trace_error": trace_error,
        "storage_error": storage_error,
    }, skipped


def device_of(model) -> torch.device:
    """Where ``model`` runs (a traced model's ``device``; CPU for objects without one)."""
    return torch.device(getattr(model, "device", None) or "cpu")


def run_chunks(model, dataset, indices, ids, out: Path, cfg: EncodeConfig, group: Group, plan: Plan) -> int:
    """Encode this rank's missing chunks; returns the number of images traced."""
    comp = model.composition
    n = len(indices)
    mine = [k for k in range(plan.n_chunks) if k % group.world_size == group.rank and not chunk_path(out, k).exists()]
    batches = [b for k in mine for b in _chunk_batches(k, n, cfg)]
    if not batches:
        return 0
    loader = torch.utils.data.DataLoader(
        _Items(dataset, indices), batch_sampler=batches, num_workers=cfg.workers,
        collate_fn=_Preprocess(dataset, indices, model.preprocess), persistent_workers=False,
        pin_memory=device_of(model).type == "cuda",  # page-locked batches copy to the GPU asynchronously
    )
    total = sum(len(b) for b in batches)
    description = f"encode {dataset.name}/{dataset.split}" + (f" [rank 0 of {group.world_size}]" if group.world_size > 1 else "")
    parts: list[dict] = []
    skipped: list[dict] = []
    current = None
    done = 0
    with task(cfg.progress and group.rank == 0, description, total, unit="img", keep=True) as step:
        for items in loader:
            k = items[0][0] // cfg.chunk_rows
            if current is not None and k != current:
                _write_chunk(out, current, parts, skipped, cfg.dtype, comp)
                parts, skipped = [], []
            current = k
            arrays, bad = _encode_batch(model, items, dataset, indices, ids, cfg, comp)
            if arrays is not None:
                parts.append(arrays)
            skipped.extend(bad)
            done += len(items)
            step(len(items))
        if current is not None:
            _write_chunk(out, current, parts, skipped, cfg.dtype, comp)
    return done
