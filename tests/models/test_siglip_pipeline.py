"""The whole pipeline on a tiny random SigLIP saved with save_pretrained and reloaded through the real
loader: encode -> analyze -> interpret -> zeroshot -> train, with the pooled units throughout."""

from __future__ import annotations

import csv
import json
import warnings

import pytest
import torch
import torch.nn.functional as F

from resi_dual.cli import main


@pytest.fixture(scope="module")
def siglip_stores(tmp_path_factory):
    from test_pooled import _bert_tokenizer, tiny_siglip_with_text
    from transformers import SiglipImageProcessor

    root = tmp_path_factory.mktemp("siglip_pipeline")
    tiny_siglip_with_text(3).save_pretrained(root / "siglip")
    _bert_tokenizer().save_pretrained(root / "siglip")
    SiglipImageProcessor(size={"height": 30, "width": 30}).save_pretrained(root / "siglip")
    spec = f"hf:{root / 'siglip'}"
    stores = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for split, limit in (("train", 60), ("val", 30), ("test", 30)):
            stores[split] = root / split
            assert main(["encode", "--model", spec, "--dataset", "digits", "--split", split, "--limit", str(limit),
                         "--out", str(stores[split]), "--no-progress", "--dtype", "float32"]) == 0
    return {"root": root, "spec": spec, **stores}


def test_store_holds_pooled_units(siglip_stores):
    from resi_dual import load_model, open_store

    store = open_store(siglip_stores["test"])
    comp = store.composition
    assert comp.pooled and comp.labels[-1] == "pool" and store.readout.pooled
    c = store.contributions(dtype=torch.float64)
    out = store.output(dtype=torch.float64)
    assert float(((c.sum(1) - out).norm(dim=-1) / out.norm(dim=-1)).max()) <= 1e-5
    # the pooled units of the store are the traced ones (encoding is a pure function of the weights)
    model = load_model(siglip_stores["spec"])
    assert torch.equal(store.features("L1H2")[:, :-2].float(), store.raw().heads[:, 1, 2])
    assert comp.same_model(model.composition)


def test_analyze_interpret_zeroshot_train(siglip_stores, capsys):
    from resi_dual import open_store

    root, train = siglip_stores["root"], siglip_stores["train"]
    assert main(["analyze", str(train), "--out", str(root / "analysis"), "--twonn-samples", "60", "--no-progress"]) == 0
    rows = list(csv.DictReader((root / "analysis" / "id.tsv").open(), delimiter="\t"))
    units = {r["unit"] for r in rows}
    assert "pool" in units and "L1H2" in units and len(units) == len(open_store(train).composition.units)
    assert all(float(r["linear_id"]) >= 1 for r in rows)

    dic = root / "dictionary.txt"
    dic.write_text("\n".join(["a dog", "a cat", "red", "stripes", "an aerial view", "the number 7", "a sketch",
                              "a bright photo", "wood", "a smiling face"]) + "\n")
    assert main(["interpret", str(siglip_stores["test"]), "--method", "somp", "-k", "2", "--units", "L1H0,pool",
                 "--dictionary", str(dic), "--out", str(root / "interp"), "--pcs", "1", "--no-progress"]) == 0
    picks = list(csv.DictReader((root / "interp" / "somp.tsv").open(), delimiter="\t"))
    assert {r["unit"] for r in picks} == {"L1H0", "pool"} and len(picks) == 4

    assert main(["zeroshot", str(siglip_stores["test"])]) == 0
    rep = json.loads((siglip_stores["test"] / "zeroshot" / "zeroshot.json").read_text())
    assert rep["classifier"] == "text" and 0.0 <= rep["top1"] <= 1.0

    out = root / "adapters"
    base = ["train", "--train", str(train), "--val", str(siglip_stores["val"]), "--test", str(siglip_stores["test"]),
            "--out", str(out), "--quiet", "--epochs", "2"]
    assert main(base + ["--adapter", "residual", "--basis", str(root / "analysis" / "bases.safetensors")]) == 0
    metrics = json.loads(next(out.glob("*residual*seed1.json")).read_text())
    assert metrics["classifier_kind"] == "text" and metrics["trainable_parameters"] > 0
    from resi_dual.adapters.adapter import Adapter

    adapter = Adapter.load(next(out.glob("*residual*seed1.safetensors")))
    assert adapter.logit_bias != 0.0 and adapter.composition.pooled
    capsys.readouterr()
