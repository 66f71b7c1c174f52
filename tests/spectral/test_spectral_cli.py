import numpy as np
import pandas as pd
import pytest
import torch

from resi_dual.cli import main
from resi_dual.spectral.bases import UnitBases
from resi_dual.spectral.pca import fit_bases
from resi_dual.store import open_store


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def test_analyze_writes_bases_table_and_heatmaps(disk_stores, tmp_path, capsys):
    store = disk_stores["digits"]
    out = tmp_path / "a"
    assert main(["analyze", str(store), "--out", str(out), "--twonn-samples", "80", "--no-progress"]) == 0
    bases = UnitBases.load(out / "bases.safetensors")
    direct = fit_bases(open_store(store), progress=False)
    assert bases.labels == direct.labels == ["emb", "L0H0", "L0H1", "L0.mlp", "L1H0", "L1H1", "L1.mlp"]
    for lab in bases.labels:
        torch.testing.assert_close(bases.explained_variance[lab], direct.explained_variance[lab])
    tsv = pd.read_csv(out / "id.tsv", sep="\t")
    pq = pd.read_parquet(out / "id.parquet")
    assert list(tsv["unit"]) == bases.labels and len(pq) == 7
    cols = ["unit", "kind", "layer", "head", "linear_id", "twonn_id", "ratio", "pc1_ratio", "participation_ratio"]
    assert all(c in pq.columns for c in cols)
    assert not pq[cols[4:]].isna().any().any()
    heads = pq[pq.kind == "head"]
    assert (heads.linear_id <= 16 + 2).all() and (heads.twonn_id > 0).all()
    for m in ("linear_id", "twonn_id", "ratio", "pc1_ratio", "participation_ratio"):
        assert (out / f"heatmap_{m}.png").stat().st_size > 1000
    assert "analysed 7 units" in capsys.readouterr().out


def test_analyze_units_and_defaults(disk_stores, capsys):
    store = disk_stores["animals"]
    assert main(["analyze", str(store), "--units", "L1H0,L1.mlp", "--twonn-samples", "0", "--no-progress"]) == 0
    df = pd.read_parquet(store / "analysis" / "id.parquet")
    assert list(df.unit) == ["L1H0", "L1.mlp"] and (df.twonn_id == -1).all()
    assert main(["analyze", str(store), "--units", "L9H9", "--no-progress"]) == 2
    assert "not part of model" in capsys.readouterr().err


def test_similarity_cli(disk_stores, tmp_path, capsys):
    a, b = disk_stores["digits"], disk_stores["animals"]
    out = tmp_path / "s"
    assert main(["similarity", str(a), str(a), "--out", str(out), "--no-progress"]) == 0
    same = pd.read_csv(out / "similarity.tsv", sep="\t")
    np.testing.assert_allclose(same.similarity, 1.0, atol=1e-9)
    assert main(["similarity", str(a), str(b), "--out", str(out), "--matrix", "--no-progress"]) == 0
    ab = pd.read_parquet(out / "similarity.parquet")
    assert main(["similarity", str(b), str(a), "--out", str(tmp_path / "t"), "--no-progress"]) == 0
    ba = pd.read_parquet(tmp_path / "t" / "similarity.parquet")
    np.testing.assert_allclose(ab.similarity, ba.similarity, atol=1e-12)  # symmetric
    assert (ab.similarity > 0).all() and (ab.similarity <= 1 + 1e-9).all() and (ab.similarity < 0.999).any()
    m = pd.read_csv(out / "similarity_matrix.tsv", sep="\t", index_col=0)
    assert m.shape == (7, 7)
    np.testing.assert_allclose(np.diag(m.values), ab.similarity, atol=1e-6)
    assert (out / "similarity_heads.png").exists() and (out / "similarity_matrix.png").exists()
    capsys.readouterr()
    assert main(["similarity", str(a), str(disk_stores["other"]), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "different model" in err and len(err.strip().splitlines()) == 1
