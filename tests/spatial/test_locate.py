"""`resi-dual locate` and the zero-shot localisation behind it (docs/DESIGN.md §10)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from spatial_images import half_canvas_digits
from resi_dual.cli import main
from resi_dual.models.loading import load_model
from resi_dual.models.spatial import text_maps
from resi_dual.report.overlay import upsample

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


TEMPLATE = "a handwritten digit {}."


@pytest.fixture(scope="module")
def demo():
    return load_model("demo")


def object_half_fraction(grid: np.ndarray, half: int, side: int = 28) -> float:
    """Share of the map's positive mass (upsampled to the canvas) on the object's half."""
    up = np.clip(upsample(grid, side), 0, None)
    total = float(up.sum())
    left = float(up[:, : side // 2].sum())
    return (left if half == 0 else total - left) / max(total, 1e-12)


def locate_hit_rate(model, n: int, seed: int = 0) -> tuple[float, float]:
    """(hit rate, mean object-half share) of Σ_heads maps along each image's own digit caption."""
    items = half_canvas_digits(n, seed)
    fractions = []
    for digit in range(10):
        idx = [i for i, (_, _, y) in enumerate(items) if y == digit]
        if not idx:
            continue
        maps, _ = text_maps(model, model.preprocess([items[i][0] for i in idx]), [TEMPLATE.format(digit)])
        fractions += [object_half_fraction(maps[j, 0].numpy(), items[i][1]) for j, i in enumerate(idx)]
    f = np.array(fractions)
    return float((f > 0.5).mean()), float(f.mean())


def test_locate_puts_most_positive_mass_on_the_digit(demo):
    """Measured 0.89 (mean share 0.69) on 200 images; chance is 0.5."""
    rate, share = locate_hit_rate(demo, 120, seed=3)
    assert rate >= 0.75 and share >= 0.6, (rate, share)


def test_locate_cli_writes_overlays_and_table(demo, tmp_path):
    paths = []
    for i, (img, _half, _y) in enumerate(half_canvas_digits(3, seed=5)):
        paths.append(tmp_path / f"d{i}.png")
        img.save(paths[-1])
    out = tmp_path / "loc"
    assert main(["locate", "--model", "demo", "--text", "a handwritten digit 3.", *map(str, paths),
                 "--out", str(out), "--side", "64"]) == 0
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == ["0000_d0.png", "0001_d1.png", "0002_d2.png"]
    assert Image.open(pngs[0]).size == (64, 64)
    rows = (out / "locate.tsv").read_text().splitlines()
    assert rows[0].split("\t") == ["image", "png", "score", "positive_left", "positive_right"] and len(rows) == 4
    left, right = map(float, rows[1].split("\t")[3:])
    assert abs(left + right - 1.0) < 1e-3
    # the score column is the image embedding along the unit text embedding
    emb = demo.text_tower.encode(["a handwritten digit 3."])[0]
    score = float(demo.embed(demo.preprocess([Image.open(paths[0])]))[0] @ (emb / emb.norm()))
    assert float(rows[1].split("\t")[2]) == pytest.approx(score, rel=1e-4)
    # --units: a single head; a re-run replaces the folder as a whole
    assert main(["locate", "--model", "demo", "--text", "7", str(paths[0]), "--out", str(out), "--units", "L5H0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["0000_d0.png", "locate.tsv"]


def test_units_restrict_the_sum(demo):
    px = demo.preprocess([half_canvas_digits(1)[0][0]])
    every, sm = text_maps(demo, px, ["a digit"])
    from resi_dual.models.spatial import head_mask

    one, _ = text_maps(demo, px, ["a digit"], head_mask(demo, ["L2H3"]))
    assert torch.allclose(one[0, 0], sm.patches()[0, 0, 2, 3])
    assert torch.allclose(every[0, 0], sm.patches()[0, 0].sum((0, 1)))


def test_ranking_file_selects_top_heads(tmp_path):
    from resi_dual.cli.locate import ranked_heads

    f = tmp_path / "rankings.tsv"
    f.write_text("dataset\tmethod\trank\thead\tscore\n" + "".join(
        f"digits\tS\t{r}\tL{r}H0\t{1 - r / 10}\n" for r in (2, 0, 1)) + "digits\tU\t0\tL4H4\t1\nother\tS\t0\tL5H5\t1\n")
    assert ranked_heads(f, 2, "S") == ["L0H0", "L1H0"]
    assert main(["locate", "--model", "demo", "--text", "x", str(f), "--out", str(tmp_path / "o"),
                 "--ranking", str(f), "--method", "nope"]) == 2


def test_model_without_text_tower_is_one_line(save_tiny_clip, tmp_path, capsys):
    spec = save_tiny_clip(tmp_path / "vision_only")
    img = tmp_path / "a.png"
    Image.new("RGB", (32, 32)).save(img)
    assert main(["locate", "--model", spec, "--text", "a dog", str(img), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no text tower" in err
    assert not (tmp_path / "o").exists()
