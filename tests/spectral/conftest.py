"""Hand-built random encodings (no tracer needed): a small composition, a random readout, raw encodings."""

import numpy as np
import pytest
import torch

from resi_dual.models.encodings import Readout, UnitEncodings
from resi_dual.models.units import Composition
from resi_dual.store.base import MemorySource


def make_source(n=300, n_layers=2, n_heads=3, d_model=8, d_head=4, d_out=16, seed=0, model_id="test", meta=None):
    """A MemorySource of random encodings. d_out=16 sits between d_head+2=6 and d_model+2=10…
    no: above both, so heads *and* dense units live in proper affine subspaces of the output space."""
    g = torch.Generator().manual_seed(seed)
    c = Composition(model_id, "test", n_layers=n_layers, n_heads=n_heads, d_model=d_model, d_head=d_head, d_out=d_out)
    U = len(c)
    r = Readout(
        torch.randn(d_out, d_model, generator=g),
        torch.randn(n_layers, n_heads, d_out, d_head, generator=g),
        torch.randn(U, d_out, generator=g),
        torch.randn(U, d_out, generator=g),
        torch.randn(U, d_out, generator=g),
    )
    # anisotropic raw encodings, so spectra decay like real ones
    scale_d = torch.logspace(0, -2, d_model)
    scale_h = torch.logspace(0, -1.5, d_head)
    dense = torch.randn(n, 1 + n_layers, d_model, generator=g) * scale_d
    heads = torch.randn(n, n_layers, n_heads, d_head, generator=g) * scale_h
    mu = 0.1 * torch.randn(n, generator=g)
    sigma = 1.0 + 0.3 * torch.rand(n, generator=g)
    enc = UnitEncodings(c, r, dense, heads, mu, sigma, torch.zeros(n, d_out))
    labels = np.arange(n) % 3
    return MemorySource(enc, labels, ["a", "b", "c"], meta=dict(meta or {"model_spec": model_id}))


@pytest.fixture
def source():
    return make_source()


def _tiny_clip_spec(path, seed: int = 0) -> str:
    """A tiny random CLIP vision tower saved as a local HF checkpoint (no hub)."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="session")
def disk_stores(tmp_path_factory):
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
        model = load_model(_tiny_clip_spec(root / "clip0", 0))
        other = load_model(_tiny_clip_spec(root / "clip1", 1))
        for key, m, ds in (("digits", model, "digits"), ("animals", model, "animal-mnist"), ("other", other, "digits")):
            encode_store(m, load_dataset(ds, "test"), root / key, cfg)
            out[key] = root / key
    return out
