"""Per-unit decomposition on an EncodingSource, per-PC descriptions, dictionary and reports."""

import pytest
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError
from resi_dual.interpret import decompose_units, load_dictionary, pc_descriptions, somp, text_span
from resi_dual.report.interpret import write_decompositions, write_pc_descriptions
from resi_dual.spectral.bases import UnitBases


def _dictionary(d_out, m=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(m, d_out, generator=g, dtype=torch.float64), dim=-1)
    return emb, [f"text {i}" for i in range(m)]


def test_units_are_decomposed_in_factored_form(toy_source, tmp_path):
    emb, texts = _dictionary(toy_source.composition.d_out)
    res = decompose_units(toy_source, emb, texts, "somp", k=5, units="heads", progress=False)
    assert list(res) == [u.label for u in toy_source.composition.head_units]
    x = toy_source.contributions(["L1H0"], dtype=torch.float64)[:, 0]
    assert res["L1H0"].indices == somp(x, emb, 5).indices
    ts = decompose_units(toy_source, emb, texts, "textspan", k=4, units="L1H0,L0.mlp", rank=80, progress=False)
    x = toy_source.contributions(["L0.mlp"], dtype=torch.float64)[:, 0]
    assert ts["L0.mlp"].indices == text_span(x, emb, 4, rank=80).indices
    tsv, md = write_decompositions(res, tmp_path)
    lines = tsv.read_text().splitlines()
    assert lines[0].startswith("unit\tstep") and len(lines) == 1 + 5 * len(res)
    assert "## L" in md.read_text()


def test_pc_descriptions_pick_the_closest_text(toy_source, tmp_path):
    emb, texts = _dictionary(toy_source.composition.d_out)
    lab = "L1H0"
    x = toy_source.contributions([lab], dtype=torch.float64)[:, 0]
    xc = x - x.mean(0)
    _, s, vt = torch.linalg.svd(xc, full_matrices=False)
    ev = s ** 2 / (len(x) - 1)
    bases = UnitBases(toy_source.composition, [lab], {lab: x.mean(0)}, {lab: vt[:6]}, {lab: ev[:6]},
                      {lab: float(ev.sum())}, len(x))
    rows = pc_descriptions(bases, emb, texts, n_pcs=3, top=2)
    assert len(rows) == 3 * 2 * 2
    best = int(torch.argmax(vt[0] @ emb.T))
    worst = int(torch.argmin(vt[0] @ emb.T))
    assert rows[0]["text"] == texts[best] and rows[0]["pole"] == "+"
    assert [r["text"] for r in rows if r["pc"] == 0 and r["pole"] == "-"][0] == texts[worst]
    assert write_pc_descriptions(rows, tmp_path).read_text().count("\n") == 1 + len(rows)


def test_shipped_dictionary():
    d = load_dictionary()
    assert len(d) >= 3000 and len(set(d)) == len(d)
    assert "an aerial view" in d and "the letter A" in d


def test_bad_dictionary_and_units(toy_source, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n")
    with pytest.raises(ResiDualError, match="empty"):
        load_dictionary(empty)
    emb, texts = _dictionary(toy_source.composition.d_out + 1)
    with pytest.raises(ResiDualError, match="output is"):
        decompose_units(toy_source, emb, texts, "somp", k=2, progress=False)
    emb, texts = _dictionary(toy_source.composition.d_out)
    with pytest.raises(ResiDualError, match="unknown method"):
        decompose_units(toy_source, emb, texts, "pca", k=2, progress=False)
