"""The plan of an encode run (what is fixed before any work) and the output folder checked against it.

See :mod:`resi_dual.store.writer` for the protocol; a folder that holds another plan, or anything
that is not a store, is refused untouched.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from resi_dual.data.base import ImageDataset
from resi_dual.data.splits import stratified_limit
from resi_dual.errors import ResiDualError
from resi_dual.files import ensure_out_dir, remove_dead_temporaries
from resi_dual.store.disk import (
    CHUNKS, COMPOSITION, FORMAT, MANIFEST, PLAN, READOUT, STORE_DTYPES, atomic_write, is_tmp, json_bytes,
    safetensors_bytes,
)
from resi_dual.store.integrity import LOCK
from resi_dual.store.meta import Plan

if TYPE_CHECKING:
    from resi_dual.store.writer import EncodeConfig


def preprocessing_fingerprint(model) -> dict:
    """Image size plus a sha256 of the model's preprocessing applied to a fixed synthetic image: a
    change of resize, crop or normalisation changes it, so a resume cannot mix two pipelines."""
    from PIL import Image

    y, x = np.mgrid[0:29, 0:37]
    probe = np.stack([x * 7 % 256, y * 9 % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    pixels = model.preprocess([Image.fromarray(probe, mode="RGB")])
    arr = pixels.detach().cpu().float().numpy()
    return {"image_size": int(getattr(model, "image_size", 0) or arr.shape[-1]), "pixel_shape": list(arr.shape[1:]),
            "probe_sha256": hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest(),
            "probe_mean": round(float(arr.mean()), 6), "probe_std": round(float(arr.std()), 6)}


def make_plan(model, dataset: ImageDataset, cfg: EncodeConfig) -> tuple[Plan, np.ndarray, list[str]]:
    """(plan, planned dataset indices (N,), their sample ids)."""
    if cfg.dtype not in STORE_DTYPES:
        raise ResiDualError(f"--dtype must be one of {', '.join(STORE_DTYPES)}, got {cfg.dtype!r}")
    if cfg.chunk_rows < 1 or cfg.batch_size < 1:
        raise ResiDualError("chunk rows and batch size must be positive")
    if cfg.workers < 0:
        raise ResiDualError(f"--workers must be 0 (decode in this process) or more, got {cfg.workers}")
    if cfg.limit is not None and cfg.limit < 1:
        raise ResiDualError(f"--limit must be positive, got {cfg.limit}")
    indices = stratified_limit(dataset.labels, cfg.limit)
    if len(indices) == 0:
        raise ResiDualError(f"{dataset.spec} [{dataset.split}] has no samples")
    ids = [dataset.sample_id(int(i)) for i in indices]
    labels = dataset.labels[indices]
    h = hashlib.sha256()
    for sid, lab in zip(ids, labels):
        h.update(f"{sid}\t{int(lab)}\n".encode())
    comp = model.composition
    plan = Plan(
        model_spec=model.spec, weights_hash=model.weights_hash(), family=comp.family, convention=comp.convention,
        preprocessing=preprocessing_fingerprint(model), dataset_spec=dataset.spec, dataset_name=dataset.name,
        split=dataset.split, class_names=tuple(dataset.class_names), limit=cfg.limit, n_planned=int(len(indices)),
        samples_sha256=h.hexdigest(), dtype=cfg.dtype, chunk_rows=int(cfg.chunk_rows), batch_size=int(cfg.batch_size),
        n_chunks=int(-(-len(indices) // cfg.chunk_rows)),
    )
    return plan, indices, ids


def _diff(a: dict, b: dict) -> list[str]:
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k)!r} (store) vs {b.get(k)!r} (now)" for k in keys if a.get(k) != b.get(k)]


def prepare_dir(out: Path, plan: Plan, model) -> str:
    """Check ``out`` and write the plan files. Returns ``new``, ``resume`` or ``complete``."""
    out = ensure_out_dir(out)
    entries = [p for p in out.iterdir() if not is_tmp(p) and p.name != LOCK]
    state = "new"
    if (out / PLAN).exists():
        try:
            old = json.loads((out / PLAN).read_text())
        except ValueError:
            raise ResiDualError(f"{out} holds a {PLAN} that is not valid JSON; refusing to write there") from None
        if old.get("format") != FORMAT:
            raise ResiDualError(f"{out} holds a {PLAN} that is not a resi-dual plan; refusing to write there")
        diffs = _diff(old, plan.to_dict())
        if diffs:
            raise ResiDualError(f"{out} holds a store of a different job ({'; '.join(diffs[:3])}); "
                                "nothing was changed — choose another --out")
        state = "complete" if (out / MANIFEST).exists() else "resume"
    elif entries:
        names = ", ".join(sorted(p.name for p in entries)[:3])
        raise ResiDualError(f"{out} is not empty and is not a resi-dual store (holds {names}…); refusing to write there")
    if state == "complete":
        return state  # checked by integrity.recheck_complete
    # remove what killed runs left half-written: temporaries of writers that are no longer running
    for folder in (out, out / CHUNKS):
        remove_dead_temporaries(folder)
    comp_bytes = model.composition.to_json().encode()
    readout_bytes = safetensors_bytes({k: v.detach().cpu().float().numpy() for k, v in model.readout.state_dict().items()})
    if state == "new" or not (out / PLAN).exists():
        atomic_write(out / PLAN, json_bytes(plan.to_dict()))
    for name, data in ((COMPOSITION, comp_bytes), (READOUT, readout_bytes)):
        target = out / name
        if target.exists():
            if target.read_bytes() != data:
                raise ResiDualError(f"{target} differs from what this model gives although the plan matches; "
                                    "refusing to mix them — choose another --out")
        else:
            atomic_write(target, data)
    (out / CHUNKS).mkdir(exist_ok=True)
    return state
