import warnings

import numpy as np
import pytest
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral.intrinsic_dim import linear_id, participation_ratio, pc1_ratio, unit_intrinsic_dimensions
from resi_dual.spectral.pca import fit_bases
from resi_dual.spectral.similarity import similarity_matrix, similarity_table, spectral_cosine
from resi_dual.spectral.twonn import TwoNN

from spectral_sources import make_source


def test_spectral_cosine_identity_symmetry_and_orthogonality():
    g = torch.Generator().manual_seed(0)
    v = torch.linalg.qr(torch.randn(20, 20, generator=g, dtype=torch.float64))[0].T  # orthonormal rows
    w = torch.tensor([5.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert spectral_cosine(v[:4], w, v[:4], w) == pytest.approx(1.0, abs=1e-12)
    # same subspace listed in another order and with other signs: still 1
    assert spectral_cosine(v[:4], w, -v[:4], w) == pytest.approx(1.0, abs=1e-12)
    # orthogonal subspaces: 0
    assert spectral_cosine(v[:4], w, v[4:8], w) == pytest.approx(0.0, abs=1e-12)
    a, b = (v[:3] + 0.3 * v[3:6]) / np.sqrt(1.09), v[:5]
    wa, wb = torch.tensor([4.0, 2.0, 1.0]), torch.tensor([3.0, 3.0, 1.0, 1.0, 0.5])
    s_ab, s_ba = spectral_cosine(a, wa, b, wb), spectral_cosine(b, wb, a, wa)
    assert s_ab == pytest.approx(s_ba, abs=1e-12) and 0.5 < s_ab < 1.0


def test_similarity_table_between_stores():
    a = fit_bases(make_source(n=300, seed=0), progress=False)
    # same model, other data: same readout (seeded generator draws the readout first), other samples
    src_b = make_source(n=300, seed=0)
    src_b._enc.heads = src_b._enc.heads * torch.tensor([0.2, 3.0, 1.0, 0.5])  # other spectra
    b = fit_bases(src_b, progress=False)
    rows = similarity_table(a, a)
    assert all(r.similarity == pytest.approx(1.0, abs=1e-9) for r in rows)
    assert [r.unit for r in rows] == a.labels
    ab = {r.unit: r.similarity for r in similarity_table(a, b)}
    ba = {r.unit: r.similarity for r in similarity_table(b, a)}
    for lab in ab:
        assert ab[lab] == pytest.approx(ba[lab], abs=1e-12)
    assert ab["emb"] == pytest.approx(1.0) and max(v for k, v in ab.items() if "H" in k) < 0.99
    m = similarity_matrix(a, a, ["L0H0", "L0H1"], ["L0H0", "L0H1", "L1H0"])
    assert m.shape == (2, 3) and m[0, 0] == pytest.approx(1.0) and m[1, 1] == pytest.approx(1.0) and m[0, 1] < 1.0


def test_similarity_refuses_different_models():
    a = fit_bases(make_source(n=100), progress=False)
    other = fit_bases(make_source(n=100, n_heads=2), progress=False)
    with pytest.raises(ResiDualError, match="different models"):
        similarity_table(a, other)
    b = fit_bases(make_source(n=100), progress=False)
    a.meta["weights_hash"], b.meta["weights_hash"] = "aaaa" * 16, "bbbb" * 16
    with pytest.raises(ResiDualError, match="different model weights"):
        similarity_table(a, b)


def test_spectral_measures():
    ev = torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64)
    assert linear_id(ev, 10.0, 0.99) == 4 and linear_id(ev, 10.0, 0.65) == 2 and linear_id(ev, 10.0, 0.7) == 3
    assert pc1_ratio(ev, 10.0) == pytest.approx(0.4)
    assert participation_ratio(ev) == pytest.approx(100.0 / 30.0)
    assert participation_ratio(torch.ones(7)) == pytest.approx(7.0)
    zero = torch.zeros(3, dtype=torch.float64)
    assert linear_id(zero, 0.0) == 0 and pc1_ratio(zero, 0.0) == 0.0 and participation_ratio(zero) == 0.0


def test_unit_intrinsic_dimensions_table():
    src = make_source(n=400)
    bases = fit_bases(src, progress=False)
    rows = unit_intrinsic_dimensions(src, bases, twonn_samples=300, progress=False)
    assert [r.unit for r in rows] == bases.labels
    for r in rows:
        ev, total = bases.explained_variance[r.unit], bases.total_variance[r.unit]
        assert r.linear_id == linear_id(ev, total, 0.99) and r.pc1_ratio == pytest.approx(pc1_ratio(ev, total))
        assert r.participation_ratio == pytest.approx(participation_ratio(ev))
        assert r.twonn_id > 0 and r.ratio == pytest.approx(r.linear_id / r.twonn_id)
    # TwoNN through R_u equals TwoNN on the materialised output-space vectors of the same rows
    from resi_dual.spectral.twonn import subsample_rows

    rows_sub = subsample_rows(400, 300, 0)
    x = src.contributions(["L1H0"], rows=rows_sub, dtype=torch.float64)[:, 0]
    direct = TwoNN(max_samples=None).fit(x).dimension_
    assert next(r for r in rows if r.unit == "L1H0").twonn_id == pytest.approx(direct, rel=1e-8)
    # the discard fraction reaches TwoNN's fit (the grid's intrinsic-dim.twonn-discard)
    kept_all = unit_intrinsic_dimensions(src, bases, twonn_samples=300, twonn_discard=0.0, progress=False)
    direct_all = TwoNN(discard_fraction=0.0, max_samples=None).fit(x).dimension_
    assert direct_all != pytest.approx(direct, rel=1e-6)
    assert next(r for r in kept_all if r.unit == "L1H0").twonn_id == pytest.approx(direct_all, rel=1e-8)
    skipped = unit_intrinsic_dimensions(src, bases, twonn_samples=0, progress=False)
    assert all(r.twonn_id == -1 and r.ratio == -1 for r in skipped)


def test_constant_unit_reports_zeros():
    src = make_source(n=80)
    src._enc.heads[:, 1, 0] = 0.0
    src._enc.sigma[:] = 1.0
    src._enc.mu[:] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bases = fit_bases(src, units="L1H0,L1H1", progress=False)
        rows = {r.unit: r for r in unit_intrinsic_dimensions(src, bases, twonn_samples=80, progress=False)}
    r = rows["L1H0"]
    assert (r.linear_id, r.twonn_id, r.ratio, r.pc1_ratio, r.participation_ratio) == (0, 0.0, 0.0, 0.0, 0.0)
    assert rows["L1H1"].linear_id > 0
    with pytest.warns(UserWarning, match="zero variance"):
        sim = similarity_table(bases, bases)
    assert {s.unit: s.similarity for s in sim}["L1H0"] == 0.0
