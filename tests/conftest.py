"""Fixtures shared by several test areas: a hand-built toy model output, tiny random CLIP checkpoints,
and a one-torch-thread switch (areas turn it on with an autouse fixture in their own conftest)."""

import pytest
import torch

from resi_dual.core.encodings import Readout, UnitEncodings
from resi_dual.core.units import Composition
from resi_dual.store.base import MemorySource


def _make_toy_source(n=300, L=2, H=3, d_model=12, d_head=4, d_out=24, seed=0, n_classes=3) -> MemorySource:
    """A tiny hand-built model output (no library model): random readout, random raw encodings."""
    g = torch.Generator().manual_seed(1234)  # the model: the same for every split
    comp = Composition("test-model", "test", L, H, d_model, d_head, d_out)
    U = len(comp.units)
    readout = Readout(
        dense_weight=torch.randn(d_out, d_model, generator=g),
        head_weight=torch.randn(L, H, d_out, d_head, generator=g),
        inv_sigma=torch.randn(U, d_out, generator=g) * 0.1,
        mu_over_sigma=torch.randn(U, d_out, generator=g) * 0.1,
        const=torch.randn(U, d_out, generator=g) * 0.1,
    )
    g = torch.Generator().manual_seed(seed)  # the data of this split
    labels = torch.arange(n) % n_classes
    dense = torch.randn(n, 1 + L, d_model, generator=g)
    heads = torch.randn(n, L, H, d_head, generator=g)
    # class signal in a few heads so that zero-shot and rankings have something to find
    heads[:, 1, 0, :] += 3.0 * torch.nn.functional.one_hot(labels, d_head).float()[:, :d_head] if n_classes <= d_head else 0
    mu = torch.randn(n, generator=g) * 0.1
    sigma = 1.0 + torch.rand(n, generator=g)
    enc = UnitEncodings(comp, readout, dense, heads, mu, sigma, torch.zeros(n, d_out))
    enc.output = enc.contributions().sum(1)
    return MemorySource(enc, labels.numpy(), [f"class{i}" for i in range(n_classes)], meta={"dataset_name": "toy"})


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Measured machine choices (resi_dual.runtime) are cached in a private folder, not the user's."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RESI_DUAL_CACHE", str(tmp_path_factory.mktemp("resi-dual-cache")))
    yield
    mp.undo()


@pytest.fixture
def toy_source():
    return _make_toy_source()


@pytest.fixture(scope="session")
def make_toy_source():
    """The toy-source factory (``make_toy_source(n=..., seed=..., n_classes=...)``), for several splits."""
    return _make_toy_source


def _save_tiny_clip(path, seed: int = 0) -> str:
    """A tiny random CLIP vision tower saved as a local HF checkpoint (no hub); returns its spec."""
    import transformers

    torch.manual_seed(seed)
    cfg = transformers.CLIPVisionConfig(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=2, projection_dim=16)
    transformers.CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return f"hf:{path}"


@pytest.fixture(scope="session")
def save_tiny_clip():
    """``save_tiny_clip(path, seed=0) -> spec``: a tiny random CLIP vision checkpoint."""
    return _save_tiny_clip


def _tiny_clip_model(seed: int = 0):
    """A tiny random HF CLIP with a text tower (open_clip's 49408-token vocabulary), in eval mode."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval()


@pytest.fixture(scope="session")
def tiny_clip_model():
    """``tiny_clip_model(seed=0)``: a fresh tiny random HF CLIP (vision + text)."""
    return _tiny_clip_model


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors and models: one thread avoids OpenMP spin-waits that dominate (~50×) on a shared,
    loaded CPU. Not autouse: an area's conftest turns it on for its modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(items):
    """Every test that is not marked integration or slow is a unit test (`pytest -m unit`)."""
    for item in items:
        if item.get_closest_marker("integration") is None and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.unit)
