"""`resi-dual groundtruth`: does each head's text description name the attribute it carries? (the world's truth)."""

from __future__ import annotations

import argparse

HELP = "check the heads' text descriptions against what they carry on held-out world images (with a random control)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="demo", help="a demo model spec: demo (default) or demo:<folder>")
    p.add_argument("--n", type=int, default=1000, help="held-out world images (half fit the probes, half score them)")
    p.add_argument("--seed", type=int, default=0, help="world images, probe split and control weights")
    p.add_argument("--no-control", action="store_true", help="skip the random-weight control tower")
    p.add_argument("--out", default="groundtruth", help="output folder (default %(default)s)")


def run(args: argparse.Namespace) -> int:
    from resi_dual.errors import ResiDualError
    from resi_dual.experiments.groundtruth import ground_truth
    from resi_dual.files import check_out_dir, ensure_out_dir
    from resi_dual.interpret.groundtruth import MIN_IMAGES
    from resi_dual.report.groundtruth import write_ground_truth

    if args.n < MIN_IMAGES:
        raise ResiDualError(f"--n must be at least {MIN_IMAGES} (half of the world images fit the probes, half score them), got {args.n}")
    check_out_dir(args.out)
    try:
        results = ground_truth(args.model, n=args.n, seed=args.seed, control=not args.no_control)
    except ResiDualError as e:
        if "no text tower" not in str(e):
            raise
        raise ResiDualError(f"{args.model} is vision-only (no text tower), and the check compares the heads' text "
                            "descriptions with the world's attributes: use demo or demo:<folder>") from None
    write_ground_truth(results, ensure_out_dir(args.out))
    for tower, (_, _, s) in results.items():
        print(f"{tower}: {s['heads_carrying']}/{s['heads']} heads carry an attribute; descriptions agree "
              f"TextSpan {s['textspan_agreement']:.2f}, SOMP {s['somp_agreement']:.2f}; "
              f"PCs {s['pc_agreement']:.2f} of {s['pcs_carrying']}")
    print(f"tables written to {args.out}")
    return 0
