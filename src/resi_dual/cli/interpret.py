"""`resi-dual interpret STORE --method textspan|somp -k K`: describe units and their PCs with text.

Writes into ``--out`` (default STORE/interpret): ``<method>.tsv`` (per unit: the chosen descriptions,
their weights and the cumulative explained variance after each step), ``<method>.md`` (the units with
the largest variance), and ``pc_descriptions.tsv`` (for each unit's first principal components, the
descriptions closest to either pole), then ``complete.json`` (removed when a run starts: a folder
without it holds an interrupted run). The dictionary is the package's own unless ``--dictionary``.
"""

from __future__ import annotations

import argparse

HELP = "TextSpan / SOMP descriptions of units and of their principal components"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory written by `resi-dual encode`")
    p.add_argument("--method", default="textspan", choices=("textspan", "somp"))
    p.add_argument("-k", type=int, default=None, help="descriptions per unit (default: 20 for textspan, 64 for somp)")
    p.add_argument("--units", default="heads", help="heads (default), mlps, all, emb, or comma-separated labels")
    p.add_argument("--dictionary", default=None, help="text file, one description per line (default: the bundled one)")
    p.add_argument("--rank", type=int, default=80, help="TextSpan: top right singular vectors the dictionary is projected on")
    p.add_argument("--textspan-mode", default="fast", choices=("fast", "paper"),
                   help="TextSpan's span: fast (clipped to the data's rank) or paper (Gandelsman et al.'s exact SVD "
                        "of the explicit data; slower, picks can differ once the rank exceeds the data's)")
    p.add_argument("--max-samples", type=int, default=5000, help="seeded subsample of the store's rows (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--bases", default=None, help="bases.safetensors from `resi-dual analyze` (else fitted here)")
    p.add_argument("--pcs", type=int, default=10, help="principal components described per unit (0: none)")
    p.add_argument("--pc-texts", type=int, default=3, help="descriptions per PC pole")
    p.add_argument("--out", default=None, help="output directory (default: STORE/interpret)")
    p.add_argument("--cache-dir", default=None, help="directory for cached text embeddings (safetensors)")
    p.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rich.console import Console

    from resi_dual import load_model, open_store
    from resi_dual.errors import ResiDualError
    from resi_dual.cli.analyze import COMPLETE
    from resi_dual.files import atomic_write, ensure_out_dir
    from resi_dual.interpret import decompose_units, embed_dictionary, load_dictionary, pc_descriptions
    from resi_dual.report.interpret import write_decompositions, write_pc_descriptions
    from resi_dual.models.text import get_text_tower

    store = open_store(args.store)
    k = args.k if args.k is not None else (20 if args.method == "textspan" else 64)
    if k < 1:
        raise ResiDualError("-k must be at least 1")
    if args.pcs < 0 or args.pc_texts < 1 or args.max_samples < 0 or args.rank < 1:
        raise ResiDualError("--pcs and --max-samples must be at least 0, --pc-texts and --rank at least 1")
    texts = load_dictionary(args.dictionary)
    if args.method == "textspan" and k > len(texts):
        raise ResiDualError(f"-k {k} is larger than the dictionary ({len(texts)} descriptions): TextSpan picks each "
                            "description at most once — lower -k or give a larger --dictionary")
    spec = store.meta.model_spec
    if not spec:
        raise ResiDualError(f"store {args.store} does not record its model spec")
    try:
        tower = get_text_tower(load_model(spec), cache_dir=args.cache_dir)
    except ResiDualError as e:
        if "no text tower" not in str(e):
            raise
        raise ResiDualError(f"{spec} is vision-only (no text tower), and `resi-dual interpret` describes units with "
                            "text: use `resi-dual analyze STORE` for its units' spectra, and "
                            "`resi-dual zeroshot STORE --train TRAIN_STORE` for class-mean prototypes") from None
    out = ensure_out_dir(Path(args.out) if args.out else Path(args.store) / "interpret")
    (out / COMPLETE).unlink(missing_ok=True)
    dictionary = embed_dictionary(tower, texts)
    con = Console()
    res = decompose_units(store, dictionary, texts, args.method, k, units=args.units, rank=args.rank,
                          max_samples=args.max_samples or None, seed=args.seed, progress=not args.no_progress,
                          textspan_mode=args.textspan_mode)
    tsv, md = write_decompositions(res, out)
    written = [tsv, md]
    if args.pcs > 0:
        if args.bases:
            from resi_dual.spectral.bases import UnitBases

            bases = UnitBases.load(args.bases)
            if not bases.composition.same_model(store.composition):
                raise ResiDualError(f"bases {args.bases} were fitted on a different model than the store")
            labels = [lab for lab in res if lab in bases.labels]
            if not labels:
                raise ResiDualError(f"bases {args.bases} hold none of the selected units")
        else:
            from resi_dual.spectral.pca import fit_bases

            bases = fit_bases(store, units=list(res), progress=not args.no_progress)
            labels = list(res)
        written.append(write_pc_descriptions(pc_descriptions(bases, dictionary, texts, labels, args.pcs, args.pc_texts), out))
    atomic_write(out / COMPLETE, json.dumps({"store": str(Path(args.store).resolve()), "method": args.method, "k": k,
                                             "files": sorted(p.name for p in written)}, indent=1) + "\n")
    top = sorted(res.items(), key=lambda kv: -kv[1].total_variance)[:3]
    for lab, d in top:
        con.print(f"[bold]{lab}[/bold]: " + "; ".join(d.texts[:5]) + (" …" if len(d.texts) > 5 else ""))
    con.print(f"{args.method} (k={k}) on {len(res)} units, dictionary of {len(texts)} → " + ", ".join(str(p) for p in written))
    return 0
