"""`resi-dual explain`: which principal components a trained adapter turned up or down, per unit.

For each adapted unit (head, MLP, or the output for the spectral adapter) the components with the
largest and the smallest learned λ, and — given the per-component description table written by
`resi-dual interpret` (TSV with columns ``unit``, ``component`` and ``text``) — what they stand for.
"""

from __future__ import annotations

import argparse

HELP = "list per head the principal components with the largest and smallest adapter weights (with text)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter", help="adapter .safetensors written by `resi-dual train`")
    p.add_argument("--descriptions", default=None, help="TSV of per-component texts (columns unit, component, text)")
    p.add_argument("--top", type=int, default=3, help="components listed at each end per unit (default 3)")
    p.add_argument("--units", default=None, help="only these units (comma-separated labels)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")


def read_descriptions(path: str) -> dict[tuple[str, int], str]:
    """(unit label, component index) -> text, from a TSV with a header naming unit / component / text."""
    import csv
    import io

    from resi_dual.errors import ResiDualError
    from resi_dual.files import read_text_file

    rows = list(csv.DictReader(io.StringIO(read_text_file(path, "descriptions"), newline=""), delimiter="\t"))
    if not rows:
        return {}
    cols = {c.lower(): c for c in rows[0]}
    unit_col = cols.get("unit") or cols.get("label")
    comp_col = cols.get("component") or cols.get("pc") or cols.get("rank")
    text_col = cols.get("text") or cols.get("description")
    if not (unit_col and comp_col and text_col):
        raise ResiDualError(f"{path}: need columns unit, component and text (found {', '.join(rows[0])})")
    out: dict[tuple[str, int], str] = {}
    for r in rows:
        try:
            key = (r[unit_col].strip(), int(r[comp_col]))
        except (TypeError, ValueError):
            raise ResiDualError(f"{path}: bad component index {r.get(comp_col)!r}") from None
        out.setdefault(key, r[text_col])  # first row per component: the best description
    return out


def explain(adapter, descriptions: dict | None = None, top: int = 3, units: list[str] | None = None) -> list[dict]:
    """Per adapted unit: ``{"unit", "k", "mean", "largest": [(pc, λ, text)], "smallest": [...]}``."""
    weights = adapter.component_weights()
    out = []
    for label, w in weights.items():
        if units and label not in units:
            continue
        order = sorted(range(len(w)), key=lambda k: (-float(w[k]), k))
        n = min(top, len(w))
        pick = lambda ks: [(k, float(w[k]), (descriptions or {}).get((label, k))) for k in ks]  # noqa: E731
        out.append({"unit": label, "k": len(w), "mean": float(w.mean()), "largest": pick(order[:n]),
                    "smallest": pick(list(reversed(order))[:n])})
    return out


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.table import Table

    from resi_dual.adapters.adapter import Adapter
    from resi_dual.errors import ResiDualError

    if args.top < 1:
        raise ResiDualError("--top must be at least 1")
    adapter = Adapter.load(args.adapter)
    variant = adapter.config["variant"]
    desc = read_descriptions(args.descriptions) if args.descriptions else None  # checked even when unused
    if not adapter.component_weights():
        print(f"adapter {variant!r} has no per-component weights to explain")
        return 0
    units = [u.strip() for u in args.units.split(",")] if args.units else None
    if units:
        unknown = [u for u in units if u not in adapter.projection.adapted]
        if unknown:
            raise ResiDualError(f"units not adapted by this {variant} adapter: {', '.join(unknown)}")
    rows = explain(adapter, desc, args.top, units)
    if adapter.config.get("tied"):  # Coarse: one λ per unit, so rank the units instead
        rows = sorted(({"unit": r["unit"], "lambda": r["mean"]} for r in rows), key=lambda r: -r["lambda"])
        if args.json:
            print(json.dumps({"variant": variant, "units": rows}, indent=1))
            return 0
        table = Table(title=f"{variant} adapter: one λ per unit, {len(rows)} units, largest first")
        table.add_column("unit")
        table.add_column("λ", justify="right")
        for r in rows:
            table.add_row(r["unit"], f"{r['lambda']:+.3f}")
        Console(width=160).print(table)
        return 0
    if args.json:
        print(json.dumps({"variant": variant, "units": rows}, indent=1))
        return 0

    def fmt(items):
        return "\n".join(f"pc{k} λ={v:+.3f}" + (f"  {t}" if t else "") for k, v, t in items)

    table = Table(title=f"{variant} adapter ({adapter.n_trainable} weights): {len(rows)} units")
    for col in ("unit", "k", "mean λ", "largest λ", "smallest λ"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["unit"], str(r["k"]), f"{r['mean']:.3f}", fmt(r["largest"]), fmt(r["smallest"]))
    Console(width=160).print(table)
    return 0
