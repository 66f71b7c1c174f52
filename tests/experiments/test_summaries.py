"""The experiments' tables hold the numbers of the functions that compute them (not just well-formed rows)."""

import math

import numpy as np
import pytest
import torch

from resi_dual.experiments.config import parse_config
from resi_dual.experiments.grid import load_cell_bases, open_cell_store
from resi_dual.experiments.runners import compute_experiment
from resi_dual.experiments.summaries import adaptation_outputs, similarity_outputs
from resi_dual.report.experiments import write_run
from resi_dual.report.tables import read_table


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("summaries")
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=28, patch_size=7, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).eval().save_pretrained(root / "m0")
    return parse_config({
        "grid": {"seeds": [0], "batch-size": 32},
        "models": [{"name": "a", "spec": f"hf:{root / 'm0'}"}],
        "datasets": [{"name": "digits", "spec": "digits"}, {"name": "textiles", "spec": "textiles"}],
        "reference": {"name": "digits", "spec": "digits"},
        "limits": {"train": 48, "val": 32, "test": 32, "reference": 64},
        "intrinsic-dim": {"variance": 0.99, "twonn-max-samples": 64},
        "similarity": {"variance": 0.9, "split": "train", "noise": False},
    }, source="test")


def _cell(run, kind, **settings):
    return next(c for c in run.cells if c.kind == kind and all(c.settings.get(k) == v for k, v in settings.items()))


@pytest.mark.integration
def test_intrinsic_dim_table_is_the_spectral_engines(config, tmp_path):
    from resi_dual.spectral.intrinsic_dim import unit_intrinsic_dimensions

    with pytest.warns(UserWarning):
        run = compute_experiment("intrinsic-dim", config, tmp_path, progress=False)
    store_cell = _cell(run, "store", split="train")
    source, bases = open_cell_store(store_cell), load_cell_bases(_cell(run, "bases"))
    direct = {r.unit: r for r in unit_intrinsic_dimensions(source, bases, threshold=0.99, twonn_samples=64, seed=0,
                                                           progress=False)}
    units = run.outputs.find("units").rows
    assert [r["unit"] for r in units] == source.composition.labels
    for r in units:
        d = direct[r["unit"]]
        assert (r["linear_id"], r["twonn_id"], r["pc1_ratio"]) == (d.linear_id, pytest.approx(d.twonn_id), pytest.approx(d.pc1_ratio))
    by_layer = run.outputs.find("summary_by_layer").rows
    heads0 = [r for r in units if r["layer"] == 0 and r["kind"] == "head"]
    row = next(r for r in by_layer if r["layer"] == 0 and r["kind"] == "head")
    assert row["units"] == 2 and row["mean_linear_id"] == pytest.approx(np.mean([r["linear_id"] for r in heads0]))
    # what is written is these rows, at four decimals
    folder = write_run(run, tmp_path)
    written = read_table(folder / "units.tsv")
    assert [float(w["twonn_id"]) for w in written] == [round(r["twonn_id"], 4) for r in units]


@pytest.mark.integration
def test_similarity_table_is_the_spectral_engines(config, tmp_path):
    from resi_dual.spectral.similarity import similarity_table

    with pytest.warns(UserWarning):
        run = compute_experiment("similarity", config, tmp_path, progress=False)
    heads = run.outputs.find("heads").rows
    bases = {c.deps[0].name: load_cell_bases(c) for c in run.cells if c.kind == "bases"}  # by store cell name
    ref = bases[_cell(run, "store", split="train", limit=64).name]
    for dataset in ("digits", "textiles"):
        rows = [r for r in heads if r["dataset"] == dataset]
        stores = [c for c in run.cells if c.kind == "store" and c.settings["dataset"] == dataset]
        assert len(stores) == 1  # digits is the reference: its reference store is reused
        other = bases[stores[0].name]
        direct = {r.unit: r.similarity for r in similarity_table(ref, other, units=[r["unit"] for r in rows], variance=0.9)}
        assert len(rows) == 4 and [r["similarity"] for r in rows] == [pytest.approx(direct[r["unit"]]) for r in rows]
    summary = run.outputs.find("summary").rows[0]
    assert summary["textiles"] == pytest.approx(np.mean([r["similarity"] for r in heads if r["dataset"] == "textiles"]))


