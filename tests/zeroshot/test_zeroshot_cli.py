"""`resi-dual zeroshot / interpret / specialize` end to end on stores of a tiny random HF CLIP checkpoint.

The checkpoint is saved with an HF tokenizer rebuilt offline from open_clip's BPE merges, encoded
through `resi-dual encode` (digits, 60 train + 60 test images).
"""

import csv
import json

import pytest
import torch
import torch.nn.functional as F

from resi_dual.cli import main


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


@pytest.fixture(scope="module")
def stores(tmp_path_factory, tiny_clip_model):
    from resi_dual.models.text import clip_tokenizer_from_open_clip_bpe

    root = tmp_path_factory.mktemp("zs_cli")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tiny_clip_model().save_pretrained(root / "clip")
    clip_tokenizer_from_open_clip_bpe().save_pretrained(root / "clip")
    from transformers import CLIPImageProcessor

    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(root / "clip")
    out = {}
    for split in ("train", "test"):
        rc = main(["encode", "--model", f"hf:{root / 'clip'}", "--dataset", "digits", "--split", split, "--limit", "60",
                   "--out", str(root / split), "--no-progress", "--dtype", "float32"])
        assert rc == 0
        out[split] = root / split
    dic = root / "dictionary.txt"
    dic.write_text("\n".join(["a dog", "a cat", "red", "stripes", "an aerial view", "the number 7", "a sketch",
                              "a bright photo", "wood", "a smiling face", "a blue car", "grass"]) + "\n")
    out["dictionary"] = dic
    out["root"] = root
    yield out
    torch.set_num_threads(threads)


def test_zeroshot_cli(stores, capsys):
    from resi_dual import load_model, open_store
    from resi_dual.models.text import get_text_tower
    from resi_dual.zeroshot import build_classifier, templates_for

    assert main(["zeroshot", str(stores["test"])]) == 0
    rep = json.loads((stores["test"] / "zeroshot" / "zeroshot.json").read_text())
    store = open_store(stores["test"])
    tower = get_text_tower(load_model(store.meta.model_spec))
    w = build_classifier(tower, [str(d) for d in range(10)], templates_for("digits"))
    pred = (F.normalize(store.output(), dim=-1) @ w.T).argmax(1).numpy()
    assert rep["top1"] == pytest.approx(float((pred == store.labels).mean()))
    assert rep["classifier"] == "text" and len(rep["per_class"]) == 10
    rows = list(csv.reader((stores["test"] / "zeroshot" / "per_class.tsv").open(), delimiter="\t"))
    assert rows[0] == ["class", "n", "top1"] and len(rows) == 11
    assert "top-1" in capsys.readouterr().out


def test_interpret_cli(stores):
    out = stores["root"] / "interp"
    assert main(["interpret", str(stores["test"]), "--method", "somp", "-k", "3", "--dictionary", str(stores["dictionary"]),
                 "--out", str(out), "--no-progress", "--pcs", "2", "--pc-texts", "1"]) == 0
    rows = list(csv.DictReader((out / "somp.tsv").open(), delimiter="\t"))
    assert len(rows) == 4 * 3  # 2 layers × 2 heads, k = 3
    assert {r["unit"] for r in rows} == {"L0H0", "L0H1", "L1H0", "L1H1"}
    pcs = list(csv.DictReader((out / "pc_descriptions.tsv").open(), delimiter="\t"))
    assert len(pcs) == 4 * 2 * 2
    assert (out / "somp.md").read_text().startswith("# somp")
    assert main(["interpret", str(stores["test"]), "--method", "textspan", "-k", "2", "--units", "L1H0",
                 "--dictionary", str(stores["dictionary"]), "--out", str(out), "--pcs", "0", "--no-progress"]) == 0
    assert len((out / "textspan.tsv").read_text().splitlines()) == 1 + 2
    paper = stores["root"] / "interp_paper"
    assert main(["interpret", str(stores["test"]), "--method", "textspan", "-k", "2", "--units", "L1H0",
                 "--textspan-mode", "paper", "--dictionary", str(stores["dictionary"]), "--out", str(paper), "--pcs", "0",
                 "--no-progress"]) == 0
    assert len((paper / "textspan.tsv").read_text().splitlines()) == 1 + 2


def test_specialize_cli(stores):
    out = stores["root"] / "spec"
    assert main(["specialize", str(stores["test"]), "--train", str(stores["train"]), "--seeds", "2", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "ablation.tsv").open(), delimiter="\t"))
    full = [r for r in rows if int(r["heads_kept"]) == 4]
    assert full and all(float(r["accuracy"]) == pytest.approx(float(r["base_accuracy"])) for r in full)
    assert {r["ranking"] for r in rows} == {"S", "U|T", "U", "random"}
    assert (out / "ablation_digits.png").stat().st_size > 1000
    paper = stores["root"] / "spec_paper"
    assert main(["specialize", str(stores["test"]), "--train", str(stores["train"]), "--seeds", "2",
                 "--protocol", "paper", "--out", str(paper)]) == 0
    rows = list(csv.DictReader((paper / "ablation.tsv").open(), delimiter="\t"))
    assert sorted({int(r["heads_kept"]) for r in rows}) == [1, 2, 3]  # the paper's sizes for 4 heads: no "all heads"


def test_cli_errors(stores, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert main(["interpret", str(stores["test"]), "--dictionary", str(empty), "--no-progress"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["specialize", str(stores["test"]), "--train", str(stores["test"]), "--out", str(tmp_path)]) == 2
    assert "another split" in capsys.readouterr().err
    bad = tmp_path / "tpl.txt"
    bad.write_text("a photo\n")
    assert main(["zeroshot", str(stores["test"]), "--templates", str(bad)]) == 2
    assert "{}" in capsys.readouterr().err
