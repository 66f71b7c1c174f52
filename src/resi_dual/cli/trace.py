"""`resi-dual trace`: load a model, trace a batch, print the unit table and the decomposition error.

A smoke check that a checkpoint is supported: it loads the spec, runs noise images (or the given
image files) through the checkpoint's own preprocessing, traces them, and reports per unit the mean
norm of its contribution and its mean cosine with the model's embedding, then the worst relative
error of Σ_u c_u against the library's own embedding.
"""

from __future__ import annotations

import argparse

from resi_dual.cli import add_device_argument

HELP = "load a model, trace a batch of noise (or given) images, print the units and the decomposition error"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="model spec: hf:<id or dir>, open_clip:<arch>[@<tag or file>], a short name (clip_b …) or demo")
    p.add_argument("--images", nargs="*", default=None, help="image files to trace instead of noise")
    p.add_argument("--batch", type=int, default=8, help="number of noise images (default 8)")
    p.add_argument("--image-size", type=int, default=None, help="side of the noise images before preprocessing (default: the model's input size)")
    p.add_argument("--convention", choices=["paper", "centred"], default="paper", help="bias / LayerNorm-mean sharing (default: paper)")
    p.add_argument("--seed", type=int, default=0, help="seed of the noise images")
    p.add_argument("--units", default="all", help="units to list: all, heads, mlps, emb or comma-separated labels")
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from resi_dual.core.images import open_image
    from resi_dual.errors import ResiDualError
    from resi_dual.models.loading import load_model, resolve_device

    if args.batch < 1:
        raise ResiDualError("--batch must be at least 1")
    device = resolve_device(args.device)
    model = load_model(args.model, convention=args.convention, device=device)
    if args.images:
        images = [open_image(path) for path in args.images]
        source = f"{len(images)} image file(s)"
    else:
        side = args.image_size or model.image_size
        if side < 1:
            raise ResiDualError("--image-size must be positive")
        rng = np.random.default_rng(args.seed)
        images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(args.batch)]
        source = f"{args.batch} uniform-noise images of {side}×{side} px (seed {args.seed})"
    pixels = model.preprocess(images)

    t0 = time.perf_counter()
    enc = model.trace(pixels, check=False)
    t_trace = time.perf_counter() - t0
    err = enc.relative_error()

    comp = enc.composition
    idx = comp.select(args.units)
    contrib = enc.contributions(idx).double()  # (n, U', d_out)
    out = enc.output.double()
    norms = contrib.norm(dim=-1).mean(0)
    cos = torch.nn.functional.cosine_similarity(contrib, out[:, None, :], dim=-1).mean(0)

    console = Console()
    c = comp
    console.print(
        f"[bold]{model.spec}[/bold]  family={c.family}  layers={c.n_layers} heads={c.n_heads} d_model={c.d_model} "
        f"d_head={c.d_head} d_out={c.d_out}  units={len(c)}  convention={c.convention}  input={model.image_size}px  "
        f"device={model.device}"
    )
    table = Table(title=f"units on {source}")
    for col in ("unit", "kind", "layer", "head", "mean ‖c_u‖", "mean cos(c_u, y)"):
        table.add_column(col, justify="right" if col not in ("unit", "kind") else "left")
    for j, i in enumerate(idx):
        u = comp.units[i]
        table.add_row(u.label, u.kind, str(u.layer) if u.layer >= 0 else "", str(u.head) if u.head >= 0 else "",
                      f"{norms[j]:.4g}", f"{cos[j]:+.3f}")
    console.print(table)
    worst = float(err.max())
    console.print(
        f"mean ‖y‖ = {out.norm(dim=-1).mean():.4g}; trace of {len(enc)} images took {t_trace:.2f} s\n"
        f"worst relative decomposition error ‖Σ_u c_u − y‖/‖y‖ = {worst:.3e} (tolerance {model.tolerance:.0e})"
    )
    if not worst <= model.tolerance:
        raise ResiDualError(f"decomposition error {worst:.3e} exceeds the tolerance {model.tolerance:.0e}")
    return 0
