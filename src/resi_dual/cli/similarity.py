"""`resi-dual similarity STORE_A STORE_B`: how similar each unit's principal subspace is on two datasets.

Both stores must come from the same model (unit layout and weights hash). Per unit, the paper's
normalised spectral cosine between its PCA on A and on B (components to ``--variance`` explained
variance; 1 for identical spectra). Bases are read from ``STORE/analysis/bases.safetensors`` when that
file holds the requested units, otherwise fitted (one streaming pass per store).

Writes ``similarity.tsv``, ``similarity.parquet`` and ``similarity_heads.png`` (layer × head), and with
``--matrix`` the unit × unit matrix as ``similarity_matrix.tsv`` and ``similarity_matrix.png``.
"""

from __future__ import annotations

import argparse

HELP = "per-unit spectral similarity of two stores of the same model (table and layer × head heatmap)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store_a", help="first store directory")
    p.add_argument("store_b", help="second store directory (same model)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--units", default=None, help="all (default), heads, mlps, emb, or comma-separated labels")
    p.add_argument("--variance", type=float, default=0.9, help="explained variance the compared components reach")
    p.add_argument("--matrix", action="store_true", help="also the full unit × unit similarity matrix")
    p.add_argument("--block-rows", type=int, default=4096, help="rows per streamed block when fitting bases")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _bases_for(store, path, units, block_rows: int, progress: bool):
    """Saved bases of the store when they cover ``units`` and match its model, else a fresh fit."""
    from pathlib import Path

    from resi_dual.spectral.bases import UnitBases
    from resi_dual.spectral.pca import UnitPCA

    wanted = [store.composition.units[i].label for i in store.composition.select(units, require=True)]
    saved = Path(path) / "analysis" / "bases.safetensors"
    if saved.is_file():
        b = UnitBases.load(saved)
        if (b.composition.same_model(store.composition) and b.n_samples == len(store)
                and b.meta.get("weights_hash") == store.meta.weights_hash and set(wanted) <= set(b.labels)):
            return b, wanted, f"read {saved}"
    return UnitPCA(units=wanted, block_rows=block_rows, progress=progress).fit(store).bases_, wanted, "fitted"


def check_stores_match(a, b, path_a, path_b) -> None:
    """Refuse stores of different models before any work."""
    from resi_dual.errors import ResiDualError

    if not a.composition.same_model(b.composition):
        raise ResiDualError(f"{path_a} and {path_b} come from different models "
                            f"({a.meta.model_spec or '?'} vs {b.meta.model_spec or '?'}): their units are not comparable")
    ha, hb = a.meta.weights_hash, b.meta.weights_hash
    if ha and hb and ha != hb:
        raise ResiDualError(f"{path_a} and {path_b} come from different model weights "
                            f"({a.meta.model_spec or '?'} {ha[:12]} vs {b.meta.model_spec or '?'} {hb[:12]})")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from resi_dual.errors import ResiDualError
    from resi_dual.report.plots import heatmap, layer_head_matrix
    from resi_dual.report.tables import write_table
    from resi_dual.spectral.similarity import similarity_matrix, similarity_table
    from resi_dual.store import open_store

    if not 0.0 < args.variance <= 1.0:
        raise ResiDualError(f"--variance must be in (0, 1], got {args.variance}")
    a, b = open_store(args.store_a), open_store(args.store_b)
    check_stores_match(a, b, args.store_a, args.store_b)
    progress = not args.no_progress
    bases_a, labels, how_a = _bases_for(a, args.store_a, args.units, args.block_rows, progress)
    bases_b, _, how_b = _bases_for(b, args.store_b, args.units, args.block_rows, progress)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(r) for r in similarity_table(bases_a, bases_b, labels, args.variance)]
    name_a = a.meta.dataset_name or Path(args.store_a).name
    name_b = b.meta.dataset_name or Path(args.store_b).name
    written = write_table(rows, out / "similarity", formats=("tsv", "parquet"), precision=".6g")
    heads = [r for r in rows if r["kind"] == "head"]
    if heads:
        comp = a.composition
        grid = layer_head_matrix({(r["layer"], r["head"]): r["similarity"] for r in heads}, comp.n_layers, comp.n_heads)
        written.append(heatmap(grid, f"spectral cosine per head: {name_a} vs {name_b}", out / "similarity_heads.png",
                               cmap="magma", vmin=0.0, vmax=1.0))
    if args.matrix:
        m = similarity_matrix(bases_a, bases_b, labels, labels, args.variance)
        matrix_rows = [{"unit": lab, **{col: float(v) for col, v in zip(labels, row)}} for lab, row in zip(labels, m)]
        written += write_table(matrix_rows, out / "similarity_matrix", ["unit", *labels], formats=("tsv",), precision=".6g")
        written += [heatmap(m, f"unit × unit spectral cosine: {name_a} (rows) vs {name_b} (columns)",
                                 out / "similarity_matrix.png", xlabel=name_b, ylabel=name_a, annotate=False)]
    sims = sorted(r["similarity"] for r in rows)
    print(f"{len(rows)} units, bases A {how_a}, B {how_b}; similarity median {sims[len(sims) // 2]:.3f}, "
          f"min {sims[0]:.3f} ({min(rows, key=lambda r: r['similarity'])['unit']}), max {sims[-1]:.3f}")
    for p in written:
        print(f"wrote {p}")
    return 0
