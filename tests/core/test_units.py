import pytest
import torch

from resi_dual.errors import ResiDualError
from resi_dual.core.encodings import Readout, UnitEncodings
from resi_dual.core.units import Composition, Unit, block_share, head_share


def test_labels_round_trip():
    for u in [Unit("emb"), Unit("mlp", 3), Unit("head", 11, 7)]:
        assert Unit.from_label(u.label) == u
    with pytest.raises(ResiDualError):
        Unit.from_label("L3X7")


def test_composition_json_and_select():
    c = Composition("x", "test", n_layers=2, n_heads=3, d_model=8, d_head=4, d_out=5)
    assert c.labels[:5] == ["emb", "L0H0", "L0H1", "L0H2", "L0.mlp"]
    assert len(c) == 1 + 2 * 4
    assert Composition.from_json(c.to_json()) == c
    assert len(c.select("heads")) == 6 and c.select("L1.mlp,emb") == [8, 0]
    # the paper's shares sum to one over all units
    assert abs(block_share(2) * 3 + head_share(2, 3) * 6 - 1.0) < 1e-12


def test_readout_apply_matches_affine():
    torch.manual_seed(0)
    c = Composition("x", "test", n_layers=2, n_heads=3, d_model=8, d_head=4, d_out=5)
    U = len(c)
    r = Readout(torch.randn(5, 8), torch.randn(2, 3, 5, 4), torch.randn(U, 5), torch.randn(U, 5), torch.randn(U, 5))
    n = 7
    enc = UnitEncodings(c, r, torch.randn(n, 3, 8), torch.randn(n, 2, 3, 4), torch.randn(n), torch.rand(n) + 0.5, torch.zeros(n, 5))
    full = enc.contributions()
    assert full.shape == (n, U, 5)
    for i in range(U):
        a, k = r.affine(c, i)
        direct = enc.features(i) @ a.T + k
        torch.testing.assert_close(full[:, i], direct, rtol=1e-5, atol=1e-5)
    sub = enc.contributions(["L1H2", "emb"])
    torch.testing.assert_close(sub, full[:, [c.index("L1H2"), 0]])


def test_relative_error_is_the_row_norm_ratio():
    import torch

    from resi_dual.core import relative_error

    exact = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]])
    approx = torch.tensor([[3.0, 5.0], [0.0, 0.0], [1.0, 1e-3]], dtype=torch.float64)
    err = relative_error(approx, exact)
    assert err.dtype == torch.float64
    assert err.tolist() == [0.2, 0.0, 1e-3]


def test_select_is_the_one_unit_selection():
    from resi_dual.core import Composition
    from resi_dual.errors import ResiDualError

    comp = Composition("m", "vit", n_layers=2, n_heads=2, d_model=8, d_head=4, d_out=8)
    labels = comp.labels  # emb, L0H0, L0H1, L0.mlp, L1H0, L1H1, L1.mlp
    pick = lambda units, **kw: [labels[i] for i in comp.select(units, **kw)]  # noqa: E731
    assert pick(None) == pick("all") == labels
    assert pick("heads") == [u.label for u in comp.units if u.kind == "head"]
    assert pick("mlps") == ["L0.mlp", "L1.mlp"] and pick("emb") == ["emb"]
    # shorthands and labels mix; explicit units keep their order; duplicates appear once
    assert pick("L1H0, mlps,L1H0") == ["L1H0", "L0.mlp", "L1.mlp"]
    assert pick([3, comp.units[0], "L1H1", 3]) == ["L0.mlp", "emb", "L1H1"]
    assert pick("") == pick("none") == pick([]) == []
    assert comp.select_labels("mlps,L0H1") == ["L0H1", "L0.mlp", "L1.mlp"] and comp.select_labels(None) == []
    with pytest.raises(ResiDualError, match="no units selected by 'none'"):
        comp.select("none", require=True)
    with pytest.raises(ResiDualError, match="'L9H0' is not part of model"):
        comp.select("heads,L9H0")
    with pytest.raises(ResiDualError, match="unit index 7 out of range"):
        comp.select([7])
