import math

import numpy as np
import pytest
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral import neighbours as twonn_mod
from resi_dual.spectral.lower_bound import select_smallest
from resi_dual.spectral.twonn import TwoNN, subsample_rows, two_nearest_neighbours, twonn_fit


def _brute(x):
    x = torch.as_tensor(x, dtype=torch.float64)
    d = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist")
    d.fill_diagonal_(float("inf"))
    v = torch.topk(d, 2, dim=1, largest=False).values
    return v[:, 0], v[:, 1]


def _linear_subspace(n, k, d, seed):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g, dtype=torch.float64)
    basis = torch.linalg.qr(torch.randn(d, k, generator=g, dtype=torch.float64))[0]
    return (z @ basis.T).float()


def test_linear_10d_subspace_in_512d_with_duplicates():
    x = _linear_subspace(3000, 10, 512, seed=0)
    x = torch.cat([x, x[:150], x[:20]])  # duplicates, some three times
    est = TwoNN().fit(x)
    assert est.n_duplicates_ == 150 + 150 + 20  # every original and every copy of the first 150 rows
    # points whose nearest neighbour is duplicated have r1 = r2: dropped as ties (docs/DESIGN.md §5)
    assert est.n_ties_ > 0 and est.n_fit_ == math.floor((3170 - 320 - est.n_ties_) * 0.9)
    assert abs(est.dimension_ - 10) / 10 < 0.05, est.dimension_


def test_curved_2d_manifold():
    g = torch.Generator().manual_seed(1)
    n = 3000
    t = 1.5 * math.pi * (1 + 2 * torch.rand(n, generator=g, dtype=torch.float64))
    h = 20 * torch.rand(n, generator=g, dtype=torch.float64)
    roll = torch.stack([t * torch.cos(t), h, t * torch.sin(t)], 1)  # swiss roll
    embed = torch.linalg.qr(torch.randn(64, 3, generator=g, dtype=torch.float64))[0]
    x = roll @ embed.T
    x = torch.cat([x, x[:50]])
    est = TwoNN().fit(x)
    assert abs(est.dimension_ - 2) / 2 < 0.10, est.dimension_


@pytest.mark.parametrize("kind", ["lowdim", "isotropic"])
def test_neighbours_are_exact_with_duplicates_and_ties(kind, monkeypatch):
    g = torch.Generator().manual_seed(2)
    if kind == "lowdim":
        x = _linear_subspace(700, 4, 40, seed=2)
    else:  # no decaying spectrum: the 8-dim bound certifies almost nothing, brute force takes over
        x = torch.randn(700, 40, generator=g)
    x = torch.cat([x, x[:30], x[:5]])
    # an exact tie far from the cloud: the middle point has r1 = r2 = 1
    centre = torch.zeros(1, 40)
    centre[0, 0] = 100.0
    e1 = torch.zeros(1, 40)
    e1[0, 0] = 1.0
    x = torch.cat([x, centre, centre + e1, centre - e1])
    calls = []
    orig = twonn_mod._brute_force
    monkeypatch.setattr(twonn_mod, "_brute_force", lambda *a: calls.append(a[3].numel()) or orig(*a))
    r1, r2 = two_nearest_neighbours(x, block_rows=128, variance_kept=0.5, min_dims=8)
    b1, b2 = _brute(x)
    torch.testing.assert_close(r1, b1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r2, b2, rtol=1e-12, atol=1e-12)
    assert (r1 == 0).sum() == 30 + 30 + 5  # exact zeros for duplicates, never tiny rounding residues
    assert r1[-3] == r2[-3] == 1.0
    if kind == "isotropic":
        assert calls and sum(calls) > 100  # the fallback path ran and stayed exact


