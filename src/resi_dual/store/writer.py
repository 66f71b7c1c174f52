"""Encode a dataset split into an on-disk store: resumable after any crash, shardable across processes.

Protocol (the reason a SIGKILL at any point loses nothing and a rerun gives the same bytes):

1. The *plan* — model spec and weights hash, dataset spec/name, split, limit, the planned samples'
   fingerprint, dtype, chunk size, batch size — is fixed before any work. ``plan.json``,
   ``composition.json`` and ``readout.safetensors`` are written first (each atomically). A directory
   that holds another plan, or anything that is not a store, is refused untouched.
2. Chunk ``k`` always covers plan positions ``[k·C, (k+1)·C)`` and is traced in the same batches
   (``batch_size`` rows, never straddling a chunk), so its bytes do not depend on which run, process
   or resume wrote it. Each chunk is written to a temporary name, fsynced and renamed: a chunk file
   that exists is complete. A rerun skips existing chunks and deletes stale temporaries.
3. With ``world_size`` K (torch.distributed, gloo), rank r encodes the chunks with ``k ≡ r (mod K)``;
   after all ranks report, rank 0 writes ``manifest.json`` (atomically, last). Its presence marks
   the store complete.

Device: the model runs wherever its weights are (``load_model(..., device=...)``, ``--device``);
pixel batches are moved there just before the forward and the encodings come back to the CPU
before anything is written. The device is recorded in the manifest (``run.device``) but is not part
of the plan, like the number of workers.

Bad images: by default the first unreadable image aborts the run with its path before its chunk is
written (chunks already written are complete and kept); with ``skip_bad`` such images are left out
of their chunk and listed in the manifest. ``skip_bad`` is not part of the plan, so a failed run can be
resumed with it.

This module plans, resumes and finishes a store; :mod:`resi_dual.store.chunks` traces and writes the chunks.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from resi_dual.data.base import ImageDataset
from resi_dual.core.progress import ProgressArg
from resi_dual.errors import ResiDualError
from resi_dual.files import ensure_out_dir, os_error_line
from resi_dual.store.chunks import device_of, run_chunks
from resi_dual.store.integrity import check_written_chunks, chunk_hashes, recheck_complete, release_lock, take_lock
from resi_dual.store.disk import (
    CHUNKS, COMPOSITION, MANIFEST, PLAN, READOUT, ShardReader, StoreDtype, atomic_write, chunk_path, json_bytes,
    read_manifest,
)
from resi_dual.store.meta import Plan, StoreMeta
from resi_dual.store.plan import make_plan, prepare_dir


@dataclass
class EncodeConfig:
    """How to encode; everything except ``workers``, ``skip_bad``, ``progress`` and ``data_root`` is part of the plan."""

    limit: int | None = None  # first N of the class-proportional order (data.splits.stratified_limit)
    batch_size: int = 64  # images per forward pass; fixed per plan because it can change low-order bits
    dtype: StoreDtype = "float16"  # storage of the raw dense/head encodings; μ, σ and outputs stay float32
    chunk_rows: int = 1024  # rows per chunk file
    workers: int = 0  # DataLoader worker processes for decoding and preprocessing
    skip_bad: bool = False  # leave unreadable images out (listed in the manifest) instead of failing
    progress: ProgressArg = True  # a progress display on rank 0 (docs/DESIGN.md §14)
    data_root: str | None = None  # recorded in the manifest (run.data_root) so later stages can reload the data


# -- process group ------------------------------------------------------------------------------

class Group:
    """The processes encoding one store: ``rank`` of ``world_size``; a single process by default."""

    def __init__(self) -> None:
        import torch.distributed as dist

        self.dist = dist if dist.is_available() and dist.is_initialized() else None
        self.rank = self.dist.get_rank() if self.dist else 0
        self.world_size = self.dist.get_world_size() if self.dist else 1

    def broadcast(self, obj):
        """``obj`` from rank 0, on every rank."""
        if not self.dist:
            return obj
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, on every rank (also a barrier)."""
        if not self.dist:
            return [obj]
        out = [None] * self.world_size
        self.dist.all_gather_object(out, obj)
        return out


# -- planning -----------------------------------------------------------------------------------

