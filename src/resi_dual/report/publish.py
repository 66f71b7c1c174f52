"""Copy an experiment folder's tables and figures into a documentation folder with an index page.

``python -m resi_dual.report.publish RUN_DIR DEST [--title T] [--note FILE]`` copies
``RUN_DIR/<experiment>/`` (TSV, Markdown, PNG, run.json) to ``DEST/<experiment>/`` and writes
``DEST/README.md``: per experiment its wall time and cell counts, its Markdown tables inline and
links to its figures. How docs/results/ is made from the offline grid.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from resi_dual.experiments.runners import EXPERIMENTS

#: tables shown inline (others are linked); long per-unit tables stay as files
INLINE = {
    "intrinsic-dim": ["summary_by_layer"],
    "similarity": ["summary", "model_correlation"],
    "specialization": ["top_heads"],
    "adaptation": ["summary"],
}


def publish(run_dir: str | Path, dest: str | Path, title: str = "Results", note: str = "") -> Path:
    """Copy the results of every finished experiment under ``run_dir`` into ``dest``; returns the index path."""
    run_dir, dest = Path(run_dir), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    lines = [f"# {title}", ""] + ([note.strip(), ""] if note.strip() else [])
    for name in EXPERIMENTS:
        src = run_dir / name
        if not (src / "run.json").is_file():
            lines += [f"## {name}", "", "Not run.", ""]
            continue
        out = dest / name
        if out.exists():
            shutil.rmtree(out)
        shutil.copytree(src, out)
        run = json.loads((src / "run.json").read_text())
        lines += [f"## {name}", "",
                  f"{run['cells']} cells ({run['computed']} computed in this run, {run['cached']} from the cache), "
                  f"{run['seconds']:.0f} s. Files: " + ", ".join(f"[{p.name}]({name}/{p.name})" for p in sorted(out.glob("*.tsv"))),
                  ""]
        for table in INLINE.get(name, []):
            md = out / f"{table}.md"
            if md.is_file():
                lines += [md.read_text().strip(), ""]
        for fig in sorted((out / "figures").glob("*.png")):
            lines += [f"![{name} {fig.stem}]({name}/figures/{fig.name})", ""]
    index = dest / "README.md"
    index.write_text("\n".join(lines))
    return index


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir")
    ap.add_argument("dest")
    ap.add_argument("--title", default="Results")
    ap.add_argument("--note", default="", help="a Markdown file whose text goes under the title")
    args = ap.parse_args(argv)
    note = Path(args.note).read_text() if args.note else ""
    print(publish(args.run_dir, args.dest, args.title, note))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
