"""`resi-dual zeroshot STORE`: zero-shot accuracy of the model's own embeddings in a store.

Text prompts (class names × the dataset's templates) when the model has a text tower; class-mean
prototypes of a train-split store (``--train``) for vision-only models. Prints top-1/top-5 and the
per-class table; writes ``zeroshot.json`` and ``per_class.tsv`` into ``--out`` (default STORE/zeroshot).
"""

from __future__ import annotations

import argparse

HELP = "zero-shot top-1/top-5/per-class accuracy of a store (text prompts, or train-split prototypes)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory written by `resi-dual encode` (the split to evaluate)")
    p.add_argument("--train", default=None, help="train-split store of the same dataset: class-mean prototypes for vision-only models")
    p.add_argument("--templates", default=None, help="file with one prompt template per line ({} = class name)")
    p.add_argument("--out", default=None, help="output directory (default: STORE/zeroshot)")
    p.add_argument("--cache-dir", default=None, help="directory for cached text embeddings (safetensors)")


def read_lines(path: str, what: str) -> list[str]:
    from pathlib import Path

    from resi_dual.errors import ResiDualError

    p = Path(path)
    if not p.is_file():
        raise ResiDualError(f"no {what} file at {p}")
    lines = [s.strip() for s in p.read_text(encoding="utf-8").splitlines() if s.strip() and not s.strip().startswith("#")]
    if not lines:
        raise ResiDualError(f"the {what} file {p} is empty")
    return lines


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from resi_dual import open_store
    from resi_dual.errors import ResiDualError
    from resi_dual.files import atomic_write, ensure_out_dir
    from resi_dual.report.tables import write_table
    from resi_dual.zeroshot import accuracy_report, classifier_for_source, source_logits

    store = open_store(args.store)
    train = open_store(args.train) if args.train else None
    if train is not None and train.meta.model_spec != store.meta.model_spec:
        raise ResiDualError(f"--train store was encoded with {train.meta.model_spec!r}, not {store.meta.model_spec!r}")
    templates = None
    if args.templates:
        templates = read_lines(args.templates, "templates")
        if not all("{}" in t for t in templates):
            raise ResiDualError("every template needs a {} where the class name goes")
    head = classifier_for_source(store, train_source=train, templates=templates, cache_dir=args.cache_dir)
    rep = accuracy_report(source_logits(head, store), store.labels, head.class_names)
    rep.update(classifier=head.kind, model_spec=store.meta.model_spec, dataset=store.meta.dataset_name,
               split=store.meta.split, templates=head.templates, store=str(args.store))
    out = ensure_out_dir(Path(args.out) if args.out else Path(args.store) / "zeroshot")
    (out / "zeroshot.json").unlink(missing_ok=True)  # until this run's is written, the folder is not complete
    write_table([{"class": name, "n": r["n"], "top1": float(r["top1"])} for name, r in rep["per_class"].items()],
                out / "per_class", ["class", "n", "top1"], formats=("tsv",), precision=".6f")
    atomic_write(out / "zeroshot.json", json.dumps(rep, indent=1))  # last: its presence marks a complete run
    con = Console()
    table = Table(title=f"zero-shot ({head.kind}) on {rep['dataset']} {rep['split']}: {rep['n']} samples")
    table.add_column("class")
    table.add_column("n", justify="right")
    table.add_column("top-1", justify="right")
    for name, r in rep["per_class"].items():
        table.add_row(name, str(r["n"]), f"{100 * r['top1']:.1f} %")
    con.print(table)
    con.print(f"top-1 {100 * rep['top1']:.2f} %   top-5 {100 * rep['top5']:.2f} %   → {out}")
    return 0
