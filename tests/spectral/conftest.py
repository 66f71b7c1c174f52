"""Spectral fixtures: random encodings (spectral_sources.py) and small on-disk stores of tiny CLIPs."""

import pytest

from spectral_sources import make_source


@pytest.fixture
def source():
    return make_source()


@pytest.fixture(scope="session")
def disk_stores(tmp_path_factory, save_tiny_clip):
    """Three small on-disk stores: tiny CLIP on digits and on animal-mnist, another CLIP on digits."""
    import warnings

    from resi_dual import load_model
    from resi_dual.data import load_dataset
    from resi_dual.store.writer import EncodeConfig, encode_store

    root = tmp_path_factory.mktemp("spectral_stores")
    cfg = EncodeConfig(limit=64, batch_size=64, chunk_rows=40, dtype="float32", progress=False)
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_model(save_tiny_clip(root / "clip0", 0))
        other = load_model(save_tiny_clip(root / "clip1", 1))
        for key, m, ds in (("digits", model, "digits"), ("animals", model, "animal-mnist"), ("other", other, "digits")):
            encode_store(m, load_dataset(ds, "test"), root / key, cfg)
            out[key] = root / key
    return out
