import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from resi_dual.errors import ResiDualError
from resi_dual.spectral.bases import UnitBases
from resi_dual.spectral.pca import UnitMoments, UnitPCA, fit_bases, svd_flip_rows

from spectral_sources import make_source


def _direct(source, label):
    """numpy SVD of the centred projected vectors, float64."""
    x = source.contributions([label], dtype=torch.float64)[:, 0].numpy()
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, s**2 / (len(x) - 1), vt


@pytest.mark.parametrize("d_out", [16, 7])  # 16: above d_in+2 for every unit; 7: below d_model+2 and d_head+2
def test_pca_equals_direct_svd(d_out):
    src = make_source(n=400, d_out=d_out)
    bases = fit_bases(src, block_rows=37, progress=False)  # odd block size: exercises the merges
    assert bases.labels == src.composition.labels and bases.n_samples == 400
    for lab in bases.labels:
        mean, ev, vt = _direct(src, lab)
        k = bases.explained_variance[lab].numel()
        p = (src.composition.d_head if lab[-1].isdigit() else src.composition.d_model) + 2
        assert k == min(p, d_out)
        np.testing.assert_allclose(bases.means[lab].numpy(), mean, rtol=1e-10, atol=1e-10)
        # explained variance to 1e-6 relative (it is ~1e-12 here), for every non-null component
        big = ev[:k] > 1e-10 * ev[0]
        np.testing.assert_allclose(bases.explained_variance[lab].numpy()[big], ev[:k][big], rtol=1e-6)
        assert bases.total_variance[lab] == pytest.approx(ev.sum(), rel=1e-9)
        # components equal up to sign, then exactly with the fixed sign convention
        comp = bases.components[lab].numpy()
        np.testing.assert_allclose(np.abs((comp[big] * vt[:k][big]).sum(1)), 1.0, atol=1e-8)
        np.testing.assert_allclose(comp[big], svd_flip_rows(torch.from_numpy(vt[:k][big])).numpy(), atol=1e-7)
        np.testing.assert_allclose(comp @ comp.T, np.eye(k), atol=1e-10)


def test_pca_matches_sklearn_on_heads():
    src = make_source(n=300, seed=3)
    bases = fit_bases(src, units="heads", progress=False)
    assert all(lab.startswith("L") and "H" in lab for lab in bases.labels) and len(bases.labels) == 6
    x = src.contributions(["L1H2"], dtype=torch.float64)[:, 0].numpy()
    sk = PCA(n_components=6, svd_solver="full").fit(x)
    np.testing.assert_allclose(bases.explained_variance["L1H2"].numpy(), sk.explained_variance_, rtol=1e-8)
    np.testing.assert_allclose(bases.explained_variance_ratio("L1H2").numpy(), sk.explained_variance_ratio_, rtol=1e-8)


def test_moments_merge_exactly_across_shards():
    src = make_source(n=250)
    comp = src.composition
    idx = list(range(len(comp)))
    whole = UnitMoments(comp, idx).update(src.raw())
    a = UnitMoments(comp, idx).update(src.raw(slice(0, 90)))
    b = UnitMoments(comp, idx).update(src.raw(slice(90, 250)))
    a.merge(b)
    assert a.n == 250
    torch.testing.assert_close(a.heads.m2, whole.heads.m2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(a.dense.mean, whole.dense.mean, rtol=1e-12, atol=1e-12)


def test_deterministic_and_round_trip(tmp_path):
    src = make_source(n=200)
    b1 = fit_bases(src, progress=False)
    b2 = UnitPCA(block_rows=64, progress=False).fit(src).bases_
    assert b1.content_hash() == b2.content_hash()
    b1.save(tmp_path / "bases.safetensors")
    b3 = UnitBases.load(tmp_path / "bases.safetensors")
    assert b3.content_hash() == b1.content_hash() and b3.labels == b1.labels


def test_transform_gives_pca_coordinates():
    src = make_source(n=150)
    est = UnitPCA(units="L0H1", progress=False).fit(src)
    z = est.transform(src, "L0H1")
    x = src.contributions(["L0H1"], dtype=torch.float64)[:, 0]
    assert z.shape == (150, 6)
    torch.testing.assert_close(z.var(0), est.bases_.explained_variance["L0H1"], rtol=1e-9, atol=1e-12)
    # all components kept: the coordinates reconstruct the centred contributions exactly
    torch.testing.assert_close(z @ est.bases_.components["L0H1"], x - x.mean(0), rtol=1e-9, atol=1e-9)


def test_fewer_samples_than_components_keeps_n_minus_1():
    src = make_source(n=4)
    bases = fit_bases(src, progress=False)
    assert bases.components["emb"].shape == (3, 16)
    assert bases.components["L0H0"].shape == (3, 16)
    with pytest.raises(ResiDualError, match="at least 2 samples"):
        fit_bases(make_source(n=1), progress=False)


def test_nan_encodings_raise():
    src = make_source(n=50)
    src._enc.heads[7, 1, 2, 0] = float("nan")
    with pytest.raises(ResiDualError, match="non-finite"):
        fit_bases(src, progress=False)


def test_constant_unit_has_zero_variance_not_nan():
    src = make_source(n=60)
    src._enc.heads[:, 0, 1] = 0.0
    src._enc.sigma[:] = 1.0
    src._enc.mu[:] = 0.0
    with pytest.warns(UserWarning, match="zero variance"):
        bases = fit_bases(src, units="L0H1,L0H0", progress=False)
    assert bases.total_variance["L0H1"] == 0.0
    assert torch.all(bases.explained_variance_ratio("L0H1") == 0)
    assert bases.total_variance["L0H0"] > 0


def test_unit_chunking_gives_the_same_bases(monkeypatch):
    src = make_source(n=300)
    whole = fit_bases(src, block_rows=50, progress=False)
    monkeypatch.setattr(UnitMoments, "CHUNK_ELEMENTS", 10)  # one unit per chunk
    monkeypatch.setattr(UnitMoments, "FINISH_ELEMENTS", 10)  # and one per factorisation
    chunked = fit_bases(src, block_rows=50, progress=False)
    for lab in whole.labels:
        torch.testing.assert_close(chunked.components[lab], whole.components[lab], rtol=0, atol=1e-10)
        torch.testing.assert_close(chunked.explained_variance[lab], whole.explained_variance[lab], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(chunked.means[lab], whole.means[lab], rtol=1e-12, atol=1e-14)


def test_moments_pass_holds_one_block_in_its_stored_dtype(monkeypatch):
    """Working memory independent of N: blocks come in the stored dtype (no converted copy of the
    whole block) and each one is released before the next is read."""
    import gc
    import weakref

    src = make_source(n=300)
    src._enc.heads = src._enc.heads.to(torch.float16)  # a store's dtype
    ref = fit_bases(src, block_rows=64, progress=False)
    seen, alive_at_next = [], []
    orig = type(src).iter_blocks

    def spy(self, block_rows, dtype=torch.float32):
        for blk in orig(self, block_rows, dtype):
            gc.collect()
            alive_at_next.append(sum(w() is not None for w in seen))
            seen.append(weakref.ref(blk.heads))
            assert blk.heads.dtype == torch.float16
            yield blk
            del blk

    monkeypatch.setattr(type(src), "iter_blocks", spy)
    bases = fit_bases(src, block_rows=64, progress=False)
    assert alive_at_next == [0] * 5  # 300 rows in 5 blocks, none alive when the next is read
    for lab in ref.labels:
        torch.testing.assert_close(bases.explained_variance[lab], ref.explained_variance[lab], rtol=0, atol=0)
