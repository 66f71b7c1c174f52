"""`resi-dual specialize EVAL… --train TRAIN…`: head rankings and ablation curves per dataset.

For each evaluated store (with the train store of the same dataset, in the same order): rank the
heads on ``--rank-on`` (a validation store; the train store when omitted) by S, U|T, U and random
(``--seeds`` orders); keep the top 1, 1 %, 5 %, 10 %, 25 %, 50 %, 75 % and all heads; zero- or
mean-ablate the rest (means from the train store, never from the evaluated one). ``--protocol paper``
runs the authors' experiment instead: only the kept heads stay and every other unit (MLPs and
embedding too) is zeroed or set to its mean over the evaluated split, ``U`` is computed in the
outputs' basis, and the sizes are theirs (docs/DESIGN.md §7). Writes into
``--out``: ``rankings.tsv``, ``ablation.tsv``, ``ablation_<dataset>.png`` and, with several
datasets, ``jaccard.tsv`` (overlap of the selected heads across datasets).
"""

from __future__ import annotations

import argparse

HELP = "rank heads (S, U|T, U, random), keep the top ones, ablate the rest; curves, tables, Jaccard"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stores", nargs="+", help="evaluated stores (test splits), one per dataset")
    p.add_argument("--train", nargs="+", required=True, help="train-split stores, same order: head means, prototypes")
    p.add_argument("--rank-on", nargs="+", default=None, help="stores the heads are ranked on (validation splits); default: --train")
    p.add_argument("--rankings", default="S,U|T,U,random", help="comma-separated subset of S, U|T, U, random")
    p.add_argument("--seeds", type=int, default=10, help="random orders")
    p.add_argument("--ablation", default="zero,mean", help="comma-separated subset of zero, mean")
    p.add_argument("--protocol", default="project", choices=("project", "paper"),
                   help="project (MLPs and embedding kept, train-split means) or paper (the authors' code: only the "
                        "top heads kept, every other unit ablated)")
    p.add_argument("--out", default="specialization", help="output directory")


def _same_model(stores, what):
    from resi_dual.errors import ResiDualError

    specs = {s.meta.model_spec for s in stores}
    if len(specs) > 1:
        raise ResiDualError(f"{what}: stores of different models ({', '.join(sorted(map(str, specs)))})")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from rich.console import Console
    from rich.table import Table

    from resi_dual import load_model, open_store
    from resi_dual.errors import ResiDualError
    from resi_dual.zeroshot import classifier_for_source
    from resi_dual.report.plots import ablation_figure
    from resi_dual.zeroshot.specialize import (MODES, ablation_curves, fraction_label, head_means, jaccard_table,
                                               rank_heads, summarize_random)

    n = len(args.stores)
    if len(args.train) != n or (args.rank_on and len(args.rank_on) != n):
        raise ResiDualError(f"give one --train (and --rank-on) store per evaluated store: {n} evaluated")
    methods = [m.strip() for m in args.rankings.split(",") if m.strip()]
    modes = [m.strip() for m in args.ablation.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ResiDualError(f"unknown ablation {bad[0]!r}; choose zero or mean")
    evals = [open_store(s) for s in args.stores]
    trains = [open_store(s) for s in args.train]
    ranks_on = [open_store(s) for s in args.rank_on] if args.rank_on else trains
    _same_model(evals + trains + list(ranks_on), "specialize")
    for e, t in zip(evals, trains):
        if e.meta.dataset_name != t.meta.dataset_name:
            raise ResiDualError(f"evaluated store of {e.meta.dataset_name!r} paired with a train store of {t.meta.dataset_name!r}")
        if e.meta.split == t.meta.split or Path(e.path).resolve() == Path(t.path).resolve():
            raise ResiDualError(f"the evaluated store and its train store are both the {e.meta.split!r} split: "
                                "head means must come from another split")
    model = load_model(evals[0].meta.model_spec)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    con = Console()
    rank_rows, abl_rows, by_dataset, sizes = [], [], {}, None
    for ev, tr, rk in zip(evals, trains, ranks_on):
        name = ev.meta.dataset_name or Path(str(getattr(ev, "path", "store"))).name
        head = classifier_for_source(tr, model=model, train_source=tr)
        rankings = rank_heads(rk, head, methods=methods, seeds=range(args.seeds), protocol=args.protocol)
        means = head_means(tr) if "mean" in modes and args.protocol == "project" else None
        res = ablation_curves(ev, head, rankings, modes=modes, means=means, protocol=args.protocol)
        sizes = res.sizes
        by_dataset[name] = rankings
        labels = [u.label for u in ev.composition.head_units]
        for r in rankings:
            if r.seed is None:
                for pos, h in enumerate(r.order):
                    rank_rows.append([name, r.method, pos, labels[h], f"{r.scores[h]:.6g}"])
        summary = summarize_random(res)
        table = Table(title=f"{name}: top-1 accuracy keeping the top heads (base {100 * res.base_accuracy:.1f} %)")
        table.add_column("ranking")
        table.add_column("ablation")
        for s in res.sizes:
            table.add_column(fraction_label(s, res.n_heads), justify="right")
        for method, by_mode in summary.items():
            for mode, (mean, std) in by_mode.items():
                table.add_row(method, mode, *[f"{100 * a:.1f}" + (f"±{100 * sd:.1f}" if method == "random" else "")
                                            for a, sd in zip(mean, std)])
                for s, a, sd in zip(res.sizes, mean, std):
                    abl_rows.append([name, method, mode, s, f"{s / res.n_heads:.4f}", f"{a:.6f}", f"{sd:.6f}",
                                     f"{res.base_accuracy:.6f}"])
        con.print(table)
        ablation_figure(res, name, out / f"ablation_{name}.png")
    _write(out / "rankings.tsv", ["dataset", "method", "rank", "head", "score"], rank_rows)
    _write(out / "ablation.tsv", ["dataset", "ranking", "ablation", "heads_kept", "fraction", "accuracy",
                                  "accuracy_std", "base_accuracy"], abl_rows)
    if len(by_dataset) > 1:
        rows = jaccard_table(by_dataset, sizes)
        _write(out / "jaccard.tsv", ["method", "heads_kept", "dataset_a", "dataset_b", "jaccard"],
               [[r["method"], r["n_heads"], r["dataset_a"], r["dataset_b"], f"{r['jaccard']:.4f}"] for r in rows])
    con.print(f"wrote {out}")
    return 0


def _write(path, header, rows) -> None:
    from resi_dual.report.tables import write_table

    write_table([dict(zip(header, r)) for r in rows], path, header, formats=("tsv",))
