"""Tables of the ground-truth check (resi_dual.interpret.groundtruth): per tower, heads and PCs, and a summary."""

from __future__ import annotations

from pathlib import Path

from resi_dual.report.tables import write_table

ATTRS = ("class", "colour", "texture", "background", "position", "size")
HEAD_COLUMNS = ("unit", "strongest", "share", *ATTRS, "textspan", "textspan_names", "textspan_agrees",
                "somp", "somp_names", "somp_agrees")
PC_COLUMNS = ("unit", "pc", "strongest", "share", *ATTRS, "description", "names", "agrees")
#: what the demo report shows of each head
BRIEF_COLUMNS = ("unit", "strongest", "share", "textspan", "textspan_agrees", "somp_names", "somp_agrees")


def summary_rows(results: dict) -> list[dict]:
    """One row per tower: agreement rates and the best head's probe score per attribute."""
    return [{"tower": t, **s} for t, (_, _, s) in results.items()]


def write_ground_truth(results: dict, out: str | Path) -> list[Path]:
    """``<tower>_heads``, ``<tower>_pcs`` (TSV + Markdown) and ``summary`` tables; returns the paths."""
    out = Path(out)
    paths = []
    for tower, (heads, pcs, _) in results.items():
        paths += write_table(heads, out / f"{tower}_heads", HEAD_COLUMNS, title=f"{tower} tower: heads")
        paths += write_table(pcs, out / f"{tower}_pcs", PC_COLUMNS, title=f"{tower} tower: first PCs of each head")
    paths += write_table(summary_rows(results), out / "summary",
                         title="agreement of descriptions with the measured strongest attribute")
    return paths
