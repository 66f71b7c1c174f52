"""LP++ against its released code's formulas: logits, initialisation, step sizes, and zero-shot at w = 0."""

import numpy as np
import torch

from resi_dual.adapters import lpp, peers
from tests.adapters.test_peers import almost_alike_classifier, clustered, random_classifier


def test_zero_visual_weights_at_init_multipliers_is_zero_shot():
    tr, te = clustered(8), clustered(20, seed=1)
    w = random_classifier()
    init = lpp.lpp_init(tr, w)
    got = lpp.lpp_logits(te.embeddings, torch.zeros_like(init["w"]), torch.zeros(4), init["alpha"], w)
    zs = peers.zero_shot_logits(te.embeddings, w, 100.0)
    assert torch.allclose(got, init["alpha"][0] / 100.0 * zs, atol=1e-5)
    assert torch.equal(got.argmax(1), zs.argmax(1))


def test_init_and_step_sizes_follow_the_released_code():
    tr, w = clustered(5), random_classifier()
    init = lpp.lpp_init(tr, w, seed=3)
    f, y = tr.embeddings.double().numpy(), tr.labels.numpy()
    sums = np.stack([f[y == k].sum(0) for k in range(4)])  # compute_centroids: class sums, not means
    assert np.allclose(init["w"].numpy(), sums, atol=1e-5)
    t = w.double().numpy()
    own = [np.mean(f[y == k] @ t[k]) for k in range(4)]
    assert np.isclose(float(init["alpha"][0]), 250 * np.mean(own), rtol=1e-5)
    assert torch.all(init["alpha"] == init["alpha"][0])
    assert np.isclose(init["lr_w"], 4 * len(f) / np.linalg.eigvalsh(f.T @ f).max(), rtol=1e-5)
    assert np.isclose(init["lr_alpha"], len(f) / (4 * ((f @ t.T) ** 2).sum(0).max()), rtol=1e-5)
    assert float(init["b"].abs().max()) <= 1 / np.sqrt(16)


def test_logits_equal_the_formula_and_parameters_are_counted():
    tr, va, te = clustered(8), clustered(4, seed=1), clustered(30, seed=2)
    w = almost_alike_classifier()
    res = peers.run_peer("lp++", tr, va, w, 100.0)
    s = res.state
    direct = torch.stack([te.embeddings @ (s["w"][k] + s["alpha"][k] * w[k]) + s["b"][k] for k in range(4)], 1)
    assert torch.allclose(res.predict(te.embeddings), direct, atol=1e-5)
    assert res.trainable_parameters == 4 * 16 + 2 * 4
    assert res.lr_choice == "lipschitz" and res.candidates == 1
    assert 1 <= res.settings["best_iteration"] <= lpp.ITERATIONS
    zs = peers.accuracy(peers.zero_shot_logits(te.embeddings, w, 100.0), te.labels)
    assert res.accuracy(te) > zs + 0.3


def test_alpha_moves_with_the_accumulated_gradient_every_tenth_iteration():
    tr, va = clustered(6), clustered(4, seed=1)
    w = almost_alike_classifier()
    a0 = lpp.lpp_init(tr, w)["alpha"]
    nine = lpp.lp_plus_plus(tr, va, w, iterations=9)
    assert torch.equal(nine.state["alpha"], a0)  # untouched before the 10th iteration
    ten = lpp.lp_plus_plus(tr, va, w, iterations=10)
    if ten.settings["best_iteration"] == 10:
        assert not torch.equal(ten.state["alpha"], a0)
