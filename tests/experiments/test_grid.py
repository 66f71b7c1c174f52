"""A tiny grid end to end: killed mid-run (SIGKILL), resumed, and compared with an uninterrupted run."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from resi_dual.experiments.config import load_config
from resi_dual.report.experiments import run_experiment

pytestmark = pytest.mark.integration  # the CLI / real stores end to end


GRID = """
[grid]
seeds = [0]
batch-size = 32

[[models]]
name = "a"
spec = "hf:{root}/m0"

[[models]]
name = "b"
spec = "hf:{root}/m1"

[[datasets]]
name = "digits"
spec = "digits"

[[datasets]]
name = "textiles"
spec = "textiles"

[reference]
name = "digits"
spec = "digits"

[limits]
train = 48
val = 32
test = 32
reference = 64

[intrinsic-dim]
variance = {variance}
twonn-max-samples = 64
"""


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    """Two small random-weight CLIP vision towers saved with save_pretrained, and a grid file."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("grid")
    for i, layers in enumerate((2, 3)):
        torch.manual_seed(i)
        cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
                               image_size=28, patch_size=7, projection_dim=16)
        CLIPVisionModelWithProjection(cfg).eval().save_pretrained(root / f"m{i}")
    (root / "grid.toml").write_text(GRID.format(root=root, variance=0.99))
    (root / "grid2.toml").write_text(GRID.format(root=root, variance=0.9))
    return root


def tables(out: Path) -> dict[str, bytes]:
    d = out / "intrinsic-dim"
    return {p.name: p.read_bytes() for p in sorted(d.glob("*.tsv")) + sorted(d.glob("*.md"))}


def test_killed_run_resumes_to_the_same_tables(grid_dir, tmp_path):
    import warnings

    warnings.simplefilter("ignore")
    config = load_config(grid_dir / "grid.toml")
    reference = run_experiment("intrinsic-dim", config, tmp_path / "ref", progress=False)
    assert reference["cells"] == 6 and reference["computed"] == 6  # 2 models × (store, bases, ID)

    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "resi_dual", "experiment", "intrinsic-dim", "--config", str(grid_dir / "grid.toml"),
         "--out", str(out), "--quiet", "--threads", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, start_new_session=True)
    deadline = time.monotonic() + 60
    try:
        while not list((out / "cells").glob("*/*/cell.json")):
            assert proc.poll() is None, "the run ended before any cell finished"
            assert time.monotonic() < deadline, "no cell finished within 60 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finished = list((out / "cells").glob("*/*/cell.json"))
    assert 1 <= len(finished) < 6 and not (out / "intrinsic-dim" / "run.json").exists()

    resumed = run_experiment("intrinsic-dim", config, out, progress=False)
    assert resumed["cached"] == len(finished)
    assert resumed["computed"] == 6 - resumed["cached"]
    assert tables(out) == tables(tmp_path / "ref")
    assert b"L1H1" in tables(out)["units.tsv"]

    # finished: nothing is recomputed; a changed setting recomputes only the ID cells
    again = run_experiment("intrinsic-dim", config, out, progress=False)
    assert again["computed"] == 0
    changed = run_experiment("intrinsic-dim", load_config(grid_dir / "grid2.toml"), out, progress=False)
    assert changed["computed"] == 2 and changed["cached"] == 4
    assert tables(out) != tables(tmp_path / "ref")


def test_data_version_recomputes_the_stores_and_what_reads_them(grid_dir, tmp_path, monkeypatch):
    """Bumping resi_dual.data.DATA_VERSION re-keys every store cell and, through the dependency keys,
    the bases and ID cells that read them; it salts nothing else, and the old cells stay valid."""
    import warnings

    import resi_dual.data as data
    from resi_dual.experiments.cells import topological
    from resi_dual.experiments.grid import Grid
    from resi_dual.experiments.runners import plan_intrinsic_dim

    warnings.simplefilter("ignore")
    config = load_config(grid_dir / "grid.toml")

    def plan():
        grid = Grid(config, tmp_path, progress=False)
        cells, _ = plan_intrinsic_dim(grid)
        unrelated = grid.analysis("intrinsic-dim", "no-store", {"k": 1}, [], lambda: [])
        return {c.label: c for c in topological(cells)}, unrelated

    first = run_experiment("intrinsic-dim", config, tmp_path, progress=False)
    assert first["computed"] == 6
    old, old_unrelated = plan()
    monkeypatch.setattr(data, "DATA_VERSION", data.DATA_VERSION + 1)
    new, new_unrelated = plan()
    assert new.keys() == old.keys() and len(new) == 6
    for label, cell in new.items():
        assert cell.key != old[label].key and not cell.done(), label  # stores, bases and ID cells all re-keyed
        if cell.kind == "store":  # only the data version differs in the store settings
            assert {k: v for k, v in cell.settings.items() if k != "data_version"} == \
                   {k: v for k, v in old[label].settings.items() if k != "data_version"}
            assert cell.settings["data_version"] == old[label].settings["data_version"] + 1
        else:  # the others change through their dependencies' keys only
            assert cell.settings == old[label].settings
    assert new_unrelated.key == old_unrelated.key  # a cell that reads no store keeps its key
    bumped = run_experiment("intrinsic-dim", config, tmp_path, progress=False)
    assert bumped["computed"] == 6 and bumped["cached"] == 0
    assert all(c.done() for c in new.values()) and all(c.done() for c in old.values())

    monkeypatch.setattr(data, "DATA_VERSION", data.DATA_VERSION - 1)  # back: the old cells are found again
    assert run_experiment("intrinsic-dim", config, tmp_path, progress=False)["computed"] == 0
