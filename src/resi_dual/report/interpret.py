"""Files of the text interpretation: decompositions of units (TSV + Markdown) and descriptions of their PCs."""

from __future__ import annotations

from pathlib import Path

from resi_dual.interpret import Decomposition
from resi_dual.report.tables import write_table
from resi_dual.store.disk import atomic_write

DECOMPOSITION_COLUMNS = ["unit", "step", "dictionary_index", "text", "weight", "explained_variance", "unit_total_variance"]
PC_COLUMNS = ["unit", "pc", "explained_variance_ratio", "pole", "rank", "text", "cosine"]


def write_decompositions(results: dict[str, Decomposition], out_dir: str | Path, top_units: int = 12) -> tuple[Path, Path]:
    """``<method>.tsv`` (one row per unit and step) and ``<method>.md`` (the ``top_units`` units with the
    largest variance). Returns both paths."""
    out_dir = Path(out_dir)
    method = next(iter(results.values())).method if results else "decomposition"
    rows = [dict(unit=lab, step=s, dictionary_index=j, text=t, weight=format(wt, ".6g"), explained_variance=format(ev, ".6f"),
                 unit_total_variance=format(d.total_variance, ".6g"))
            for lab, d in results.items() for s, (j, t, wt, ev) in enumerate(zip(d.indices, d.texts, d.weights, d.explained))]
    (tsv,) = write_table(rows, out_dir / method, DECOMPOSITION_COLUMNS, formats=("tsv",))
    ranked = sorted(results.items(), key=lambda kv: -kv[1].total_variance)[:top_units]
    lines = [f"# {method}: the {len(ranked)} units with the largest variance", "",
             f"Each line: description (weight) — cumulative explained variance after that step. All units: `{tsv.name}`.", ""]
    for lab, d in ranked:
        ev = d.explained[-1] if len(d.explained) else 0.0
        lines.append(f"## {lab} — variance {d.total_variance:.4g}, {len(d.indices)} atoms explain {100 * ev:.1f} %")
        lines.append("")
        for t, wt, e in zip(d.texts, d.weights, d.explained):
            lines.append(f"- {t} ({wt:.3g}) — {100 * e:.1f} %")
        lines.append("")
    md = out_dir / f"{method}.md"
    atomic_write(md, "\n".join(lines).encode())
    return tsv, md


def write_pc_descriptions(rows: list[dict], out_dir: str | Path) -> Path:
    """``pc_descriptions.tsv`` from :func:`resi_dual.interpret.pc_descriptions` rows."""
    return write_table(rows, Path(out_dir) / "pc_descriptions", PC_COLUMNS, formats=("tsv",), precision=".6g")[0]
