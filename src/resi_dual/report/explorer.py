"""`explore`: a static site to browse every head — spectrum, text, images along each PC, spatial maps.

Inputs: a store (whose dataset can be reopened), optionally the ``analyze`` folder (bases and
intrinsic dimensions), the ``interpret`` folder (TextSpan/SOMP and PC poles), an adapter file (λ per
component), a specialization ``rankings.tsv`` and a ``similarity.tsv``. Without bases the PCA is
fitted here; sections whose inputs are missing are left out and the site says so. The site is built
in a temporary folder and swapped in whole (:func:`~resi_dual.report.outdir.staged_dir`); it is
refused when larger than :data:`MAX_SITE_BYTES`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from resi_dual.errors import ResiDualError
from resi_dual.report import explorer_pages as pages
from resi_dual.report.tables import read_table as _read_tsv

MAX_SITE_BYTES = 100 * 1024 * 1024
#: per-unit columns of ``analyze``'s id.tsv (or the grid's intrinsic-dim units.tsv) shown as measures
ID_MEASURES = {"linear_id": "linear ID", "twonn_id": "TwoNN ID", "ratio": "linear / TwoNN", "id_ratio": "linear / TwoNN",
               "pc1_ratio": "PC1 ratio", "participation_ratio": "participation ratio"}


@dataclass
class ExploreOptions:
    """What to show: units (a selection string), first ``pcs`` PCs, ``images`` top and bottom per PC."""

    units: str = "heads"
    pcs: int = 5
    images: int = 8
    thumb: int = 96
    batch_size: int = 32
    data_root: str | None = None
    device: str = "cpu"


@dataclass
class BuildStats:
    distinct_images: int = 0
    traced_images: int = 0
    trace_seconds: float = 0.0
    other_seconds: float = 0.0
    bytes: int = 0
    notes: list[str] = field(default_factory=list)
    phases: dict[str, float] = field(default_factory=dict)

    def lap(self, name: str, since: float) -> float:
        """Record the seconds since ``since`` under ``name``; returns now."""
        now = time.perf_counter()
        self.phases[name] = round(now - since, 3)
        return now


def _measures(comp, bases, id_table: Path | None, specialization: Path | None, similarity: Path | None,
              lambdas: dict, notes: list[str]) -> dict[str, dict[str, float]]:
    """measure -> unit label -> value, for the overview and the unit pages."""
    out: dict[str, dict[str, float]] = {
        "total variance": {lab: float(bases.total_variance[lab]) for lab in bases.labels},
        "PC1 share": {lab: float(bases.explained_variance_ratio(lab)[0]) for lab in bases.labels},
    }
    if id_table is not None and id_table.is_file():
        rows = _read_tsv(id_table, "--analysis id table", ("unit",))
        for col, name in ID_MEASURES.items():
            vals = {r["unit"]: float(r[col]) for r in rows if r.get(col) not in (None, "", "nan")}
            if vals:
                out[name] = vals
    else:
        notes.append("intrinsic dimensions (linear ID, TwoNN) left out: no --analysis folder with id.tsv")
    if specialization is not None:
        rows = _read_tsv(specialization, "--specialization", ("method", "head", "score"))
        first = rows[0].get("dataset") if rows else None
        out["specialization (S)"] = {r["head"]: float(r["score"]) for r in rows
                                     if r.get("method") == "S" and r.get("dataset") == first}
    else:
        notes.append("specialization scores left out: no --specialization rankings.tsv")
    if similarity is not None:
        rows = _read_tsv(similarity, "--similarity", ("unit", "similarity"))
        out["similarity"] = {r["unit"]: float(r["similarity"]) for r in rows}
    else:
        notes.append("similarity to a reference left out: no --similarity similarity.tsv")
    if lambdas:
        out["adapter mean λ"] = {lab: float(np.mean(v)) for lab, v in lambdas.items()}
    return out


def _descriptions(interpret: Path | None, notes: list[str]) -> tuple[dict, dict]:
    """({unit: [description rows]}, {(unit, pc): {pole: [texts]}}) from an ``interpret`` folder."""
    units: dict[str, list[dict]] = {}
    poles: dict[tuple[str, int], dict[str, list[str]]] = {}
    if interpret is None:
        notes.append("text descriptions left out: no --interpret folder")
        return units, poles
    for method in ("textspan", "somp"):
        p = interpret / f"{method}.tsv"
        if p.is_file():
            for r in _read_tsv(p, f"--interpret {method}.tsv", ("unit", "text", "step", "weight")):
                units.setdefault(r["unit"], []).append(
                    {"text": r["text"], "detail": f"{method} step {r['step']}, weight {float(r['weight']):.3g}"})
    p = interpret / "pc_descriptions.tsv"
    if p.is_file():
        for r in _read_tsv(p, "--interpret pc_descriptions.tsv", ("unit", "pc", "pole", "text")):
            poles.setdefault((r["unit"], int(r["pc"])), {}).setdefault(r["pole"], []).append(r["text"])
    if not units and not poles:
        notes.append(f"text descriptions left out: {interpret} has no textspan.tsv, somp.tsv or pc_descriptions.tsv")
    return units, poles


def _lambdas(adapter: Path | None, bases, notes: list[str]) -> dict[str, np.ndarray]:
    if adapter is None:
        notes.append("λ per component left out: no --adapter")
        return {}
    from resi_dual.adapters.adapter import Adapter

    ad = Adapter.load(adapter)
    if ad.provenance.get("basis_hash") not in (None, bases.content_hash()):
        notes.append(f"λ per component left out: {adapter} was trained on another PCA basis than the one shown")
        return {}
    weights = {lab: w.double().numpy() for lab, w in ad.component_weights().items()}
    if not weights:
        notes.append(f"λ per component left out: {adapter} does not scale components")
    return weights


def _bases(store, analysis: Path | None, labels: list[str], notes: list[str]):
    from resi_dual.spectral.bases import UnitBases
    from resi_dual.spectral.pca import UnitPCA

    if analysis is not None and not (analysis / "bases.safetensors").is_file():
        raise ResiDualError(f"--analysis {analysis} holds no bases.safetensors: give a `resi-dual analyze` folder")
    if analysis is not None:
        b = UnitBases.load(analysis / "bases.safetensors")
        if not b.composition.same_model(store.composition):
            raise ResiDualError(f"--analysis {analysis}: its bases were fitted on {b.composition.model_id!r}, "
                                f"not on the store's model {store.composition.model_id!r}")
        if all(lab in b.labels for lab in labels):
            return b
        notes.append("PCA fitted here: the --analysis bases do not cover the shown units")
    else:
        notes.append("PCA fitted here on the store (no --analysis bases.safetensors)")
    return UnitPCA(units=labels, progress=False).fit(store).bases_


def build_site(store_path, out, analysis=None, interpret=None, adapter=None, specialization=None,
               similarity=None, options: ExploreOptions | None = None, progress=None, id_table=None) -> BuildStats:
    """Write the explorer for ``store_path`` into ``out`` (complete or not at all); returns timings.

    ``id_table``: a per-unit intrinsic-dimension table (default ``analysis/id.tsv``)."""
    from resi_dual.data.reopen import reopen_images
    from resi_dual.models.loading import load_model, resolve_device
    from resi_dual.report.components import distinct_rows, rank_pc_images, trace_pc_maps
    from resi_dual.report.outdir import check_replaceable, staged_dir
    from resi_dual.store import open_store

    opt = options or ExploreOptions()
    if opt.pcs < 1 or opt.images < 1 or opt.thumb < 16 or opt.batch_size < 1:
        raise ResiDualError("--pcs, --images and --batch must be at least 1 and --thumb at least 16")
    check_replaceable(Path(out).resolve(), "index.html")  # before the work, not after it
    t0 = time.perf_counter()
    stats = BuildStats()
    notes = stats.notes
    paths = {k: (Path(v) if v else None) for k, v in
             dict(analysis=analysis, interpret=interpret, adapter=adapter, spec=specialization, sim=similarity).items()}
    for k, p in paths.items():
        if p is not None and not p.exists():
            raise ResiDualError(f"--{ {'spec': 'specialization', 'sim': 'similarity'}.get(k, k)}: no such path {p}")
    store = open_store(store_path)
    comp = store.composition
    labels = [comp.units[i].label for i in comp.select(opt.units)]
    bases = _bases(store, paths["analysis"], labels, notes)
    t = stats.lap("bases", t0)
    lambdas = _lambdas(paths["adapter"], bases, notes)
    ids = Path(id_table) if id_table else (paths["analysis"] / "id.tsv" if paths["analysis"] else None)
    measures = _measures(comp, bases, ids, paths["spec"], paths["sim"], lambdas, notes)
    descriptions, poles = _descriptions(paths["interpret"], notes)
    t = stats.lap("inputs", t)
    lists = rank_pc_images(store, bases, labels, opt.pcs, opt.images)
    rows = distinct_rows(lists)
    t = stats.lap("ranking", t)
    images = dict(zip(rows, reopen_images(store.meta, store.sample_ids, store.class_names,
                                          [store.sample_ids[r] for r in rows], opt.data_root)))
    stats.distinct_images = len(rows)
    t = stats.lap("reopen images", t)
    model = load_model(store.meta.model_spec, convention=comp.convention, device=resolve_device(opt.device))
    if store.meta.weights_hash and model.weights_hash() != store.meta.weights_hash:
        raise ResiDualError(f"model {store.meta.model_spec} now has other weights than when the store was encoded")
    t1 = stats.lap("load model", t)
    maps = trace_pc_maps(model, images, bases, lists, opt.batch_size, progress)
    stats.trace_seconds = time.perf_counter() - t1
    t = stats.lap("trace", t1)
    stats.traced_images = len({r for r, _label, _pc in maps})
    with staged_dir(out, "index.html") as tmp:
        _write(tmp, store, comp, bases, labels, lists, images, maps, measures, descriptions, poles, lambdas, notes, opt)
        stats.bytes = sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())
        stats.lap("thumbnails and pages", t)
        if stats.bytes > MAX_SITE_BYTES:
            raise ResiDualError(f"the site would take {stats.bytes / 2**20:.0f} MB (limit {MAX_SITE_BYTES // 2**20} MB); "
                                "lower --images, --pcs, --thumb or --units")
        stats.other_seconds = time.perf_counter() - t0 - stats.trace_seconds
        (tmp / "build.json").write_text(json.dumps({
            "distinct_images": stats.distinct_images, "traced_images": stats.traced_images, "trace_seconds": round(stats.trace_seconds, 3),
            "other_seconds": round(stats.other_seconds, 3), "bytes": stats.bytes, "notes": notes, "phases_seconds": stats.phases,
            "units": len(labels), "pcs": opt.pcs, "images": opt.images}, indent=1))
    return stats


def _write(tmp: Path, store, comp, bases, labels, lists, images, maps, measures, descriptions, poles, lambdas,
           notes, opt: ExploreOptions) -> None:
    from resi_dual.report.overlay import center_square, overlay

    (tmp / "img").mkdir()
    (tmp / "u").mkdir()
    (tmp / "style.css").write_text(pages.CSS)
    side = opt.thumb
    plain: dict[int, str] = {}
    squares: dict[int, object] = {}  # each image cropped and resized once, however many slots show it

    def square(row: int):
        if row not in squares:
            squares[row] = center_square(images[row], side)
        return squares[row]

    def thumb(row: int) -> str:
        if row not in plain:
            plain[row] = f"img/r{row}.jpg"
            square(row).save(tmp / plain[row], quality=85)
        return plain[row]

    by_unit: dict[str, list] = {}
    for p in lists:
        by_unit.setdefault(p.unit, []).append(p)
    is_head = {lab: comp.units[comp.index(lab)].kind == "head" for lab in labels}
    for label in labels:
        pcs = []
        n_k = len(by_unit[label])
        for p in by_unit[label]:
            k = p.pc + 1
            entries = {}
            if is_head[label]:
                scale = max(float(np.abs(maps[(r, label, p.pc)]).max()) for r in p.rows()) or None
                for r in set(p.rows()):
                    entries[r] = f"img/{label}-pc{k}-r{r}.jpg"
                    overlay(square(r), maps[(r, label, p.pc)], side, scale=scale).save(tmp / entries[r], quality=85)
            else:
                entries = {r: thumb(r) for r in set(p.rows())}
            lam = float(lambdas[label][p.pc]) if label in lambdas and p.pc < len(lambdas[label]) else None
            pole = poles.get((label, p.pc), {})
            ratio = float(bases.explained_variance_ratio(label)[p.pc])
            (tmp / "u" / f"{label}-pc{k}.html").write_text(pages.component_page(
                label, k, n_k, ratio, lam, pole, [(entries[r], c) for r, c in p.top],
                [(entries[r], c) for r, c in p.bottom], is_head[label], side, pooled=comp.pooled))
            pcs.append({"k": k, "ratio": ratio, "lambda": lam, "poles": pole, "href": f"{label}-pc{k}.html",
                        "preview": [(entries[r], c) for r, c in p.top[:4]]})
        ratios = [float(x) for x in bases.explained_variance_ratio(label)[:30]]
        unit_measures = {m: v[label] for m, v in measures.items() if label in v}
        (tmp / "u" / f"{label}.html").write_text(pages.unit_page(
            label, unit_measures, ratios, descriptions.get(label, []), pcs, [], side))
    head_measures = {m: {k: v for k, v in vals.items() if k in is_head and is_head[k]} for m, vals in measures.items()}
    head_measures = {m: v for m, v in head_measures.items() if v}
    default = next((m for m in ("linear ID", "specialization (S)") if m in head_measures), next(iter(head_measures), ""))
    summary = (f"{store.meta.model_spec or '?'} on {store.meta.dataset_spec or '?'} "
               f"({store.meta.split or '?'}, {len(store)} samples): {len(labels)} units, first {opt.pcs} PCs, "
               f"{opt.images} highest and lowest images each. Click a head.")
    shown = [lab for lab in labels if not is_head[lab]]
    (tmp / "index.html").write_text(pages.overview("resi-dual explorer", comp, head_measures, default,
                                                   {lab for lab in labels if is_head[lab]}, shown,
                                                   notes, summary))