def test_adaptation_summary_is_mean_and_sample_std_over_seeds(config):
    rows = [{"model": "a", "dataset": d, "method": m, "seed": s, "trainable_parameters": p, "val_accuracy": 0.5,
             "test_accuracy": acc, "epochs": 3, "best_epoch": 2}
            for d, m, s, p, acc in [("digits", "coarse", 0, 4, 0.50), ("digits", "coarse", 1, 4, 0.70),
                                    ("digits", "zeroshot", 0, 0, 0.40), ("textiles", "coarse", 0, 4, 0.90),
                                    ("textiles", "coarse", 1, 4, 0.80), ("textiles", "zeroshot", 0, 0, 0.30)]]
    out = adaptation_outputs(config, list(reversed(rows)), ["zeroshot", "coarse"])
    assert [(r["dataset"], r["method"], r["seed"]) for r in out.find("runs").rows] == [
        ("digits", "zeroshot", 0), ("digits", "coarse", 0), ("digits", "coarse", 1),
        ("textiles", "zeroshot", 0), ("textiles", "coarse", 0), ("textiles", "coarse", 1)]
    summary = {(r["dataset"], r["method"]): r for r in out.find("summary").rows}
    coarse = summary[("digits", "coarse")]
    assert coarse["seeds"] == 2 and coarse["test_accuracy_mean"] == pytest.approx(0.6)
    assert coarse["test_accuracy_std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
    assert coarse["test_accuracy"] == "60.0 ± 14.1" and summary[("textiles", "zeroshot")]["test_accuracy_std"] == 0.0
    bars, *scatters = out.figures
    assert bars.groups == ["digits", "textiles"] and bars.series["coarse"] == [
        (pytest.approx(0.6), pytest.approx(coarse["test_accuracy_std"])), (pytest.approx(0.85), pytest.approx(math.sqrt(0.005)))]
    # accuracy against trainable parameters (+ 1, for the log axis), one figure per dataset
    assert [f.stem for f in scatters] == ["figures/params_a.digits", "figures/params_a.textiles"]
    assert scatters[0].series == {"zeroshot": ([1], [pytest.approx(0.4)]), "coarse": ([5], [pytest.approx(0.6)])}


def test_adaptation_figure_keeps_a_method_missing_on_a_dataset_in_place(config):
    """finetune outside ``tower-datasets`` has no row on digits: its bar stays in the textiles group."""
    rows = [{"model": "a", "dataset": d, "method": m, "seed": 0, "trainable_parameters": 4, "val_accuracy": 0.5,
             "test_accuracy": acc, "epochs": 3, "best_epoch": 2}
            for d, m, acc in [("digits", "coarse", 0.5), ("textiles", "coarse", 0.9), ("textiles", "finetune", 0.7)]]
    out = adaptation_outputs(config, rows, ["coarse", "finetune", "coop"])
    assert [(r["dataset"], r["method"]) for r in out.find("summary").rows] == [
        ("digits", "coarse"), ("textiles", "coarse"), ("textiles", "finetune")]
    bars = out.figures[0]
    assert list(bars.series) == ["coarse", "finetune"]  # coop has no row anywhere: no bars
    (missing, _), (present, _) = bars.series["finetune"]
    assert math.isnan(missing) and present == pytest.approx(0.7)


def test_similarity_model_correlation_is_pearson(config):
    import dataclasses

    two = dataclasses.replace(config, models=(config.models[0], dataclasses.replace(config.models[0], name="b")))
    rows = [{"model": m, "dataset": d, "unit": f"L0H{h}", "layer": 0, "head": h, "similarity": v, "k_reference": 1,
             "k_dataset": 1}
            for m, vals in (("a", {"digits": (0.9, 0.7), "textiles": (0.2, 0.4)}), ("b", {"digits": (0.5, 0.5), "textiles": (0.6, 0.8)}))
            for d, hv in vals.items() for h, v in enumerate(hv)]
    out = similarity_outputs(two, rows)
    summary = {r["model"]: r for r in out.find("summary").rows}
    assert summary["a"]["digits"] == pytest.approx(0.8) and summary["b"]["textiles"] == pytest.approx(0.7)
    corr = {r["model"]: r for r in out.find("model_correlation").rows}
    assert corr["a"]["a"] == pytest.approx(1.0) and corr["a"]["b"] == pytest.approx(-1.0)


@pytest.mark.integration
def test_few_shot_adaptation_grid_has_every_method_per_shot_count(config, tmp_path):
    import dataclasses

    from resi_dual.adapters.adapter import LR_SWEEP
    from resi_dual.adapters.peers import LR_GRID

    methods = ("zeroshot", "residual", "residual-keep", "linear", "linear-probe", "lp++", "tip-adapter", "clip-adapter")
    cfg = dataclasses.replace(config, datasets=config.datasets[:1], adaptation=dataclasses.replace(
        config.adaptation, methods=methods + ("coop",), shots=(1, 2), max_epochs=3, patience=2))
    with pytest.warns(UserWarning):
        run = compute_experiment("adaptation", cfg, tmp_path, progress=False)
    runs = run.outputs.find("runs").rows
    assert {(r["method"], r["shots"]) for r in runs} == {(m, k) for m in methods for k in (1, 2)}  # vision-only: no coop
    # 10 classes: K rows per class for training; the capped validation is min(K, 4) per class
    for r in runs:
        if r["method"] in ("residual", "residual-keep", "linear"):
            assert r["lr"] in LR_SWEEP[r["method"]]
        if r["method"] == "clip-adapter":
            assert r["lr"] in LR_GRID
        if r["method"] == "lp++":  # step sizes from the Lipschitz bounds, said in the row
            assert r["lr"] > 0 and "Lipschitz" in r["note"]
    summary = run.outputs.find("summary").rows
    assert {(r["method"], r["shots"]) for r in summary} == {(m, k) for m in methods for k in (1, 2)}
    keep = next(r for r in summary if r["method"] == "residual-keep" and r["shots"] == 2)
    plain = next(r for r in summary if r["method"] == "residual" and r["shots"] == 2)
    assert keep["trainable_parameters"] == plain["trainable_parameters"] > 0
    stems = [f.stem for f in run.outputs.figures]
    assert "figures/a.1shot" in stems and "figures/params_a.2shot.digits" in stems


def test_tower_methods_are_planned_only_on_tower_datasets(config, tmp_path):
    import dataclasses

    from resi_dual.experiments.adaptation import plan_adaptation
    from resi_dual.experiments.grid import Grid

    cfg = dataclasses.replace(config, adaptation=dataclasses.replace(
        config.adaptation, methods=("zeroshot", "coarse", "finetune", "wise-ft"), tower_datasets=("textiles",)))
    cells, _ = plan_adaptation(Grid(cfg, tmp_path, progress=False))
    planned = sorted(c.name.rsplit("-", 1)[0] for c in cells if c.kind == "adaptation")
    assert planned == ["a.digits.coarse.s0", "a.digits.zeroshot.s0",
                       "a.textiles.coarse.s0", "a.textiles.finetune.s0", "a.textiles.zeroshot.s0"]
