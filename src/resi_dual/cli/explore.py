"""`resi-dual explore STORE --out DIR`: a static site to browse every head (opens from the file system).

Overview of layers × heads coloured by a picked measure; per unit its spectrum, text descriptions and
per PC the highest and lowest images of the store with (heads) the PC's exact spatial map overlaid;
λ per PC with ``--adapter``. Each image shown is re-traced exactly once. See
:mod:`resi_dual.report.explorer`.
"""

from __future__ import annotations

import argparse

from resi_dual.cli import add_device_argument

HELP = "write a static site (no server) to browse heads: spectra, descriptions, images along PCs, spatial maps"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("store", help="store directory written by `resi-dual encode`")
    p.add_argument("--out", required=True, help="site folder (replaced as a whole when the build succeeds)")
    p.add_argument("--analysis", default=None, help="`resi-dual analyze` folder (bases.safetensors, id.tsv)")
    p.add_argument("--interpret", default=None, help="`resi-dual interpret` folder (textspan/somp.tsv, pc_descriptions.tsv)")
    p.add_argument("--adapter", default=None, help="adapter file of `resi-dual train` (λ per component)")
    p.add_argument("--specialization", default=None, help="rankings.tsv of `resi-dual specialize`")
    p.add_argument("--similarity", default=None, help="similarity.tsv of `resi-dual similarity`")
    p.add_argument("--units", default="heads", help="heads (default), all, mlps, or comma-separated labels")
    p.add_argument("--pcs", type=int, default=5, help="principal components per unit (default 5)")
    p.add_argument("--images", type=int, default=8, help="highest and lowest images per PC (default 8 each)")
    p.add_argument("--thumb", type=int, default=96, help="thumbnail side in pixels (default 96)")
    p.add_argument("--batch", type=int, default=32, help="images per traced batch")
    p.add_argument("--data-root", default=None, help="where the store's dataset lives now (torchvision root, or the moved folder of a folder: dataset)")
    p.add_argument("--no-progress", action="store_true")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from resi_dual.report.explorer import ExploreOptions, build_site

    opt = ExploreOptions(args.units, args.pcs, args.images, args.thumb, args.batch, args.data_root, args.device)
    stats = build_site(args.store, args.out, args.analysis, args.interpret, args.adapter, args.specialization,
                       args.similarity, opt)
    con = Console(stderr=args.no_progress)
    for note in stats.notes:
        con.print(f"note: {note}")
    con.print(f"wrote {args.out}/index.html: {stats.distinct_images} distinct images, {stats.traced_images} re-traced in "
              f"{stats.trace_seconds:.1f} s, everything else {stats.other_seconds:.1f} s, {stats.bytes / 2**20:.1f} MB")
    return 0
