"""The hand-written training step (ScalingObjective), the validation shortcut and the thread picker
against the plain autograd loop they replace."""

import pytest
import torch
import torch.nn.functional as F

from adapter_synth import informative_task, make_world
from resi_dual.adapters import AdapterConfig, TrainConfig, build_adapter, fit
from resi_dual.adapters.cache import CachedSplit
from resi_dual.adapters.training import ScalingEvaluator, ScalingObjective, ThreadPicker, resolve_products
from resi_dual.errors import ResiDualError

VARIANTS = [  # (variant, mean mode): per-component λ, one λ per head with scaled means, means added, output PCA
    ("residual", None),
    ("residual-full", None),
    ("coarse", None),
    ("residual", "add"),
    ("spectral", None),
]


@pytest.fixture(scope="module")
def world():
    return make_world(120, 40)


@pytest.fixture(scope="module")
def task():
    """A world where two heads carry the label: training λ helps on val, so a fit keeps trained weights
    (epoch ≥ 1) rather than its start, and comparisons between fits compare trained λ."""
    _, _, (train, val), bases, clf = informative_task(200, 80)
    return None, None, train, val, bases, clf


def _adapter(world, variant, mean_mode, seed=4):
    _, _, train, _, bases, clf = world
    return build_adapter(AdapterConfig(variant, mean_mode=mean_mode, init="paper", seed=seed), train, clf, 30.0,
                         bases=bases)


@pytest.mark.parametrize("variant,mean_mode", VARIANTS)
def test_hand_gradient_equals_autograd_float64(world, variant, mean_mode):
    ad = _adapter(world, variant, mean_mode).double()
    s = ad.encode(world[2])
    coef, fixed, labels = s.coef[:20].double(), s.fixed[:20].double(), s.labels[:20]
    if mean_mode is None and variant == "residual":  # a row whose embedding is 0: F.normalize's ε branch
        coef[3], fixed[3] = 0.0, 0.0
    loss, grad = ScalingObjective(ad, 32)(coef, fixed, labels)
    ad.zero_grad()
    out = F.cross_entropy(ad(coef, fixed), labels)
    out.backward()
    want = out.detach()
    assert grad.dtype == torch.float64 and grad.shape == ad.module.lam.shape
    assert abs(float(loss) - float(want)) < 1e-12 * max(1.0, abs(float(want)))
    ref = ad.module.lam.grad
    assert float(ref.abs().max()) > 1e-3  # a gradient that says something
    assert torch.allclose(grad, ref, rtol=1e-10, atol=1e-12 * float(ref.abs().max())), float((grad - ref).abs().max())


@pytest.mark.parametrize("variant,mean_mode", VARIANTS)
def test_validation_shortcut_matches_the_full_forward(world, variant, mean_mode):
    ad = _adapter(world, variant, mean_mode)
    for src in (world[2], world[3]):
        s = ad.encode(src)
        ev = ScalingEvaluator(ad, s, block_rows=16)  # several blocks
        with torch.no_grad():
            for scale in (1.0, 0.3):
                ad.module.lam.mul_(scale)
                assert ev.accuracy() == ad.accuracy(s)


@pytest.mark.parametrize("variant,mean_mode", [("residual", None), ("coarse", None)])
def test_fit_with_hand_gradient_matches_autograd_and_is_deterministic(task, variant, mean_mode):
    _, _, train, val, _, _ = task

    def run(hand, seed=0):
        ad = _adapter(task, variant, mean_mode)
        tc = TrainConfig(lr=0.2, max_epochs=4, patience=4, seed=seed, progress=False, hand_gradient=hand,
                         products="float32")
        res = fit(ad, ad.encode(train), ad.encode(val), tc)
        return ad.module.lam.detach().clone(), res

    (a, ra), (b, rb), (c, rc), (d, rd) = run(True), run(True), run(False), run(True, seed=1)
    assert (ra.products, rc.products) == ("float32", "autograd")
    assert min(ra.best_epoch, rd.best_epoch) >= 1  # trained λ kept, not the start
    assert torch.equal(a, b) and ra.history == rb.history  # same seed, same λ, bit for bit
    assert not torch.equal(a, d)
    # against the autograd loop: the same λ up to float32 rounding, the same selection
    assert torch.allclose(a, c, rtol=1e-4, atol=1e-5), float((a - c).abs().max())
    assert (ra.best_epoch, ra.best_val_accuracy) == (rc.best_epoch, rc.best_val_accuracy)
    assert [h["val_accuracy"] for h in ra.history] == [h["val_accuracy"] for h in rc.history]
    assert [h["loss"] for h in ra.history] == pytest.approx([h["loss"] for h in rc.history], rel=1e-5)


