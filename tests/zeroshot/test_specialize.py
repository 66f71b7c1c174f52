"""Head rankings and ablation: all heads kept = base accuracy; S is per-head accuracy; mean fills from train."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError
from resi_dual.report.plots import ablation_figure
from resi_dual.zeroshot import prototype_classifier
from resi_dual.zeroshot.specialize import (ablation_curves, head_means, jaccard, jaccard_table, keep_sizes,
                                           rank_heads, summarize_random)


@pytest.fixture(scope="module")
def splits(make_toy_source):
    make_source = make_toy_source
    train, val, test = make_source(n=240, seed=0), make_source(n=120, seed=1), make_source(n=150, seed=2)
    return train, val, test, prototype_classifier(train)


def test_keep_sizes():
    assert keep_sizes(144) == [1, 7, 14, 36, 72, 108, 144]
    assert keep_sizes(6) == [1, 2, 3, 4, 6]


def test_rankings(splits):
    train, val, test, head = splits
    ranks = {r.name: r for r in rank_heads(val, head, seeds=range(3))}
    assert set(ranks) == {"S", "U|T", "U", "random[0]", "random[1]", "random[2]"}
    heads = val.composition.head_units
    labels = torch.as_tensor(val.labels)
    c = val.contributions("heads", dtype=torch.float64)
    acc = ((F.normalize(c, dim=-1) @ head.weights.double().T).argmax(-1) == labels[:, None]).double().mean(0)
    np.testing.assert_allclose(ranks["S"].scores, acc.numpy())
    planted = [u.label for u in heads].index("L1H0")
    for m in ("S", "U|T"):
        assert ranks[m].order[0] == planted, m
    assert sorted(ranks["random[1]"].order) == list(range(len(heads)))


def test_all_heads_kept_is_base_accuracy(splits):
    train, val, test, head = splits
    ranks = rank_heads(val, head, seeds=range(2))
    res = ablation_curves(test, head, ranks, means=head_means(train))
    base = float(((F.normalize(test.output().double(), dim=-1) @ head.weights.double().T).argmax(-1)
                  == torch.as_tensor(test.labels)).double().mean())
    assert res.base_accuracy == pytest.approx(base)
    assert res.sizes[-1] == res.n_heads
    for name, by_mode in res.accuracy.items():
        for mode, acc in by_mode.items():
            assert acc[-1] == pytest.approx(base), (name, mode)
    s = summarize_random(res)
    assert set(s) == {"S", "U|T", "U", "random"}


def test_mean_ablation_matches_explicit_sum(splits):
    train, val, test, head = splits
    ranks = [r for r in rank_heads(val, head, methods=["S"])]
    means = head_means(train)
    c_train = train.contributions("heads", dtype=torch.float64)
    torch.testing.assert_close(means, c_train.mean(0))
    res = ablation_curves(test, head, ranks, sizes=[2], means=means)
    keep = ranks[0].order[:2]
    c = test.contributions(dtype=torch.float64)
    hidx = test.composition.select("heads")
    emb = c.sum(1)
    for pos, i in enumerate(hidx):
        if pos not in keep:
            emb = emb - c[:, i] + means[pos]
    acc = float(((F.normalize(emb, dim=-1) @ head.weights.double().T).argmax(-1) == torch.as_tensor(test.labels)).double().mean())
    assert res.accuracy["S"]["mean"][0] == pytest.approx(acc)


def test_errors_and_jaccard(splits, tmp_path):
    train, val, test, head = splits
    ranks = rank_heads(val, head, methods=["S", "random"], seeds=[0])
    with pytest.raises(ResiDualError, match="train split"):
        ablation_curves(test, head, ranks, modes=["mean"])
    with pytest.raises(ResiDualError, match="unknown ranking"):
        rank_heads(val, head, methods=["X"])
    assert jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    rows = jaccard_table({"a": ranks, "b": rank_heads(test, head, methods=["S"])}, [1, 3])
    s_a = next(r.order for r in ranks if r.name == "S")
    s_b = rank_heads(test, head, methods=["S"])[0].order
    assert [r["method"] for r in rows] == ["S", "S"] and [r["n_heads"] for r in rows] == [1, 3]
    assert [r["jaccard"] for r in rows] == [jaccard(s_a[:k], s_b[:k]) for k in (1, 3)]
    res = ablation_curves(test, head, ranks, modes=["zero"])
    ablation_figure(res, "toy", tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 1000


def test_correlation_rankings_match_explicit_formula(splits):
    """U|T and U: mean over coordinates of the Pearson correlation (paper's score_unit_correlation)."""
    train, val, test, head = splits
    ranks = {r.name: r for r in rank_heads(val, head, methods=["U|T", "U"], block_rows=37)}
    c = val.contributions("heads", dtype=torch.float64)  # (n, H, d)
    q = torch.linalg.qr(head.weights.double().T).Q

    def score(units, out):
        out = out - out.mean(0)
        units = units - units.mean(0, keepdim=True)
        cov = (out[:, None, :] * units).mean(0)
        return (cov / (out.std(0)[None] * units.std(0))).mean(-1)

    np.testing.assert_allclose(ranks["U|T"].scores, score(c @ q, (c @ q).sum(1)).numpy(), rtol=1e-9)
    np.testing.assert_allclose(ranks["U"].scores, score(c, val.output(dtype=torch.float64)).numpy(), rtol=1e-9)


# -- the paper's protocol: only the kept heads stay, U in the outputs' basis ---------------------------
def paper_correlation(heads: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """The authors' score written out on whole arrays: heads (n, H, d) and the sum of heads projected on
    ``basis`` (d, r); Pearson per coordinate (covariance / n, std / (n − 1)), averaged over r."""
    x = heads @ basis
    y = x.sum(1)
    x, y = x - x.mean(0), y - y.mean(0)
    cov = (y[:, None, :] * x).mean(0)
    return (cov / (y.std(0)[None] * x.std(0))).mean(-1)


def test_keep_sizes_paper():
    assert keep_sizes(144, protocol="paper") == [1, 2, 7, 14, 36, 72, 108]
    assert keep_sizes(36, protocol="paper") == [1, 2, 3, 9, 18, 27]
    with pytest.raises(ResiDualError, match="specialization protocol"):
        keep_sizes(36, protocol="authors")


def test_paper_u_is_correlation_with_sum_of_heads_in_output_basis(splits):
    train, val, test, head = splits
    (u,) = rank_heads(val, head, methods=["U"], protocol="paper")
    c = val.contributions("heads", dtype=torch.float64)
    q = torch.linalg.qr(val.output(dtype=torch.float64).T).Q
    np.testing.assert_allclose(u.scores, paper_correlation(c, q).numpy(), rtol=1e-9, atol=1e-12)
    (u_project,) = rank_heads(val, head, methods=["U"])
    assert not np.allclose(u.scores, u_project.scores)


def test_paper_ablation_keeps_only_the_top_heads(splits):
    train, val, test, head = splits
    ranks = rank_heads(val, head, methods=["S", "U"], protocol="paper")
    res = ablation_curves(test, head, ranks, protocol="paper")
    assert res.sizes == keep_sizes(len(test.composition.head_units), protocol="paper")
    c = test.contributions("heads", dtype=torch.float64)
    every_unit = test.contributions(dtype=torch.float64)
    labels = torch.as_tensor(test.labels)
    w = head.weights.double()
    for r in ranks:
        for i, k in enumerate(res.sizes):
            top = r.order[:k]
            kept = c[:, top].sum(1)
            zero = ((F.normalize(kept, dim=-1) @ w.T).argmax(-1) == labels).double().mean()
            # mean mode: every unit not kept (other heads, MLPs, embedding) at its mean over the evaluated split
            heads_idx = test.composition.select("heads")
            kept_units = [heads_idx[j] for j in top]
            others = [j for j in range(every_unit.shape[1]) if j not in kept_units]
            filled = kept + every_unit[:, others].mean(0).sum(0)
            mean = ((F.normalize(filled, dim=-1) @ w.T).argmax(-1) == labels).double().mean()
            assert res.accuracy[r.name]["zero"][i] == pytest.approx(float(zero)), (r.name, k)
            assert res.accuracy[r.name]["mean"][i] == pytest.approx(float(mean)), (r.name, k)
