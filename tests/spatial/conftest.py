"""Spatial area: one torch thread for every module here."""

from __future__ import annotations

import pytest

from spatial_images import half_canvas_digits


@pytest.fixture(scope="module", autouse=True)
def _single_thread(one_torch_thread):
    yield


@pytest.fixture(scope="session")
def folder_store(tmp_path_factory):
    """A folder dataset of half-canvas digits (classes 0-2, at most 12 each) encoded by the demo model (float32)."""
    root = tmp_path_factory.mktemp("explore")
    data = root / "data"
    for i, (img, _half, y) in enumerate(half_canvas_digits(120, seed=7)):
        if y < 3 and len(list((data / str(y)).glob("*.png")) if (data / str(y)).exists() else []) < 12:
            (data / str(y)).mkdir(parents=True, exist_ok=True)
            img.save(data / str(y) / f"{i:03d}.png")
    store = root / "store"
    from resi_dual.cli import main

    assert main(["encode", "--model", "demo", "--dataset", f"folder:{data}", "--split", "train", "--out", str(store),
                 "--dtype", "float32", "--no-progress"]) == 0
    return root, data, store
