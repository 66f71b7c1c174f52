"""`resi-dual explore`: images along components, re-traced once each, and the static site around them."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from resi_dual.cli import main


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _pages_and_images(site: Path):
    pages = list(site.rglob("*.html"))
    missing = []
    for page in pages:
        for src in re.findall(r'(?:src|href)="([^"#]+)"', page.read_text()):
            if not (page.parent / src).resolve().is_file():
                missing.append((page.name, src))
    return pages, missing


def test_site_without_analysis_or_interpret(folder_store, tmp_path, capsys, monkeypatch):
    _root, _data, store = folder_store
    import resi_dual.models.spatial as spatial

    traced = []
    real = spatial.spatial_maps

    def counting(model, pixels, directions, check=True):
        traced.append(int(pixels.shape[0]))
        return real(model, pixels, directions, check)

    monkeypatch.setattr(spatial, "spatial_maps", counting)
    site = tmp_path / "site"
    assert main(["explore", str(store), "--out", str(site), "--units", "L0H0,L5H1,L5.mlp", "--pcs", "2",
                 "--images", "3", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert "intrinsic dimensions" in out.err and "text descriptions left out" in out.err and "λ per component" in out.err
    import json

    build = json.loads((site / "build.json").read_text())
    # every distinct image a head shows is traced exactly once (the MLP's images are not traced)
    assert sum(traced) == build["traced_images"] and 3 <= build["traced_images"] <= build["distinct_images"] <= 3 * 2 * 6
    pages, missing = _pages_and_images(site)
    assert not missing
    assert {p.name for p in pages} >= {"index.html", "L0H0.html", "L0H0-pc1.html", "L0H0-pc2.html", "L5.mlp-pc2.html"}
    assert "PCA fitted here" in (site / "index.html").read_text()
    # the component page lists the 3 highest and 3 lowest coefficients of the store, in order
    from resi_dual.spectral.pca import UnitPCA
    from resi_dual.store import open_store

    s = open_store(store)
    bases = UnitPCA(units=["L0H0", "L5H1", "L5.mlp"], progress=False).fit(s).bases_
    from resi_dual.report.components import pc_coefficients

    coef = pc_coefficients(s, bases, "L5H1", 2)[:, 1]
    html = (site / "u" / "L5H1-pc2.html").read_text()
    shown = [float(x) for x in re.findall(r"<figcaption>([+-][0-9.e+-]+)</figcaption>", html)]
    want = torch.cat([coef.sort(descending=True).values[:3], coef.sort().values[:3]]).tolist()
    assert np.allclose(shown, want, rtol=1e-3, atol=1e-6)
    # overlays for heads, plain thumbnails for the MLP
    assert "L5H1-pc2-r" in html and "img/r" in (site / "u" / "L5.mlp-pc1.html").read_text()


def test_pc_maps_sum_to_the_stored_coefficients(folder_store):
    """Σ over all tokens of a head's PC map, minus the mean's share, is the stored coefficient."""
    from resi_dual.data.reopen import reopen_images
    from resi_dual.models.loading import load_model
    from resi_dual.models.spatial import spatial_maps
    from resi_dual.report.components import head_directions, rank_pc_images
    from resi_dual.spectral.pca import UnitPCA
    from resi_dual.store import open_store

    s = open_store(folder_store[2])
    bases = UnitPCA(units=["L3H2"], progress=False).fit(s).bases_
    lists = rank_pc_images(s, bases, ["L3H2"], 2, 2)
    model = load_model("demo")
    rows = lists[1].rows()
    imgs = reopen_images(s.meta, s.sample_ids, s.class_names, [s.sample_ids[r] for r in rows])
    dirs, K = head_directions(model, bases, lists)
    sm = spatial_maps(model, model.preprocess(imgs), dirs)
    v = bases.components["L3H2"][1].double()
    got = sm.heads[:, 1, 3, 2].double().sum(-1) - float(bases.means["L3H2"].double() @ v)
    want = torch.tensor([c for _, c in lists[1].top + lists[1].bottom], dtype=torch.float64)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-5)


def test_moved_dataset_is_one_line_and_data_root_fixes_it(folder_store, tmp_path, capsys):
    root, data, store = folder_store
    moved = root / "moved"
    shutil.move(str(data), str(moved))
    try:
        site = tmp_path / "site"
        args = ["explore", str(store), "--out", str(site), "--units", "L1H1", "--pcs", "1", "--images", "2", "--no-progress"]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(data) in err and "--data-root" in err
        assert not site.exists()
        assert main(args + ["--data-root", str(moved)]) == 0 and (site / "u" / "L1H1-pc1.html").is_file()
    finally:
        shutil.move(str(moved), str(data))


def test_site_is_written_whole_or_not_at_all(folder_store, tmp_path, monkeypatch, capsys):
    import resi_dual.report.explorer as explorer

    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text("previous site")
    monkeypatch.setattr(explorer, "MAX_SITE_BYTES", 10_000)
    assert main(["explore", str(folder_store[2]), "--out", str(site), "--units", "L0H1", "--pcs", "1",
                 "--images", "2", "--no-progress"]) == 2
    assert "MB (limit" in capsys.readouterr().err
    assert [p.name for p in site.iterdir()] == ["index.html"]  # the old site is untouched
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".site")]  # no temp left behind


def _adapter_on_fitted_bases(store_path, analysis: Path, units: list[str], variance: float | None = None) -> tuple:
    """(adapter file, {unit: λ}) of a ResiDual adapter on bases saved as ``analysis/bases.safetensors``,
    its λ set to distinct known values (as if trained)."""
    from resi_dual.adapters.adapter import AdapterConfig, build_adapter
    from resi_dual.spectral.pca import UnitPCA
    from resi_dual.store import open_store

    s = open_store(store_path)
    bases = UnitPCA(units=units, progress=False).fit(s).bases_
    analysis.mkdir(parents=True, exist_ok=True)
    bases.save(analysis / "bases.safetensors")
    C = len(s.class_names)
    classifier = torch.nn.functional.normalize(torch.randn(C, s.composition.d_out, generator=torch.Generator().manual_seed(0)), dim=-1)
    ad = build_adapter(AdapterConfig("residual", units=",".join(units), variance=variance), s, classifier, 10.0, bases=bases)
    with torch.no_grad():
        ad.module.lam.copy_(torch.linspace(0.25, 2.5, ad.module.lam.numel()))
    path = ad.save(analysis.parent / "residual.safetensors")
    return path, {lab: w.tolist() for lab, w in ad.component_weights().items()}


def test_adapter_lambdas_are_shown_per_component(folder_store, tmp_path, capsys):
    """--adapter: each component page and the unit page show the adapter's λ of that component; the
    overview offers the adapter's mean λ as a measure."""
    _root, _data, store = folder_store
    units = ["L1H0", "L4H2"]
    path, lam = _adapter_on_fitted_bases(store, tmp_path / "analysis", units)
    site = tmp_path / "site"
    assert main(["explore", str(store), "--out", str(site), "--units", ",".join(units), "--pcs", "2", "--images", "2",
                 "--analysis", str(tmp_path / "analysis"), "--adapter", str(path), "--no-progress"]) == 0
    assert "λ per component left out" not in capsys.readouterr().err
    for label in units:
        assert len(lam[label]) >= 2
        for k in (1, 2):
            html = (site / "u" / f"{label}-pc{k}.html").read_text()
            shown = re.findall(r"λ = ([0-9.e+-]+) \(the adapter's scale on this component\)", html)
            assert [float(x) for x in shown] == pytest.approx([lam[label][k - 1]], rel=2e-3)
        unit_page = (site / "u" / f"{label}.html").read_text()
        assert [float(x) for x in re.findall(r" · λ = ([0-9.e+-]+)</span>", unit_page)] == pytest.approx(lam[label][:2], rel=2e-3)
    index = (site / "index.html").read_text()
    assert "adapter mean λ" in index
    # distinct λ per component: the pages are not showing one repeated value
    assert len({round(x, 4) for v in lam.values() for x in v[:2]}) == 4


def test_bad_adapter_file_is_one_line(folder_store, tmp_path, capsys):
    _root, _data, store = folder_store
    site = tmp_path / "site"
    base = ["explore", str(store), "--out", str(site), "--units", "L1H0", "--pcs", "1", "--images", "2", "--no-progress"]
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00not a safetensors file at all")
    not_adapter = tmp_path / "analysis" / "bases.safetensors"
    _adapter_on_fitted_bases(store, tmp_path / "analysis", ["L1H0"])
    for bad, words in ((garbage, "not a readable adapter file"), (not_adapter, "not a resi-dual adapter file"),
                       (tmp_path / "missing.safetensors", "no such path")):
        assert main(base + ["--adapter", str(bad)]) == 2, bad
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err and str(bad) in err, err
        assert not site.exists()
