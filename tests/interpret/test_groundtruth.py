"""The ground-truth check: dictionary, naming, probes, and the check on the shipped demo and a random control."""

import numpy as np
import pytest

from resi_dual.data import world
from resi_dual.interpret import groundtruth as gt


def test_world_dictionary_names_each_value_once():
    texts, attrs = gt.world_dictionary()
    assert len(texts) == len(set(texts)) == sum(len(v) for v in world.ATTRIBUTES.values())
    assert [gt.named_attribute(t) for t in texts] == attrs  # every caption names exactly its attribute


@pytest.mark.parametrize("text, attr", [
    ("something green.", "colour"), ("something on a dark green background.", "background"),
    ("a digit 7.", "class"), ("an object at the top left.", "position"), ("a small object.", "size"),
    ("something on a striped background.", "texture"), ("a photo of a cloud.", None),
])
def test_named_attribute(text, attr):
    assert gt.named_attribute(text) == attr


def test_probe_score_is_one_when_separable_and_near_zero_on_noise():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 50)
    x = np.eye(4)[y] + 0.05 * rng.standard_normal((200, 4))
    train, test = np.arange(0, 200, 2), np.arange(1, 200, 2)
    assert gt.probe_score(x, y, train, test) == pytest.approx(1.0)
    assert abs(gt.probe_score(rng.standard_normal((200, 4)), y, train, test)) < 0.15


def test_strongest_uses_the_share_of_each_attributes_best():
    a = len(world.ATTRIBUTES)
    scores = {"A": np.zeros(a), "B": np.zeros(a), "C": np.full(a, 0.05)}
    scores["A"][0], scores["A"][1] = 0.9, 0.2  # class 0.9, colour 0.2
    scores["B"][0], scores["B"][1] = 0.95, 0.31  # the best on both
    s = gt.strongest(scores)
    assert s["A"][0] == "class" and s["B"][0] == "class" and s["C"] == (None, 0.0)
    scores["A"][1], scores["B"][0] = 0.3, 1.8  # now A's colour is closer to the best colour than A's class to the best class
    assert gt.strongest(scores)["A"][0] == "colour"


@pytest.fixture(scope="module")
def demo_and_control(tmp_path_factory):
    from resi_dual import load_model
    from resi_dual.experiments.groundtruth import random_twin

    twin = random_twin(__import__("resi_dual.models.demo", fromlist=["DEMO_DIR"]).DEMO_DIR,
                       tmp_path_factory.mktemp("control") / "twin", seed=0)
    out = {}
    for name, spec in (("trained", "demo"), ("control", f"demo:{twin}")):
        model = load_model(spec)
        out[name] = (model, gt.trace_world(model, n=400, seed=0))
    return out


@pytest.mark.slow
def test_check_is_deterministic_and_the_control_reads_no_class_or_position(demo_and_control):
    from resi_dual.models.text import get_text_tower
    from resi_dual.spectral.pca import fit_bases

    runs = {}
    for name, (model, source) in demo_and_control.items():
        attrs = gt.world_attributes(source)
        assert attrs.shape == (400, len(world.ATTRIBUTES))
        bases = fit_bases(source, units="heads", progress=False)
        tower = get_text_tower(model)
        runs[name] = gt.check(source, attrs, bases, tower)
        if name == "control":
            assert gt.check(source, attrs, bases, tower) == runs[name]  # deterministic
    heads, pcs, summary = runs["control"]
    assert len(heads) == 36 and len(pcs) == 36 * gt.PC_LEVEL
    # a random tower's heads are random features of the pixels: object class and place are not linearly
    # readable from their first PCs, though plain pixel statistics (the background colour) are
    assert summary["best_head_class"] < 0.15 and summary["best_head_position"] < 0.2
    assert summary["best_head_background"] > 0.8
    # the shipped tower learned place and colour (assets/demo/README.md): some head carries each, and its
    # descriptions name what its heads and PCs carry far more often than the control's do (groundtruth
    # --n 1000 on the committed checkpoint: heads 0.47 vs 0.06, PCs 0.61 vs 0.06)
    trained = runs["trained"][2]
    assert trained["best_head_position"] > 0.6 and trained["best_head_colour"] > 0.8
    assert trained["textspan_agreement"] >= summary["textspan_agreement"] + 0.3
    assert trained["pc_agreement"] >= summary["pc_agreement"] + 0.3
