"""From the cells' rows to an experiment's tables and figure specs (no drawing, no files).

One function per experiment: it takes the grid config and every cell's rows and returns the
:class:`~resi_dual.experiments.outputs.Outputs` that ``resi_dual.report.experiments`` writes.
"""

from __future__ import annotations

import numpy as np

from resi_dual.experiments.config import GridConfig
from resi_dual.experiments.outputs import Bars, Heatmaps, Lines, Outputs, mean_std

UNIT_COLUMNS = ["model", "unit", "kind", "layer", "head", "linear_id", "twonn_id", "id_ratio", "pc1_ratio",
                "participation_ratio", "n"]
HEAD_SIMILARITY_COLUMNS = ["model", "dataset", "unit", "layer", "head", "similarity", "k_reference", "k_dataset"]
CURVE_COLUMNS = ["model", "dataset", "ranking", "ablation", "heads_kept", "fraction", "accuracy", "accuracy_std",
                 "base_accuracy"]
TOP_HEAD_COLUMNS = ["model", "dataset", "ranking", "rank", "unit", "score", "descriptions"]
RUN_COLUMNS = ["model", "dataset", "shots", "method", "seed", "trainable_parameters", "val_accuracy", "test_accuracy",
               "epochs", "best_epoch", "lr", "note"]
ADAPTATION_COLUMNS = ["model", "dataset", "shots", "method", "trainable_parameters", "seeds", "test_accuracy",
                      "test_accuracy_mean", "test_accuracy_std", "lr", "note"]


def _layer_labels(n_layers: int, n_heads: int, mlp: bool) -> tuple[list[str], list[str]]:
    return [f"H{h}" for h in range(n_heads)] + (["MLP"] if mlp else []), [f"L{l}" for l in range(n_layers)]


def _layer_grid(rows: list[dict], key: str, n_layers: int, n_heads: int) -> list[list[float]]:
    """(L, H+1) matrix of ``key``: heads, then the layer's MLP in the last column."""
    m = [[float("nan")] * (n_heads + 1) for _ in range(n_layers)]
    for r in rows:
        if r["kind"] == "head":
            m[r["layer"]][r["head"]] = r[key]
        elif r["kind"] == "mlp":
            m[r["layer"]][n_heads] = r[key]
    return m


def intrinsic_dim_outputs(cfg: GridConfig, rows: list[dict]) -> Outputs:
    """``units`` (every unit), ``summary_by_layer`` (means per layer and kind) and per-model heatmaps."""
    order = {"emb": 0, "head": 1, "mlp": 2, "pool": 3}
    all_rows = sorted(rows, key=lambda r: (r["model"], r["layer"], order[r["kind"]], r["head"]))
    out = Outputs(extra={"units": len(all_rows)})
    out.table("units", all_rows, UNIT_COLUMNS, "Intrinsic dimension per unit")
    summary = []
    for m in cfg.models:
        mrows = [r for r in all_rows if r["model"] == m.name]
        for layer in sorted({r["layer"] for r in mrows}):
            for kind in ("emb", "head", "mlp", "pool"):
                sel = [r for r in mrows if r["layer"] == layer and r["kind"] == kind]
                if sel:
                    summary.append({"model": m.name, "layer": layer, "kind": kind, "units": len(sel),
                                    **{f"mean_{k}": mean_std([r[k] for r in sel])[0]
                                       for k in ("linear_id", "twonn_id", "id_ratio", "pc1_ratio")}})
        heads = [r for r in mrows if r["kind"] == "head"]
        if heads:
            n_layers, n_heads = max(r["layer"] for r in mrows) + 1, max(r["head"] for r in heads) + 1
            panels = [(name, _layer_grid(mrows, key, n_layers, n_heads)) for name, key in
                      (("linear ID", "linear_id"), ("TwoNN ID", "twonn_id"), ("linear / TwoNN", "id_ratio"),
                       ("PC1 ratio", "pc1_ratio"))]
            out.figure(Heatmaps(f"figures/{m.name}", panels, *_layer_labels(n_layers, n_heads, mlp=True),
                                f"{m.name}: intrinsic dimension per unit on {cfg.reference.name}"))
    out.table("summary_by_layer", summary, None, "Intrinsic dimension: means per layer and unit kind")
    return out


def similarity_outputs(cfg: GridConfig, rows: list[dict]) -> Outputs:
    """``heads`` (every head), ``summary`` (mean per model and dataset), ``model_correlation`` and heatmaps."""
    out = Outputs(extra={"rows": len(rows)})
    out.table("heads", rows, HEAD_SIMILARITY_COLUMNS, f"Spectral similarity of each head to {cfg.reference.name}")
    names = [d.name for d in cfg.datasets] + (["noise"] if cfg.similarity.noise else [])
    summary, per_model = [], {}
    for m in cfg.models:
        rec = {"model": m.name}
        for dn in names:
            rec[dn] = mean_std([r["similarity"] for r in rows if r["model"] == m.name and r["dataset"] == dn])[0]
        summary.append(rec)
        per_model[m.name] = [rec[dn] for dn in names]
        mrows = [r for r in rows if r["model"] == m.name]
        if mrows:
            n_layers, n_heads = max(r["layer"] for r in mrows) + 1, max(r["head"] for r in mrows) + 1
            panels = []
            for dn in names:
                mat = [[float("nan")] * n_heads for _ in range(n_layers)]
                for r in mrows:
                    if r["dataset"] == dn:
                        mat[r["layer"]][r["head"]] = r["similarity"]
                panels.append((dn, mat))
            out.figure(Heatmaps(f"figures/{m.name}", panels, *_layer_labels(n_layers, n_heads, mlp=False),
                                f"{m.name}: head similarity to {cfg.reference.name}"))
    out.table("summary", summary, ["model"] + names, "Mean head similarity to the reference, per dataset")
    corr = []
    for a in cfg.models:
        rec = {"model": a.name}
        for b in cfg.models:
            x, y = np.asarray(per_model[a.name]), np.asarray(per_model[b.name])
            ok = len(x) > 1 and x.std() > 0 and y.std() > 0
            rec[b.name] = float(np.corrcoef(x, y)[0, 1]) if ok else float("nan")
        corr.append(rec)
    out.table("model_correlation", corr, ["model"] + [m.name for m in cfg.models],
              "Pearson correlation of the per-dataset similarity patterns across models")
    return out