def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for dist in ("resi-dual", "torch", "transformers", "open_clip_torch", "numpy", "safetensors", "pillow", "datasets"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def finalize(out: Path, plan: Plan, extra: dict) -> StoreMeta:
    """Check that every chunk exists and write ``manifest.json`` (atomically, last)."""
    chunks, skipped, rows = [], [], 0
    trace_err = storage_err = 0.0
    for k in range(plan.n_chunks):
        path = chunk_path(out, k)
        if not path.exists():
            raise ResiDualError(f"chunk {path.name} is missing; run the same command again to finish the store")
        shard = ShardReader(path)
        r = int(shard.header["labels"]["shape"][0])
        whole, data, recorded = chunk_hashes(path)  # chunks other ranks wrote are checked here
        if recorded is not None and data != recorded:
            path.unlink()
            raise ResiDualError(f"chunk {path} was corrupted after it was written (its data does not match its "
                                "header's hash); it was removed — run the same command again to re-encode it")
        chunks.append({"file": f"{CHUNKS}/{path.name}", "rows": r, "sha256": whole})
        skipped.extend(json.loads(shard.metadata.get("skipped", "[]")))
        trace_err = max(trace_err, float(shard.metadata.get("max_trace_error", 0.0)))
        storage_err = max(storage_err, float(shard.metadata.get("max_storage_error", 0.0)))
        rows += r
    if rows + len(skipped) != plan.n_planned:
        raise ResiDualError(f"store {out}: {rows} rows + {len(skipped)} skipped ≠ {plan.n_planned} planned")
    manifest = plan.to_dict()
    manifest.update({
        "n_samples": rows,
        "chunks": chunks,
        "skipped": skipped,
        "max_trace_error": trace_err,
        "max_storage_error": storage_err,
        "versions": _versions(),
        "files": {"plan": PLAN, "composition": COMPOSITION, "readout": READOUT},
    })
    manifest.update(extra)
    atomic_write(out / MANIFEST, json_bytes(manifest))
    return StoreMeta.from_dict(manifest)


def encode_store(model, dataset: ImageDataset, out: str | Path, cfg: EncodeConfig | None = None,
                 group: Group | None = None, log: Callable[[str], None] | None = None) -> StoreMeta:
    """Encode ``dataset`` through ``model`` into the store at ``out`` (create, resume or no-op).

    Args:
        model: a traced model (``spec``, ``composition``, ``readout``, ``preprocess``, ``trace``,
            ``weights_hash``), e.g. from ``resi_dual.load_model``.
        dataset: an :class:`ImageDataset` (one split).
        out: the store directory.
        group: the processes sharing the work (default: this process alone).
    Returns:
        the store's :class:`StoreMeta` (on every rank).
    """
    cfg = cfg or EncodeConfig()
    group = group or Group()
    log = log or (lambda msg: None)
    out = Path(out)
    held: list[Path] = []
    try:
        return _encode(model, dataset, out, cfg, group, log, held)
    finally:
        for lock in held:
            release_lock(lock)


def _shared_error(e: Exception, group: Group) -> str:
    """Rank 0's failure as the status every rank raises. Not broadcast, it left the other ranks waiting
    in the broadcast until rank 0 exited, then dying with gloo's "Connection reset by peer" instead of
    the reason; a single process re-raises it as is."""
    if isinstance(e, ResiDualError):
        return f"error: {e}"
    if group.world_size == 1:
        raise e
    return f"error: {os_error_line(e) if isinstance(e, OSError) else f'{type(e).__name__}: {e}'}"


def _encode(model, dataset, out: Path, cfg: EncodeConfig, group: Group, log, held: list) -> StoreMeta:
    """encode_store's work; rank 0 appends the write lock it takes to ``held``."""
    t0 = time.perf_counter()
    plan, indices, ids = make_plan(model, dataset, cfg)
    status = None
    if group.rank == 0:
        try:
            held.append(take_lock(ensure_out_dir(out)))
            status = prepare_dir(out, plan, model)
            problem = recheck_complete(out, model.composition) if status == "complete" else None
            if problem:  # the manifest is removed: finish the store again
                log(problem)
                status = prepare_dir(out, plan, model)
            if status == "resume":
                for msg in check_written_chunks(out, plan.to_dict(), model.composition):
                    log(msg)
        except Exception as e:  # noqa: BLE001 - the other ranks wait in the broadcast below
            status = _shared_error(e, group)
    status = group.broadcast(status)
    if status.startswith("error: "):
        raise ResiDualError(status[len("error: "):])
    if status == "complete":
        log(f"{out} is already complete ({plan.n_planned} planned samples); nothing to do")
        return StoreMeta.from_dict(read_manifest(out))
    if status == "resume" and group.rank == 0:
        have = sum(chunk_path(out, k).exists() for k in range(plan.n_chunks))
        log(f"resuming {out}: {have} of {plan.n_chunks} chunks already written")
    error, done = None, 0
    try:
        done = run_chunks(model, dataset, indices, ids, out, cfg, group, plan)
    except ResiDualError as e:
        error = str(e)
    except Exception as e:  # noqa: BLE001 - the other ranks must hear about it before we re-raise
        if group.world_size == 1:
            raise
        error = f"{type(e).__name__}: {e}"
    reports = group.gather({"rank": group.rank, "error": error, "done": done})
    errors = [r["error"] for r in reports if r["error"]]
    if errors:
        raise ResiDualError(errors[0] if group.world_size == 1 else f"rank {reports[[r['error'] for r in reports].index(errors[0])]['rank']}: {errors[0]}")
    seconds = time.perf_counter() - t0
    traced = sum(r["done"] for r in reports)
    manifest = None
    if group.rank == 0:
        try:
            manifest = finalize(out, plan, {
                "timing": {"finished_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                           "seconds": round(seconds, 3), "images_traced_this_run": traced,
                           "images_per_second": round(traced / seconds, 2) if seconds > 0 else None},
                "run": {"world_size": group.world_size, "workers": cfg.workers, "skip_bad": cfg.skip_bad,
                        "device": str(device_of(model)),
                        "data_root": str(Path(cfg.data_root).expanduser().resolve()) if cfg.data_root else None,
                        "resumed": status == "resume", "argv": sys.argv[1:]},
            })
            status = "ok"
        except Exception as e:  # noqa: BLE001 - the other ranks wait in the broadcast below
            status = _shared_error(e, group)
    status = group.broadcast(status)
    if status.startswith("error: "):
        raise ResiDualError(status[len("error: "):])
    return manifest if manifest is not None else StoreMeta.from_dict(read_manifest(out))
