"""`resi-dual locate --model SPEC --text "a dog" IMAGES… --out DIR`: where the model sees a word.

Per image, the sum over heads of the exact spatial maps along the text's embedding (docs/DESIGN.md §10,
Gandelsman et al.'s zero-shot localisation) drawn over the image (red: positive, blue: negative).
``--units`` restricts the sum to chosen heads, ``--ranking FILE --top N`` to the top heads of a
``resi-dual specialize`` ranking. Writes ``<index>_<name>.png`` per image and ``locate.tsv`` (image,
png, score of the image embedding along the text, share of the positive map mass in each image half).
"""

from __future__ import annotations

import argparse

from resi_dual.cli import add_device_argument

HELP = "draw where a model sees a text: per image, the heads' spatial maps along the text embedding"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--model", required=True,
                   help="model spec with a text tower (hf CLIP or SigLIP, open_clip incl. EVA-02 and SigLIP, BLIP, demo)")
    p.add_argument("--text", required=True, help="the text to locate, e.g. 'a dog'")
    p.add_argument("--out", required=True, help="output folder (replaced as a whole when the run succeeds)")
    p.add_argument("--units", default=None, help="comma-separated heads to sum (e.g. L10H3,L11H0); default: all heads")
    p.add_argument("--ranking", default=None, help="rankings.tsv of `resi-dual specialize`: sum its --top heads")
    p.add_argument("--top", type=int, default=10, help="heads taken from --ranking (default 10)")
    p.add_argument("--method", default="S", help="ranking method in --ranking (default S)")
    p.add_argument("--side", type=int, default=224, help="side of the written overlays in pixels (default 224)")
    p.add_argument("--batch", type=int, default=16, help="images per forward pass (default 16)")
    add_device_argument(p)


def ranked_heads(path, top: int, method: str) -> list[str]:
    """The ``top`` best head labels of ``method`` in a specialize ``rankings.tsv`` (first dataset)."""
    from pathlib import Path

    from resi_dual.errors import ResiDualError
    from resi_dual.report.tables import read_table

    p = Path(path)
    rows = read_table(p, "--ranking", ("method", "rank", "head"))
    first = rows[0].get("dataset")
    rows = [r for r in rows if r["method"] == method and r.get("dataset") == first]
    if not rows:
        raise ResiDualError(f"--ranking: {p} has no ranking by method {method!r}")
    return [r["head"] for r in sorted(rows, key=lambda r: int(r["rank"]))][: max(1, top)]


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from rich.console import Console

    from resi_dual.data.base import open_image
    from resi_dual.errors import ResiDualError
    from resi_dual.models.loading import load_model, resolve_device
    from resi_dual.models.spatial import head_mask, text_maps
    from resi_dual.models.text import has_text_tower
    from resi_dual.report.outdir import check_replaceable, staged_dir
    from resi_dual.report.overlay import overlay, save_png

    if args.batch < 1 or args.side < 8 or args.top < 1:
        raise ResiDualError("--batch and --top must be at least 1 and --side at least 8")
    if not args.text.strip():
        raise ResiDualError("--text is empty: give the words to locate, e.g. --text 'a dog'")
    if args.units and args.ranking:
        raise ResiDualError("give --units or --ranking, not both")
    missing = [p for p in args.images if not Path(p).is_file()]
    if missing:
        raise ResiDualError(f"no such image file {missing[0]}")
    ranked = ranked_heads(args.ranking, args.top, args.method) if args.ranking else None
    check_replaceable(Path(args.out).resolve(), "locate.tsv")
    model = load_model(args.model, device=resolve_device(args.device))
    if not has_text_tower(model):
        raise ResiDualError(f"model {args.model} has no text tower, so there is no text embedding to locate; "
                            "use a model with a text tower (hf CLIP or SigLIP, open_clip incl. EVA-02 and SigLIP, "
                            "BLIP, demo)")
    units = ranked if args.ranking else (
        [u.strip() for u in args.units.split(",") if u.strip()] if args.units else None)
    mask = head_mask(model, units)
    rows = []
    with staged_dir(args.out, "locate.tsv") as tmp:
        for start in range(0, len(args.images), args.batch):
            paths = args.images[start:start + args.batch]
            images = [open_image(p) for p in paths]
            maps, sm = text_maps(model, model.preprocess(images), [args.text], mask)
            for i, (path, img) in enumerate(zip(paths, images)):
                grid = maps[i, 0].numpy()
                name = f"{start + i:04d}_{Path(path).stem}.png"
                save_png(overlay(img, grid, args.side), tmp / name)
                pos = torch.from_numpy(grid).clamp_min(0)
                half = pos.shape[1] // 2
                total = float(pos.sum()) or 1.0
                rows.append([path, name, f"{float(sm.score[i, 0]):.6g}",
                             f"{float(pos[:, :half].sum()) / total:.4f}", f"{float(pos[:, half:].sum()) / total:.4f}"])
        lines = ["image\tpng\tscore\tpositive_left\tpositive_right"] + ["\t".join(r) for r in rows]
        (tmp / "locate.tsv").write_text("\n".join(lines) + "\n")
    Console().print(f"wrote {len(rows)} overlay(s) of {args.text!r} "
                    f"({'all heads' if mask is None else f'{int(mask.sum())} heads'}) to {args.out}")
    return 0