def specialization_outputs(cfg: GridConfig, rows: list[dict]) -> Outputs:
    """``curves`` (accuracy against heads kept), ``top_heads`` (with descriptions) and one figure per model × dataset."""
    curve = [r for r in rows if r["table"] == "curve"]
    desc = [r for r in rows if r["table"] == "descriptions"]
    out = Outputs(extra={"curve_rows": len(curve), "described_heads": len(desc)})
    out.table("curves", curve, CURVE_COLUMNS, "Zero-shot accuracy vs heads kept (random: mean ± std over seeds)")
    out.table("top_heads", desc, TOP_HEAD_COLUMNS, "Top heads per ranking and their TextSpan descriptions")
    for m in cfg.models:
        for d in cfg.datasets:
            sel = [r for r in curve if r["model"] == m.name and r["dataset"] == d.name]
            series: dict[str, tuple[list, list]] = {}
            for r in sel:
                x, y = series.setdefault(r["ranking"], ([], []))
                x.append(r["heads_kept"])
                y.append(r["accuracy"])
            if series:
                base = sel[0]["base_accuracy"]
                series["all heads"] = ([min(series[k][0][0] for k in series), max(series[k][0][-1] for k in series)],
                                       [base, base])
                out.figure(Lines(f"figures/{m.name}.{d.name}", series, "heads kept", "top-1 accuracy",
                                 f"{m.name} on {d.name} ({cfg.specialization.ablation} ablation)", logx=True))
    return out


def _summary_note(sel: list[dict]) -> str:
    """The runs' notes (edge learning rates, cut budgets, chosen settings), each said once."""
    notes = []
    for r in sel:
        for part in str(r.get("note") or "").split("; "):
            if part and part not in notes:
                notes.append(part)
    return "; ".join(notes)


def adaptation_outputs(cfg: GridConfig, rows: list[dict], methods: list[str]) -> Outputs:
    """``runs`` (every run), ``summary`` (mean ± std over seeds per method and shot count), one bar chart
    per model and shot count, and accuracy against trainable parameters per model × dataset × shots."""
    rows = sorted(rows, key=lambda r: (r["model"], r["dataset"], r.get("shots", 0), methods.index(r["method"]), r["seed"]))
    out = Outputs(extra={"runs": len(rows)})
    out.table("runs", rows, RUN_COLUMNS, "Adaptation: every run")
    summary = []
    shot_counts = sorted({int(r.get("shots", 0)) for r in rows}) or [0]
    for m in cfg.models:
        for d in cfg.datasets:
            for k in shot_counts:
                for method in methods:
                    sel = [r for r in rows if r["model"] == m.name and r["dataset"] == d.name
                           and r["method"] == method and int(r.get("shots", 0)) == k]
                    if not sel:  # no run (CoOp on a vision-only model): no row
                        continue
                    mu, sd = mean_std([r["test_accuracy"] for r in sel])
                    lrs = sorted({r["lr"] for r in sel if r.get("lr") is not None})
                    summary.append({"model": m.name, "dataset": d.name, "shots": k or "all", "method": method,
                                    "trainable_parameters": sel[0]["trainable_parameters"] if sel else None,
                                    "seeds": len(sel), "test_accuracy_mean": mu, "test_accuracy_std": sd,
                                    "test_accuracy": f"{100 * mu:.1f} ± {100 * sd:.1f}",
                                    "lr": ", ".join(f"{x:g}" for x in lrs), "note": _summary_note(sel)})
    out.table("summary", summary, ADAPTATION_COLUMNS, "Adaptation: test accuracy (%), mean ± std over seeds")
    for m in cfg.models:
        for k in shot_counts:
            tag = f"{m.name}" + (f".{k}shot" if k else "")
            # a method without a row on a dataset (CoOp on a vision-only model, a tower method outside
            # tower-datasets) keeps its place in every group as an empty bar
            cells = {(r["dataset"], r["method"]): (r["test_accuracy_mean"], r["test_accuracy_std"]) for r in summary
                     if r["model"] == m.name and r["shots"] == (k or "all")}
            series = {method: [cells.get((d.name, method), (float("nan"), 0.0)) for d in cfg.datasets]
                      for method in methods if any((d.name, method) in cells for d in cfg.datasets)}
            out.figure(Bars(f"figures/{tag}", [d.name for d in cfg.datasets], series, "test accuracy",
                            f"{m.name}: adaptation" + (f", {k} shots" if k else "")))
            for d in cfg.datasets:
                points = {r["method"]: ([r["trainable_parameters"] + 1], [r["test_accuracy_mean"]]) for r in summary
                          if r["model"] == m.name and r["dataset"] == d.name and r["shots"] == (k or "all")
                          and r["trainable_parameters"] is not None}
                out.figure(Lines(f"figures/params_{tag}.{d.name}", points, "trainable parameters + 1",
                                 "test accuracy", f"{m.name} on {d.name}" + (f", {k} shots" if k else ""), logx=True))
    return out
