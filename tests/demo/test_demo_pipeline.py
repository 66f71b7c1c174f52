"""A shortened `resi-dual demo` end to end: every report file exists, every figure decodes."""

import json
import re
import subprocess
import sys

import pytest
from PIL import Image

from resi_dual.demo import DEMO_GRID, demo_config


pytestmark = pytest.mark.integration  # the CLI / real stores end to end


def test_demo_config_is_valid_and_quick_is_smaller():
    full, quick = demo_config(), demo_config(quick=True)
    assert [d.name for d in full.datasets] == ["world-unseen", "world", "fashion-mnist"]
    assert full.reference.spec == "world" and full.reference_split == "train"
    assert quick.limits.train < full.limits.train and quick.adaptation.max_epochs < full.adaptation.max_epochs
    for m in ("residual", "residual-keep", "coarse", "linear", "linear-probe", "tip-adapter", "zeroshot"):
        assert m in DEMO_GRID["adaptation"]["methods"]
    # the tower-rerunning methods are the offline grid's, not the demo's (its 10-minute budget)
    assert not {"finetune", "wise-ft", "lora", "coop"} & set(DEMO_GRID["adaptation"]["methods"])


def test_quick_demo_writes_a_complete_report(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "resi_dual", "demo", "--out", str(out), "--quick", "--quiet"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last == f"report: {out / 'index.html'}"
    html = (out / "index.html").read_text()
    md = (out / "results.md").read_text()
    images = re.findall(r'<img[^>]+src="([^"]+)"', html)
    assert len(images) >= 6  # adaptation ×2, ID heatmap, spectra, similarity, specialization ×2
    for src in images:
        with Image.open(out / src) as im:
            im.load()
            assert im.size[0] > 100 and im.size[1] > 100
    # every method has a row, with a number, for every dataset
    for ds in ("world-unseen", "world", "fashion-mnist"):
        for m in ("zeroshot", "residual", "residual-keep", "linear-probe", "tip-adapter"):  # methods of the quick grid
            assert re.search(rf"\| {ds} \| {m} \| \d+ \| \d+\.\d ± \d+\.\d \|", md), (ds, m)
    # the zero-shot figures themselves are checked against the pretraining log in tests/models/test_demo.py
    # the ground-truth check closes the report: both towers, with their agreement rates
    assert "Ground truth" in md and (out / "groundtruth" / "summary.tsv").is_file()
    summary = (out / "groundtruth" / "summary.tsv").read_text().splitlines()
    assert [line.split("\t")[0] for line in summary] == ["tower", "trained", "control"]
    # the explorer site is there, complete, and the report links into it
    assert 'href="explorer/index.html"' in html and (out / "explorer" / "index.html").is_file()
    assert (out / "explorer" / "u" / "L5H0-pc1.html").is_file() and (out / "explorer" / "build.json").is_file()
    # a second run reuses every cell
    proc2 = subprocess.run([sys.executable, "-m", "resi_dual", "demo", "--out", str(out), "--quick", "--quiet"],
                           capture_output=True, text=True, timeout=1800)
    assert proc2.returncode == 0
    for name in ("intrinsic-dim", "similarity", "specialization", "adaptation"):
        run = json.loads((out / "grid" / name / "run.json").read_text())
        assert run["computed"] == 0 and run["cached"] == run["cells"]


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "precious.txt").write_text("keep me")
    proc = subprocess.run([sys.executable, "-m", "resi_dual", "demo", "--out", str(tmp_path), "--quick"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"
