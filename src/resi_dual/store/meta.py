"""Typed records of a store: its :class:`Plan` (``plan.json``, the job's identity) and its
:class:`StoreMeta` (``manifest.json``: the plan plus what the run produced).

Both round-trip through the flat JSON objects that docs/STORE.md specifies, so stores written before
these records existed read unchanged. Keys this version does not know are kept (``extra``) and
written back, so a newer store's manifest survives a round trip through an older reader.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from resi_dual.errors import ResiDualError

FORMAT = "resi-dual-store"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Plan:
    """What a store holds, fixed before any work; a rerun with another plan is refused."""

    model_spec: str  # the spec the model was loaded from
    weights_hash: str  # sha256 of the tensors that determine the image embedding
    family: str  # tracer family
    convention: str  # bias / LayerNorm sharing convention of the decomposition
    preprocessing: dict  # image size and a probe image's fingerprint (plan.preprocessing_fingerprint)
    dataset_spec: str  # what load_dataset accepted
    dataset_name: str  # canonical dataset name (data.names)
    split: str  # train, val or test
    class_names: tuple[str, ...]  # names of labels 0..C-1
    limit: int | None  # stratified cap on samples (None: all)
    n_planned: int  # samples planned
    samples_sha256: str  # sha256 of the planned "sample_id<TAB>label" lines
    dtype: str  # storage of the raw dense/head encodings
    chunk_rows: int  # rows per chunk file
    batch_size: int  # images per traced batch
    n_chunks: int  # chunk files
    format: str = FORMAT
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["class_names"] = list(self.class_names)
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "plan") -> "Plan":
        missing = [f.name for f in fields(cls) if f.name not in d and f.name not in ("format", "format_version")]
        if missing:
            raise ResiDualError(f"{where}: missing {missing[0]!r}")
        kwargs = {f.name: d[f.name] for f in fields(cls) if f.name in d}
        kwargs["class_names"] = tuple(kwargs["class_names"])
        return cls(**kwargs)


@dataclass(frozen=True)
class Chunk:
    """One chunk file of a complete store."""

    file: str  # path relative to the store
    rows: int  # rows it holds
    sha256: str  # of the whole file


@dataclass(frozen=True)
class StoreMeta:
    """What an encoding source records about itself. A complete disk store fills everything from its
    manifest; an in-memory source fills what it knows (the identity fields) and leaves the rest None.
    """

    model_spec: str | None = None
    weights_hash: str | None = None
    dataset_spec: str | None = None
    dataset_name: str | None = None
    split: str | None = None
    plan: Plan | None = None  # the plan of a disk store (its identity fields equal the ones above)
    n_samples: int | None = None  # rows written (planned minus skipped bad images)
    chunks: tuple[Chunk, ...] = ()
    skipped: tuple[dict, ...] = ()  # bad images left out: position, sample_id, where, reason
    max_trace_error: float | None = None  # worst ‖Σ c_u − output‖ / ‖output‖ when traced
    max_storage_error: float | None = None  # the same after rounding to the store dtype
    versions: dict = field(default_factory=dict)  # python and library versions of the run
    files: dict = field(default_factory=dict)  # names of the plan, composition and readout files
    timing: dict = field(default_factory=dict)  # when and how fast (may differ between runs of a plan)
    run: dict = field(default_factory=dict)  # world size, workers, device, data_root, argv … (idem)
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept for the round trip

    _IDENTITY = ("model_spec", "weights_hash", "dataset_spec", "dataset_name", "split")

    @classmethod
    def from_plan(cls, plan: Plan, **manifest: Any) -> "StoreMeta":
        return cls(**{k: getattr(plan, k) for k in cls._IDENTITY}, plan=plan, **manifest)

    def identity(self) -> dict:
        """The identity fields that are known (model, weights, dataset, split)."""
        return {k: getattr(self, k) for k in self._IDENTITY if getattr(self, k) is not None}

    @property
    def data_root(self) -> str | None:
        """Where a ``torchvision:`` dataset lived when the store was encoded."""
        return self.run.get("data_root")

    def to_dict(self) -> dict:
        """The flat manifest object (docs/STORE.md)."""
        d = dict(self.extra)
        d.update(self.plan.to_dict() if self.plan is not None else self.identity())
        if self.n_samples is not None:
            d.update(n_samples=self.n_samples, chunks=[c.__dict__.copy() for c in self.chunks],
                     skipped=[dict(s) for s in self.skipped], max_trace_error=self.max_trace_error,
                     max_storage_error=self.max_storage_error, versions=dict(self.versions), files=dict(self.files))
        for k in ("timing", "run"):
            if getattr(self, k):
                d[k] = dict(getattr(self, k))
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "manifest") -> "StoreMeta":
        """Read a manifest (or the partial dict of an in-memory source: only identity keys)."""
        plan = Plan.from_dict(d, where) if "format" in d else None
        known = set(cls._IDENTITY) | {f.name for f in fields(Plan)} | {
            "n_samples", "chunks", "skipped", "max_trace_error", "max_storage_error", "versions", "files", "timing", "run"}
        try:
            chunks = tuple(Chunk(c["file"], int(c["rows"]), c["sha256"]) for c in d.get("chunks", ()))
        except (KeyError, TypeError, ValueError):
            raise ResiDualError(f"{where}: a chunk entry lacks file, rows or sha256") from None
        return cls(
            **{k: d.get(k) for k in cls._IDENTITY}, plan=plan, n_samples=d.get("n_samples"), chunks=chunks,
            skipped=tuple(d.get("skipped", ())), max_trace_error=d.get("max_trace_error"),
            max_storage_error=d.get("max_storage_error"), versions=dict(d.get("versions") or {}),
            files=dict(d.get("files") or {}), timing=dict(d.get("timing") or {}), run=dict(d.get("run") or {}),
            extra={k: v for k, v in d.items() if k not in known},
        )
