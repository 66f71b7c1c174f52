"""The generated world: deterministic per seed, and its ground truth is what the pixels show."""

import numpy as np
import pytest

from resi_dual.data import world as W
from resi_dual.errors import ResiDualError

COLOURS = np.asarray(list(W.COLOURS.values()), dtype=np.float64)
SIZES = np.asarray(list(W.SIZES.values()))


@pytest.fixture(scope="module")
def test_world():
    return W.generate(400, seed=3, split="test", objects="all")


def test_generator_is_deterministic_per_seed():
    a, b = W.generate(50, seed=7), W.generate(50, seed=7)
    assert np.array_equal(a.images, b.images) and all(np.array_equal(a.attrs[k], b.attrs[k]) for k in W.ATTRIBUTES)
    c = W.generate(50, seed=8)
    assert not np.array_equal(a.images, c.images)
    # splits draw from disjoint source images and differ too
    assert not np.array_equal(W.generate(50, seed=7, split="val").images, a.images)


def test_attributes_are_drawn_independently_and_cover_every_value(test_world):
    for name, values in W.ATTRIBUTES.items():
        assert set(test_world.attrs[name].tolist()) == set(range(len(values))), name
    # independence, roughly: colour frequencies within each position stay near uniform
    for p in range(len(W.POSITIONS)):
        counts = np.bincount(test_world.attrs["colour"][test_world.attrs["position"] == p], minlength=len(W.COLOURS))
        assert counts.min() > 0


def _foreground(w, i):
    """(fg mask, blend t per pixel, image, colour) of image i, from the background re-rendered alone."""
    bg = W.background(int(w.attrs["texture"][i]), int(w.attrs["background"][i]), tuple(w.phase[i])).astype(float)
    img = w.images[i].astype(float)
    colour = COLOURS[w.attrs["colour"][i]]
    d = colour - bg
    t = ((img - bg) * d).sum(-1) / np.maximum((d * d).sum(-1), 1e-9)
    return (img != bg).any(-1), t, img, bg, colour


def test_ground_truth_matches_the_pixels(test_world):
    w = test_world
    for i in range(len(w)):
        fg, t, img, bg, colour = _foreground(w, i)
        v = w.values(i)
        assert fg.sum() >= 3, v
        # colour: every foreground pixel lies between the background and the drawn colour, the stroke's
        # body is exactly that colour, and no other object colour appears anywhere
        blend = bg + np.clip(t, 0, 1)[..., None] * (colour - bg)
        assert np.abs(img - blend)[fg].max() <= 1.0, v
        assert (img == colour).all(-1).any(), v
        others = np.delete(COLOURS, w.attrs["colour"][i], axis=0)
        assert not (img[:, :, None, :] == others[None, None]).all(-1).any(), v
        # position: the object's centre of mass lies in the named place
        ys, xs = np.nonzero(fg)
        wt = np.clip(t, 0, 1)[fg]
        cy, cx = (ys * wt).sum() / wt.sum(), (xs * wt).sum() / wt.sum()
        if v["position"] == "center":
            assert 10 <= cy < 22 and 10 <= cx < 22, (v, cy, cx)
        else:
            assert (cy < 16) == v["position"].startswith("top") and (cx < 16) == v["position"].endswith("left"), (v, cy, cx)
        # size: the object's extent picks its size class
        extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
        assert SIZES[np.argmin(np.abs(SIZES - extent))] == W.SIZES[v["size"]], (v, extent)


def test_object_boxes_hold_exactly_the_objects_pixels(test_world):
    masks, boxes = W.object_boxes(test_world)
    for i in range(0, len(test_world), 7):
        fg = _foreground(test_world, i)[0]
        t, l, b, r = boxes[i]
        assert np.array_equal(masks[i], fg) and fg[t:b, l:r].sum() == fg.sum()
        # tight: every side of the box touches the object
        assert fg[t].any() and fg[b - 1].any() and fg[:, l].any() and fg[:, r - 1].any()
        assert max(b - t, r - l) <= W.SIZES[test_world.values(i)["size"]] + 1


def test_heldout_objects_and_combinations():
    seen = W.generate(600, seed=0, split="train", objects="seen", combos="seen")
    unseen = [W.CLASSES.index(a) for a in W.UNSEEN_ANIMALS]
    assert not np.isin(seen.attrs["class"], unseen).any()
    assert not (seen.attrs["colour"] == W.heldout_colour(seen.attrs["class"])).any()
    held = W.generate(100, seed=0, split="test", objects="seen", combos="heldout")
    assert (held.attrs["colour"] == W.heldout_colour(held.attrs["class"])).all()
    assert set(W.generate(100, seed=0, objects="unseen").attrs["class"].tolist()) <= set(unseen)


def test_captions_name_exactly_the_chosen_attributes():
    assert W.caption({"size": "small", "colour": "red", "class": "sneaker", "position": "top left",
                      "texture": "striped", "background": "navy"}) == \
        "a small red sneaker at the top left on a striped navy background."
    assert W.caption({"colour": "blue"}) == "something blue."
    assert W.caption({"class": "digit 7"}) == "a digit 7."
    assert W.caption({"size": "large", "colour": "orange"}) == "a large orange object."
    assert W.caption({"position": "center"}) == "something at the center."
    w = W.generate(40, seed=1)
    caps, named = W.random_captions(w, np.random.default_rng(0))
    assert named.any(1).all() and len(caps) == 40
    for i in range(40):
        v = w.values(i)
        for j, a in enumerate(W.ATTRIBUTES):
            if named[i, j]:
                assert v[a] in caps[i], (caps[i], a)
    with pytest.raises(ResiDualError, match="unknown world attribute"):
        W.caption({"shape": "round"})


def test_world_as_a_dataset_spec_and_a_folder(tmp_path):
    from resi_dual.data.specs import load_dataset

    ds = load_dataset("world:attr=colour,n=30,seed=2", "test")
    assert len(ds) == 30 and ds.class_names == list(W.COLOURS) and ds.name == "world-colour"
    w = W.generate(30, seed=2, split="test")
    assert np.array_equal(ds.labels, w.attrs["colour"])
    assert np.array_equal(np.asarray(ds[0][0]), w.images[0])
    unseen = load_dataset("world:objects=unseen,n=20", "val")
    assert unseen.class_names == list(W.UNSEEN_ANIMALS) and unseen.labels.max() < 5
    with pytest.raises(ResiDualError, match="attr must be one of"):
        load_dataset("world:attr=shape", "test")

    folder = W.write_folder(w, tmp_path / "w", attr="position")
    rows = (folder / "attributes.tsv").read_text().splitlines()
    assert len(rows) == 31 and rows[0].split("\t")[1:] == list(W.ATTRIBUTES)
    back = load_dataset(f"folder:{folder}", "train")
    assert set(back.class_names) <= set(W.POSITIONS)
    with pytest.raises(ResiDualError, match="exists"):
        W.write_folder(w, folder)
