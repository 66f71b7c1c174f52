"""`resi-dual demo --out DIR`: the whole pipeline on the bundled demo model, ending in a report."""

from __future__ import annotations

HELP = "run the whole ResiDual pipeline on the bundled demo model and write an HTML + markdown report"


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo-out", help="report folder (index.html, results.md, figures/, grid/ cache)")
    parser.add_argument("--quick", action="store_true", help="tiny limits and few epochs: a smoke run of a minute or two")
    parser.add_argument("--quiet", action="store_true", help="no progress view")


def run(args) -> int:
    import time

    from resi_dual.demo import run_demo

    t0 = time.perf_counter()
    index = run_demo(args.out, quick=args.quick, progress=not args.quiet)
    print(f"demo finished in {time.perf_counter() - t0:.0f} s")
    print(f"report: {index}")
    return 0