@pytest.mark.parametrize("variant,mean_mode", VARIANTS)
def test_bfloat16_products_round_only_the_two_products(world, variant, mean_mode):
    ad = _adapter(world, variant, mean_mode)
    s = ad.encode(world[2])
    batch = s.coef[:64], s.fixed[:64], s.labels[:64]
    l32, g32 = ScalingObjective(ad, 64, "float32")(*batch)
    bf = ScalingObjective(ad, 64, "bfloat16")
    l16, g16 = bf(*batch)
    assert bf.products == "bfloat16" and bf.V_in.dtype == torch.bfloat16
    assert l16.dtype == g16.dtype == torch.float32
    assert not torch.equal(g16, g32)  # the rounding happened
    # bfloat16 keeps 8 bits: ~0.4 % on the gradient, measured 0.38-0.45 % here, direction intact
    assert abs(float(l16 - l32)) < 5e-3 * float(l32)
    assert float((g16 - g32).norm() / g32.norm()) < 2e-2
    assert float(F.cosine_similarity(g16, g32, 0)) > 0.9995


def test_bfloat16_fit_is_deterministic_and_lands_next_to_float32(task):
    _, _, train, val, _, _ = task

    def run(products):
        ad = _adapter(task, "residual", None)
        tc = TrainConfig(lr=0.2, max_epochs=4, patience=4, progress=False, products=products)
        res = fit(ad, ad.encode(train), ad.encode(val), tc)
        return ad.module.lam.detach().clone(), res

    (a, ra), (b, rb), (c, rc) = run("bfloat16"), run("bfloat16"), run("float32")
    assert ra.products == "bfloat16" and torch.equal(a, b) and ra.history == rb.history
    assert ra.best_epoch == rc.best_epoch >= 1
    assert not torch.equal(a, c)
    assert float((a - c).norm() / c.norm()) < 5e-3  # measured 1.6e-3 over 4 epochs at this lr
    assert [h["val_accuracy"] for h in ra.history] == [h["val_accuracy"] for h in rc.history]


def test_products_auto_follows_the_measurement_and_the_dtype(monkeypatch):
    from resi_dual.adapters import scaling as training

    shapes = []
    monkeypatch.setattr(training, "faster_products", lambda b, k, d: shapes.append((b, k, d)) or "bfloat16")
    assert resolve_products("auto", torch.float32, (64, 100, 32)) == "bfloat16"
    assert shapes == [(64, 100, 32)]  # measured on the shape it was given
    assert resolve_products("auto", torch.float32) == "bfloat16" and shapes[-1] == training.AUTO_SHAPE
    assert resolve_products("float32", torch.float32) == "float32"
    assert resolve_products("auto", torch.float64) == "float64"  # the float64 tests are never rounded
    monkeypatch.setattr(training, "faster_products", lambda b, k, d: "float32")
    assert resolve_products("auto", torch.float32) == "float32"
    assert resolve_products("bfloat16", torch.float32) == "bfloat16"  # asked for explicitly: honoured
    with pytest.raises(ResiDualError, match="products must be one of"):
        resolve_products("fp8", torch.float32)


def test_thread_picker_keeps_the_faster_count():
    p = ThreadPicker(2, period=6, probe=2)
    p.check(lambda t: (torch.ones(3),))  # the same result at both counts: switching allowed
    assert p.enabled
    seen = []
    for i in range(12):
        t, probe = p.next()
        seen.append((t, probe))
        if probe:  # first window: 1 thread faster; second window: 2 threads faster
            p.record(t, (0.001 if t == 1 else 0.005) if i < 6 else (0.005 if t == 1 else 0.001))
    assert seen == [(1, True), (2, True), (1, True), (2, True), (1, False), (1, False),
                    (1, True), (2, True), (1, True), (2, True), (2, False), (2, False)]
    assert p.choices == [1, 2]
    flaky = ThreadPicker(2)
    flaky.check(lambda t: (torch.tensor([float(t)]),))  # differs between counts: never switch
    assert not flaky.enabled and flaky.next() == (2, False)
    assert ThreadPicker(1).next() == (1, False)


def test_products_at_another_thread_count_give_the_same_bits(world):
    ad = _adapter(world, "residual", None)
    s = ad.encode(world[2])
    obj = ScalingObjective(ad, 64)
    n = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        ref = obj(s.coef[:64], s.fixed[:64], s.labels[:64])
        obj.threads = 2
        two = obj(s.coef[:64], s.fixed[:64], s.labels[:64])
        assert torch.get_num_threads() == 1  # only the products ran at 2
    finally:
        torch.set_num_threads(n)
    assert all(torch.equal(x, y) for x, y in zip(ref, two))


def test_fit_restores_the_thread_count_and_falls_back_for_other_adapters(task):
    _, _, train, val, _, clf = task
    n = torch.get_num_threads()
    ad = _adapter(task, "residual", None)
    fit(ad, ad.encode(train), ad.encode(val), TrainConfig(max_epochs=1, progress=False))
    assert torch.get_num_threads() == n and ad.module.lam.grad is None
    lin = build_adapter(AdapterConfig("linear"), train, clf, 30.0)  # autograd loop
    w0 = lin.module.linear.weight.detach().clone()
    res = fit(lin, lin.encode(train), lin.encode(val), TrainConfig(lr=0.01, max_epochs=2, progress=False))
    assert res.products == "autograd" and res.epochs == 2 and res.best_epoch >= 1
    assert not torch.equal(lin.module.linear.weight, w0)
    s = ad.encode(val)  # float64 coefficients with a float32 adapter: the autograd loop, same as before
    assert not ScalingObjective.supports(ad, CachedSplit(s.coef.double(), s.fixed.double(), s.labels))
