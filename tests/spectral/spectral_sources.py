"""Hand-built random encodings for the spectral tests (no tracer): imported by name, not through
`conftest`, whose module name is shared by every area's conftest."""

import numpy as np
import torch

from resi_dual.core.encodings import Readout, UnitEncodings
from resi_dual.core.units import Composition
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
