"""`resi-dual train / apply / explain` end to end: a tiny random ViT saved to disk, image folders, real stores."""

import json

import numpy as np
import pytest
from PIL import Image

from resi_dual.cli import main
from tests.cli.fault_helpers import save_vit


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def _folder(root, classes, per_split, seed):
    rng = np.random.default_rng(seed)
    for split, n in per_split.items():
        for c, name in enumerate(classes):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                base = np.zeros((16, 16, 3))
                base[..., c % 3] = 150 + 40 * (c // 3)
                img = np.clip(base + rng.normal(0, 60, base.shape), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(d / f"{i}.png")


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    from resi_dual import load_model
    from resi_dual.data import load_dataset
    from resi_dual.store.writer import EncodeConfig, encode_store

    root = tmp_path_factory.mktemp("cli")
    _folder(root / "data", ["red", "green", "blue"], {"train": 30, "val": 10, "test": 10}, 0)
    _folder(root / "other", ["a", "b", "c", "d"], {"train": 4, "val": 4, "test": 4}, 1)
    spec = save_vit(root / "vit", 0)
    spec2 = save_vit(root / "vit2", 1)
    with pytest.warns(UserWarning):
        model = load_model(spec)
    out = {"spec": spec, "spec2": spec2, "root": root}
    cfg = EncodeConfig(progress=False, dtype="float32")
    for split in ("train", "val", "test"):
        out[split] = str(root / f"s-{split}")
        encode_store(model, load_dataset(f"folder:{root / 'data'}", split), out[split], cfg)
    out["other_test"] = str(root / "s-other")
    encode_store(model, load_dataset(f"folder:{root / 'other'}", "test"), out["other_test"], cfg)
    return out


def _train(stores, adapter, *extra):
    out = stores["root"] / "runs"
    argv = ["train", "--train", stores["train"], "--val", stores["val"], "--test", stores["test"],
            "--adapter", adapter, "--out", str(out), "--quiet", "--epochs", "4", *extra]
    return main(argv), out


def test_train_apply_explain(stores, capsys):
    rc, out = _train(stores, "residual", "--seeds", "1,2")
    assert rc == 0
    m = json.loads((out / "data-residual-seed1.json").read_text())
    assert m["variant"] == "residual" and m["trainable_parameters"] == m["components"] > 0
    # the three colours are separable, so the prototype classifier is perfect and the adapter keeps it so
    assert m["accuracy"]["zeroshot_test"] == 1.0 and m["accuracy"]["test"] == 1.0
    assert 1 <= m["epochs"] <= 4 and m["best_epoch"] <= m["epochs"]
    # the learning rate is chosen on validation from the variant's grid; every run keeps its start here (perfect
    # on val from epoch 0), so all tie, the first wins, and the row says the lr changed nothing
    assert [c["lr"] for c in m["lr_sweep"]] == [0.008, 0.08, 0.8, 8.0] and m["lr"] == 0.008
    assert m["lr_choice"] == "sweep" and m["best_epoch"] == 0 and m["note"].startswith("no epoch beat the untrained start")
    assert m["n"] == {"train": 90, "val": 30, "test": 30} and m["basis_hash"]
    assert (out / "data-residual-summary.json").exists()
    adapter = m["adapter_file"]

    rc, _ = _train(stores, "zeroshot")
    z = json.loads((out / "data-zeroshot-seed1.json").read_text())
    assert rc == 0 and z["trainable_parameters"] == 0 and z["accuracy"]["test"] == z["accuracy"]["zeroshot_test"]
    rc, _ = _train(stores, "coarse", "--shots", "5", "--epochs", "1", "--products", "float32")  # seeds 1, 2, 3 by default
    c = json.loads((out / "data-coarse-5shot-seed1.json").read_text())
    assert rc == 0 and c["trainable_parameters"] == 8 and c["n"]["train"] == 15
    assert c["products"] == "float32" and m["products"] in ("float32", "bfloat16")  # what "auto" became here
    summary = json.loads((out / "data-coarse-5shot-summary.json").read_text())
    per_seed = [json.loads((out / f"data-coarse-5shot-seed{s}.json").read_text())["accuracy"]["test"] for s in (1, 2, 3)]
    assert summary["seeds"] == [1, 2, 3] and summary["accuracy"]["test"]["mean"] == pytest.approx(np.mean(per_seed))

    capsys.readouterr()
    images = [str(stores["root"] / "data" / "test" / k / "0.png") for k in ("red", "green", "blue")]
    assert main(["apply", "--model", stores["spec"], "--adapter", adapter, *images]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split("\t")[1] for line in lines] == ["red", "green", "blue"]

    desc = stores["root"] / "desc.tsv"
    desc.write_text("unit\tcomponent\ttext\nL0H0\t0\tsomething reddish\n")
    assert main(["explain", adapter, "--top", "2", "--descriptions", str(desc), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["units"]
    assert [r["unit"] for r in rows] == [f"L{l}H{h}" for l in range(2) for h in range(4)]
    assert all(r["largest"][0][1] >= r["smallest"][0][1] for r in rows)
    l0h0 = [item for r in rows if r["unit"] == "L0H0" for item in r["largest"] + r["smallest"] if item[0] == 0]
    assert l0h0 and l0h0[0][2] == "something reddish"


def test_bad_input_is_one_line_error(stores, capsys):
    base = ["train", "--train", stores["train"], "--val", stores["val"], "--adapter", "residual", "--quiet",
            "--out", str(stores["root"] / "bad")]
    capsys.readouterr()
    assert main(base + ["--test", stores["other_test"]]) == 2
    assert "label sets differ" in capsys.readouterr().err
    rc, out = _train(stores, "linear")
    assert rc == 0
    img = str(stores["root"] / "data" / "test" / "red" / "0.png")
    with pytest.warns(UserWarning):
        assert main(["apply", "--model", stores["spec2"], "--adapter", str(out / "data-linear-seed1.safetensors"), img]) == 2
    assert "other weights" in capsys.readouterr().err
    assert main(base + ["--test", stores["test"], "--lr", "fast"]) == 2


def test_finetune_trains_the_vision_encoder_only(stores):
    import transformers as tf

    rc, out = _train(stores, "finetune", "--epochs", "2", "--lr", "1e-3", "--logit-scale", "1")
    assert rc == 0
    m = json.loads((out / "data-finetune-seed1.json").read_text())
    vit = tf.ViTModel.from_pretrained(stores["spec"][3:])
    n_all = sum(p.numel() for p in vit.parameters())
    n_pool = sum(p.numel() for p in vit.pooler.parameters())  # the pooler is not part of the CLS embedding
    assert m["trainable_parameters"] == n_all - n_pool
    assert m["epochs"] == 2 and m["n"]["train"] == 90 and m["accuracy"]["test"] == 1.0
    assert len(m["history"]) == 2 and 0 < m["history"][1]["loss"] < m["history"][0]["loss"]  # it does train


def test_basis_from_another_store_or_file(stores, capsys):
    from resi_dual import open_store
    from resi_dual.spectral.pca import fit_bases

    rc, out = _train(stores, "spectral", "--basis", stores["val"])
    m = json.loads((out / "data-spectral-seed1.json").read_text())
    assert rc == 0 and m["basis_meta"]["n_samples"] == 30 and m["trainable_parameters"] == 29  # min(n − 1, d_out 32) on 30 samples
    bases = fit_bases(open_store(stores["val"]), units="heads", progress=False)
    path = bases.save(stores["root"] / "val-bases.safetensors")
    rc, out = _train(stores, "residual-full", "--basis", str(path))
    assert rc == 2 and "no PCA for units" in capsys.readouterr().err  # a heads-only basis cannot serve MLPs
    rc, out = _train(stores, "residual", "--basis", str(path), "--variance", "1.0")
    m = json.loads((out / "data-residual-seed1.json").read_text())
    assert rc == 0 and m["basis_hash"] == bases.content_hash()
    assert m["trainable_parameters"] == sum(bases.components[u].shape[0] for u in bases.labels)
    other = fit_bases(open_store(stores["train"]), units="heads", progress=False).save(stores["root"] / "tr.safetensors")
    img = str(stores["root"] / "data" / "test" / "red" / "0.png")
    with pytest.warns(UserWarning):
        assert main(["apply", "--model", stores["spec"], "--adapter", m["adapter_file"], "--basis", str(path), img]) == 0
    assert main(["apply", "--model", stores["spec"], "--adapter", m["adapter_file"], "--basis", str(other), img]) == 2
    assert "another basis" in capsys.readouterr().err


def test_lora_trains_low_rank_updates_of_the_attention_projections_only(stores):
    import transformers as tf

    from resi_dual.adapters.lora import RANK

    rc, out = _train(stores, "lora", "--epochs", "2", "--lr", "1e-2", "--logit-scale", "1", "--shots", "4", "--seeds", "1")
    assert rc == 0
    m = json.loads((out / "data-lora-4shot-seed1.json").read_text())
    cfg = tf.ViTConfig.from_pretrained(stores["spec"][3:])
    d = cfg.hidden_size
    # query and value of every layer: A (r × d) and B (d × r) each
    assert m["trainable_parameters"] == cfg.num_hidden_layers * 2 * (2 * RANK * d)
    assert m["n"] == {"train": 12, "val": 12, "test": 30} and "wise_ft" not in m
    assert len(m["history"]) == 2 and 0 < m["history"][1]["loss"] < m["history"][0]["loss"]


def test_lp_plus_plus_and_coop_as_train_methods(stores, capsys):
    """`train --adapter lp++` writes its metrics with how its step size was set; `coop` refuses a
    vision-only model in one line."""
    rc, out = _train(stores, "lp++", "--shots", "4", "--seeds", "1")
    assert rc == 0
    row = json.loads((out / "data-lp++-4shot-seed1.json").read_text())
    from resi_dual import open_store

    assert row["trainable_parameters"] == 3 * open_store(stores["train"]).composition.d_out + 2 * 3  # C·d + 2C
    assert row["lr_choice"] == "lipschitz" and row["lr"] > 0 and "Lipschitz" in row["note"]
    assert row["n"] == {"train": 12, "val": 12, "test": 30}
    capsys.readouterr()
    rc, _ = _train(stores, "coop", "--shots", "4", "--seeds", "1")
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "coop needs a text tower" in err and len(err.splitlines()) == 1