def test_linear_map_measures_mapped_distances():
    g = torch.Generator().manual_seed(4)
    f = torch.randn(500, 6, generator=g, dtype=torch.float64)
    m = torch.randn(6, 6, generator=g, dtype=torch.float64)
    r1, r2 = two_nearest_neighbours(f, linear_map=m)
    b1, b2 = _brute(f @ m.T)
    torch.testing.assert_close(r1, b1, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(r2, b2, rtol=1e-10, atol=1e-12)


def test_agrees_with_scikit_dimension():
    skdim = pytest.importorskip("skdim")
    x = _linear_subspace(2000, 6, 64, seed=5).numpy()
    ours = TwoNN().fit(x).dimension_
    theirs = skdim.id.TwoNN().fit(x).dimension_
    assert abs(ours - theirs) / theirs < 0.01


def test_fit_formula_on_known_ratios():
    # μ = r2/r1 following a Pareto law with exponent d has −log(1−F) = d log μ exactly at the quantiles
    d = 3.0
    n = 1000
    f = np.arange(1, n + 1) / (n + 1)
    mu = (1 - f) ** (-1 / d)
    r1 = torch.ones(n, dtype=torch.float64)
    est, n_fit = twonn_fit(r1, torch.from_numpy(mu), discard_fraction=0.1)
    assert n_fit == 900 and abs(est - d) / d < 0.01


def test_bad_inputs():
    with pytest.raises(ResiDualError, match="at least 3"):
        TwoNN().fit(np.zeros((2, 3)))
    x = np.random.default_rng(0).normal(size=(20, 3))
    x[3, 1] = np.nan
    with pytest.raises(ResiDualError, match="non-finite"):
        TwoNN().fit(x)
    with pytest.warns(UserWarning, match="dimension reported as 0"):
        assert TwoNN().fit(np.ones((10, 4))).dimension_ == 0.0
    # only duplicates and one odd point: too few usable ratios is an error, not NaN
    pts = np.concatenate([np.zeros((8, 2)), np.ones((8, 2)), [[5.0, 5.0]]])
    with pytest.raises(ResiDualError, match="distinct"):
        TwoNN().fit(pts)


def test_subsample_is_seeded_and_sorted():
    a = subsample_rows(1000, 100, seed=7)
    assert np.array_equal(a, subsample_rows(1000, 100, seed=7)) and np.all(np.diff(a) > 0)
    assert not np.array_equal(a, subsample_rows(1000, 100, seed=8))
    assert subsample_rows(50, 100, seed=7) is None
    x = _linear_subspace(600, 3, 10, seed=6)
    e = TwoNN(max_samples=300, random_state=1).fit(x)
    assert e.n_samples_ == 300


@pytest.mark.parametrize("kk", [1, 4, 49])
def test_grouped_selection_equals_topk(kk):
    g = torch.Generator().manual_seed(7)
    d2 = torch.randint(0, 400, (37, 32 * 128), generator=g).float()  # many ties
    d2[:, -40:] = float("inf")  # padding columns
    d2[3, :] = 5.0  # a row of equal values
    vals, idx = select_smallest(d2, kk)
    ref = torch.topk(d2, kk, dim=1, largest=False, sorted=True).values
    assert torch.equal(vals, ref)
    assert torch.equal(d2.gather(1, idx), vals)  # indices point at those values
    assert (idx.sort(1).values.diff(dim=1) > 0).all()  # and are distinct columns


def test_all_coordinates_bound_certifies_on_first_pass():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(3000, 24, generator=g) * torch.logspace(0, -2, 24)  # D' ≤ FULL_DIMS: no PCA, all 24 coords
    x = torch.cat([x, x[:10]])
    st = {}
    threads = torch.get_num_threads()
    r1, r2 = two_nearest_neighbours(x, stats=st)
    assert torch.get_num_threads() == threads  # the single-threaded search restores torch's setting
    b1, b2 = _brute(x)
    torch.testing.assert_close(r1, b1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r2, b2, rtol=1e-12, atol=1e-12)
    assert st["bound_dims"] == 24 and st["left_after_pass1"] <= 3, st  # tight up to rounding


def test_cost_model_picks_the_bounding_dimension():
    g = torch.Generator().manual_seed(9)
    x = _linear_subspace(2500, 6, 300, seed=9) + 1e-4 * torch.randn(2500, 300, generator=g)
    st = {}
    r1, r2 = two_nearest_neighbours(x, stats=st)
    b1, b2 = _brute(x)
    torch.testing.assert_close(r1, b1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r2, b2, rtol=1e-12, atol=1e-12)
    # D' = 300 > FULL_DIMS: a few axes bound a 6-dim cloud well; far fewer than 300, and little brute force
    assert 8 <= st["bound_dims"] <= 64 and st["left_after_pass2"] <= 25, st
    # a deliberately poor bound (1 axis) stays exact through the fallbacks
    st1 = {}
    s1, s2 = two_nearest_neighbours(x, bound_dims=1, stats=st1)
    assert torch.equal(s1, r1) and torch.equal(s2, r2) and st1["left_after_pass2"] > 0


def test_second_pass_on_wide_rows_is_exact():
    # N > 2·49·32: the second pass's 49 candidates come from the grouped selection; 8 axes of a
    # 10-dim cloud leave many queries to it, of which only candidates below the first r2 are refined
    x = _linear_subspace(4000, 10, 40, seed=10)
    x = torch.cat([x, x[:7]])
    st = {}
    r1, r2 = two_nearest_neighbours(x, bound_dims=8, stats=st)
    b1, b2 = _brute(x)
    torch.testing.assert_close(r1, b1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r2, b2, rtol=1e-12, atol=1e-12)
    assert st["left_after_pass1"] > 2000 and st["left_after_pass2"] < st["left_after_pass1"] // 4, st
