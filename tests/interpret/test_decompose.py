"""TextSpan and SOMP: planted atoms are recovered, and picks equal the straightforward algorithms."""

import numpy as np
import pytest

from resi_dual.errors import ResiDualError
from resi_dual.interpret import somp, text_span
from resi_dual.interpret.reference import somp_reference, text_span_reference


def planted(n=1500, D=96, m=400, k=6, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    dic = rng.standard_normal((m, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    atoms = sorted(rng.choice(m, k, replace=False).tolist())
    coef = rng.standard_normal((n, k)) * np.geomspace(5, 1.5, k)
    x = coef @ dic[atoms] + noise * rng.standard_normal((n, D)) + rng.standard_normal(D)
    return x, dic, atoms


def test_somp_recovers_planted_atoms():
    x, dic, atoms = planted()
    d = somp(x, dic, 6, texts=[f"t{i}" for i in range(len(dic))])
    assert sorted(d.indices) == atoms
    assert d.texts == [f"t{i}" for i in d.indices]
    assert d.explained[-1] > 0.99 and np.all(np.diff(d.explained) >= -1e-12)
    # weights: coefficient norms, larger for the atoms planted with larger scales
    assert d.weights[0] == pytest.approx(d.weights.max())


def test_text_span_recovers_planted_atoms():
    x, dic, atoms = planted()
    d = text_span(x, dic, 6, rank=40)
    assert sorted(d.indices) == atoms
    assert d.explained[-1] > 0.99


@pytest.mark.parametrize("seed", [1, 2])
def test_same_picks_as_reference(seed):
    x, dic, _ = planted(n=600, D=64, m=300, k=10, noise=0.5, seed=seed)
    assert somp(x, dic, 15).indices == somp_reference(x, dic, 15)[0]
    assert text_span(x, dic, 12, rank=30).indices == text_span_reference(x, dic, 12, 30)


def test_somp_weights_are_reference_coefficient_norms():
    x, dic, _ = planted(n=400, D=48, m=200, noise=0.3, seed=3)
    d = somp(x, dic, 8)
    picks, coef = somp_reference(x, dic, 8)
    np.testing.assert_allclose(d.weights, np.linalg.norm(coef, axis=1), rtol=1e-8)
    resid = (x - x.mean(0)) - (dic[picks].T @ coef).T
    assert d.explained[-1] == pytest.approx(1 - (resid ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rel=1e-8)


def factored(seed, D=80, p=9, m=250):
    """(coefficients f (500, p), basis (D, p), the explicit data f @ basisᵀ, an (m, D) dictionary): rank p data."""
    rng = np.random.default_rng(seed)
    basis = rng.standard_normal((D, p))
    f = rng.standard_normal((500, p)) * np.geomspace(4, 0.2, p)
    dic = rng.standard_normal((m, D))
    dic /= np.linalg.norm(dic, axis=1, keepdims=True)
    return f, basis, f @ basis.T, dic


def test_factored_data_gives_the_same_picks():
    f, basis, x, dic = factored(4)
    p = f.shape[1]
    assert somp(f, dic, 12, basis=basis).indices == somp(x, dic, 12).indices == somp_reference(x, dic, 12)[0]
    # rank clipped to the data's rank (9): the extra directions of an 80-rank span would be arbitrary
    ts = text_span(f, dic, 8, rank=80, basis=basis)
    assert ts.meta["rank"] == p
    assert ts.indices == text_span_reference(x, dic, 8, p)


def test_bad_inputs():
    x, dic, _ = planted(n=50, D=16, m=20)
    with pytest.raises(ResiDualError, match="empty"):
        somp(x, np.zeros((0, 16)), 3)
    with pytest.raises(ResiDualError, match="dictionary is 8-d"):
        text_span(x, dic[:, :8], 3)


def test_paper_mode_reproduces_the_original_code_when_the_rank_exceeds_the_data():
    f, basis, x, dic = factored(5)
    p = f.shape[1]
    paper = text_span(x, dic, 10, rank=40, mode="paper")
    assert paper.meta == {"rank": 40, "mode": "paper"}
    # the original algorithm, rank 40 > the data's rank 9: its null-space rows change the deflation.
    # Those rows are numerically arbitrary, so only the same (n, D) matrix gives the same picks.
    assert paper.indices == text_span_reference(x, dic, 10, 40)
    assert text_span(f, dic, 10, rank=40, basis=basis, mode="paper").indices[0] == paper.indices[0]
    fast = text_span(f, dic, 8, rank=40, basis=basis)  # 8 < the data's rank: past it the picks are noise
    assert fast.indices == text_span_reference(x, dic, 8, p)
    assert fast.indices[0] == paper.indices[0] and fast.indices[1] != paper.indices[1]
    # at a rank the data reaches, both modes are the original algorithm
    assert text_span(x, dic, 6, rank=p, mode="paper").indices == text_span(f, dic, 6, rank=p, basis=basis).indices
    with pytest.raises(ResiDualError, match="TextSpan mode"):
        text_span(f, dic, 3, basis=basis, mode="exact")
