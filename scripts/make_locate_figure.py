"""Write docs/locate_world.png: zero-shot localisation (`resi-dual locate`) by the bundled demo model.

Eight held-out attribute-world images (docs/DESIGN.md §13, test split, seed 3), each with its object's
known bounding box (top row), and Σ_heads spatial maps along the caption naming the object's colour drawn
over it (bottom row; red: positive, blue: negative). The hit rate over 200 such images is the test
tests/spatial/test_locate.py::test_locate_puts_most_positive_mass_on_the_object. Rerun after the demo
checkpoint changes:

    python scripts/make_locate_figure.py
"""

from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "docs" / "locate_world.png"
SIDE = 128


def main() -> None:
    import torch
    from PIL import Image, ImageDraw

    from resi_dual.data.world import CANVAS, caption, generate, object_boxes
    from resi_dual.models.loading import load_model
    from resi_dual.models.spatial import text_maps
    from resi_dual.report.overlay import overlay

    torch.set_num_threads(1)
    model = load_model("demo")
    world = generate(8, seed=3, split="test")
    _masks, boxes = object_boxes(world)
    sheet = Image.new("RGB", (8 * (SIDE + 4), 2 * (SIDE + 4) + 14), "white")
    draw = ImageDraw.Draw(sheet)
    for i in range(len(world)):
        img = Image.fromarray(world.images[i])
        text = caption({"colour": world.values(i)["colour"]})
        maps, _ = text_maps(model, model.preprocess([img]), [text])
        big = img.resize((SIDE, SIDE), Image.Resampling.NEAREST)
        t, l, b, r = (int(v) * SIDE // CANVAS for v in boxes[i])
        ImageDraw.Draw(big).rectangle([l, t, r - 1, b - 1], outline=(255, 255, 255))
        sheet.paste(big, (i * (SIDE + 4), 0))
        sheet.paste(overlay(img, maps[0, 0].numpy(), SIDE), (i * (SIDE + 4), SIDE + 4))
        draw.text((i * (SIDE + 4) + 2, 2 * (SIDE + 4)), text, fill="black")
    sheet.save(OUT)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
