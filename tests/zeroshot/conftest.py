"""A tiny hand-built model output (no library model): random readout, random raw encodings."""

import numpy as np
import pytest
import torch

from resi_dual.models.encodings import Readout, UnitEncodings
from resi_dual.models.units import Composition
from resi_dual.store.base import MemorySource


def make_source(n=300, L=2, H=3, d_model=12, d_head=4, d_out=24, seed=0, n_classes=3) -> MemorySource:
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


@pytest.fixture
def toy_source():
    return make_source()


@pytest.fixture(scope="session")
def make_toy_source():
    """The :func:`make_source` factory, for tests that need several splits."""
    return make_source


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny tensors: one thread avoids OpenMP spin-waits that dominate on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
