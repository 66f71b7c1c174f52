"""`resi-dual analyze STORE`: per-unit PCA bases, intrinsic dimensions and layer × head heatmaps.

Writes into ``--out`` (default ``STORE/analysis``):

* ``bases.safetensors`` — per-unit PCA (means, components, explained variance), reused by the
  adapters and the text interpretation;
* ``id.tsv`` and ``id.parquet`` — one row per unit: unit, kind, layer, head, linear_id, twonn_id,
  ratio (linear / TwoNN), pc1_ratio, participation_ratio, n_components, total_variance;
* ``heatmap_<measure>.png`` — layer × head heatmaps of each measure over the heads;
* ``complete.json`` — written last (each file above is written whole, by rename): a folder without it
  holds an analysis that was interrupted.
"""

from __future__ import annotations

import argparse

#: written last: its presence marks a complete analysis folder (the files it lists, of one run)
COMPLETE = "complete.json"

HELP = "per-unit PCA, linear and TwoNN intrinsic dimension, participation ratio; tables and heatmaps"

#: table columns drawn as layer × head heatmaps, with their titles
MEASURES = {
    "linear_id": "linear ID (components for {threshold:.0%} variance)",
    "twonn_id": "TwoNN intrinsic dimension",
    "ratio": "linear ID / TwoNN ID",
    "pc1_ratio": "explained-variance ratio of PC1",
    "participation_ratio": "participation ratio",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory written by `resi-dual encode`")
    p.add_argument("--out", default=None, help="output directory (default: STORE/analysis)")
    p.add_argument("--units", default=None,
                   help="units to analyse: all (default), heads, mlps, emb, or comma-separated labels such as L3H7,L3.mlp")
    p.add_argument("--twonn-samples", type=int, default=50_000,
                   help="seeded subsample per unit for TwoNN (the paper's 50k); 0 skips TwoNN")
    p.add_argument("--twonn-discard", type=float, default=0.1,
                   help="fraction of the largest r2/r1 ratios left out of the TwoNN fit (the paper's 0.1)")
    p.add_argument("--threshold", type=float, default=0.99, help="cumulative explained-variance ratio for the linear ID")
    p.add_argument("--seed", type=int, default=0, help="seed of the TwoNN subsample")
    p.add_argument("--block-rows", type=int, default=4096, help="rows per streamed block")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def head_heatmaps(rows: list[dict], comp, out_dir, measures: dict[str, str], prefix: str = "heatmap") -> list:
    """One layer × head PNG per measure over the head rows; returns the paths (none without heads)."""
    from resi_dual.report.plots import heatmap, layer_head_matrix

    heads = [r for r in rows if r["kind"] == "head"]
    if not heads:
        return []
    paths = []
    for key, title in measures.items():
        m = layer_head_matrix({(r["layer"], r["head"]): r[key] for r in heads}, comp.n_layers, comp.n_heads)
        paths.append(heatmap(m, title, out_dir / f"{prefix}_{key}.png", cmap="viridis"))
    return paths


def _warn_flat_units(rows: list[dict], bases) -> None:
    """A unit whose encodings do not vary (identical images, a dead head) has no spectrum: say so.
    Flat means a variance below 1e-12 of the squared mean contribution (rounding noise, not signal)."""
    import sys

    def scale(label: str) -> float:
        return float(bases.means[label].double().pow(2).sum()) if label in bases.means else 0.0

    flat = [r["unit"] for r in rows if not float(r["total_variance"]) > 1e-12 * scale(r["unit"]) + 1e-30]
    if flat:
        print(f"warning: {len(flat)} unit(s) have zero variance over this store ({', '.join(flat[:6])}"
              f"{'…' if len(flat) > 6 else ''}): identical images or a constant unit; their IDs mean nothing",
              file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import json
    from dataclasses import asdict
    from pathlib import Path

    from resi_dual.errors import ResiDualError
    from resi_dual.files import atomic_write, ensure_out_dir
    from resi_dual.report.tables import write_table
    from resi_dual.spectral.intrinsic_dim import unit_intrinsic_dimensions
    from resi_dual.spectral.pca import UnitPCA
    from resi_dual.store import open_store

    if not 0.0 < args.threshold <= 1.0:
        raise ResiDualError(f"--threshold must be in (0, 1], got {args.threshold}")
    if args.twonn_samples < 0:
        raise ResiDualError("--twonn-samples must be ≥ 0")
    store = open_store(args.store)
    out = ensure_out_dir(Path(args.out) if args.out else Path(args.store) / "analysis")
    (out / COMPLETE).unlink(missing_ok=True)  # until this run finishes, the folder is not a complete analysis
    progress = not args.no_progress
    pca = UnitPCA(units=args.units, block_rows=args.block_rows, progress=progress).fit(store)
    bases = pca.bases_
    bases.meta["store"] = str(Path(args.store).resolve())
    bases_path = bases.save(out / "bases.safetensors")
    table = unit_intrinsic_dimensions(store, bases, threshold=args.threshold, twonn_samples=args.twonn_samples,
                                      twonn_discard=args.twonn_discard, seed=args.seed, progress=progress)
    rows = [asdict(r) for r in table]
    _warn_flat_units(rows, bases)
    written = [bases_path] + write_table(rows, out / "id", formats=("tsv", "parquet"), precision=".6g")
    measures = {k: v.format(threshold=args.threshold) for k, v in MEASURES.items()}
    if args.twonn_samples == 0:
        measures = {k: v for k, v in measures.items() if k not in ("twonn_id", "ratio")}
    written += head_heatmaps(rows, store.composition, out, measures)
    heads = [r for r in rows if r["kind"] == "head"]
    print(f"analysed {len(rows)} units of {store.meta.model_spec or '?'} on {len(store)} samples "
          f"({store.meta.dataset_name or '?'}/{store.meta.split or '?'})")
    if heads:
        lin = sorted(r["linear_id"] for r in heads)
        msg = f"heads: median linear ID {lin[len(lin) // 2]} of {heads[0]['n_components']} components"
        if args.twonn_samples:
            nid = sorted(r["twonn_id"] for r in heads)
            msg += f", median TwoNN ID {nid[len(nid) // 2]:.1f}"
        print(msg)
    atomic_write(out / COMPLETE, json.dumps({"store": str(Path(args.store).resolve()), "files": sorted(p.name for p in written),
                                             "units": len(rows), "threshold": args.threshold,
                                             "twonn_samples": args.twonn_samples, "seed": args.seed}, indent=1) + "\n")
    for p in written:
        print(f"wrote {p}")
    return 0
