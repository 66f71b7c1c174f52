"""Hand-built encodings and a direct float64 PCA, so adapter tests need no model and no store."""

from __future__ import annotations

import numpy as np
import torch

from resi_dual.core.encodings import Readout, UnitEncodings
from resi_dual.core.units import Composition
from resi_dual.spectral.bases import UnitBases
from resi_dual.store.base import MemorySource


def make_model(L=2, H=3, d_model=8, d_head=4, d_out=10, seed=0, model_id="synthetic") -> tuple[Composition, Readout]:
    comp = Composition(model_id, "test", L, H, d_model, d_head, d_out)
    g = torch.Generator().manual_seed(seed)
    U = len(comp)
    readout = Readout(
        torch.randn(d_out, d_model, generator=g),
        torch.randn(L, H, d_out, d_head, generator=g),
        0.1 * torch.randn(U, d_out, generator=g),
        0.1 * torch.randn(U, d_out, generator=g),
        0.1 * torch.randn(U, d_out, generator=g),
    )
    return comp, readout


def make_encodings(comp: Composition, readout: Readout, n: int, seed: int = 1, heads: torch.Tensor | None = None) -> UnitEncodings:
    """Random raw encodings; ``output`` is the exact sum of the units (float64, stored float32)."""
    g = torch.Generator().manual_seed(seed)
    dense = torch.randn(n, 1 + comp.n_layers, comp.d_model, generator=g)
    if heads is None:
        heads = torch.randn(n, comp.n_layers, comp.n_heads, comp.d_head, generator=g)
    mu = 0.1 * torch.randn(n, generator=g)
    sigma = 1.0 + torch.rand(n, generator=g)
    output = readout.to(torch.float64).apply(comp, dense.double(), heads.double(), mu.double(), sigma.double()).sum(1)
    return UnitEncodings(comp, readout, dense, heads, mu, sigma, output.float())


def make_source(comp, readout, n, seed=1, n_classes=3, labels=None, heads=None, class_names=None) -> MemorySource:
    enc = make_encodings(comp, readout, n, seed, heads)
    if labels is None:
        labels = np.random.default_rng(seed).integers(0, n_classes, n)
    names = class_names or [f"class{c}" for c in range(n_classes)]
    return MemorySource(enc, labels, names)


def make_informative_source(n, seed, informative, comp, readout, n_classes=3) -> MemorySource:
    """Heads in ``informative`` (labels such as "L0H1") carry a class-dependent shift; the others only
    (3× larger) noise, so training λ helps on held-out rows."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, n_classes, (n,), generator=g)
    heads = 3.0 * torch.randn(n, comp.n_layers, comp.n_heads, comp.d_head, generator=g)
    pattern = torch.randn(n_classes, comp.n_layers, comp.n_heads, comp.d_head, generator=torch.Generator().manual_seed(99))
    for lab in informative:
        l, h = int(lab[1]), int(lab[3])
        heads[:, l, h] = torch.randn(n, comp.d_head, generator=g) + pattern[labels, l, h]
    return make_source(comp, readout, n, seed, n_classes, labels.numpy(), heads)


def class_mean_classifier(source: MemorySource, informative) -> torch.Tensor:
    """(n_classes, d_out) classifier reading the ``informative`` heads' class means: at λ = 1 the other
    heads' noise swamps it."""
    comp = source.composition
    c = source.contributions([comp.index(lab) for lab in informative], dtype=torch.float64).sum(1)
    y = torch.from_numpy(source.labels)
    means = torch.stack([c[y == k].mean(0) - c.mean(0) for k in range(int(y.max()) + 1)])
    return torch.nn.functional.normalize(means.float(), dim=1)


def direct_bases(source: MemorySource) -> UnitBases:
    """Per-unit PCA by SVD of the float64 contributions; min(n−1, d_in+2, d_out) components, max-|·| entry positive."""
    comp = source.composition
    contrib = source.contributions(dtype=torch.float64)  # (n, U, d_out)
    n = contrib.shape[0]
    means, comps, ev, tot = {}, {}, {}, {}
    for i, u in enumerate(comp.units):
        x = contrib[:, i]
        m = x.mean(0)
        _, s, vt = torch.linalg.svd(x - m, full_matrices=False)
        d_in = comp.d_head if u.kind == "head" else comp.d_model
        k = min(n - 1, d_in + 2, comp.d_out)
        vt = vt[:k]
        vt = vt * torch.sign(vt.gather(1, vt.abs().argmax(1, keepdim=True)))
        means[u.label], comps[u.label] = m, vt
        ev[u.label] = s[:k] ** 2 / (n - 1)
        tot[u.label] = float((s**2).sum() / (n - 1))
    return UnitBases(comp, comp.labels, means, comps, ev, tot, n, {"how": "direct"})


def make_world(n_train: int, n_other: int):
    """(composition, readout, train source, second source, train-split bases, (3, d_out) classifier)."""
    from resi_dual.spectral.pca import fit_bases

    comp, readout = make_model()
    train = make_source(comp, readout, n_train, seed=1)
    other = make_source(comp, readout, n_other, seed=2)
    bases = fit_bases(train, progress=False)
    g = torch.Generator().manual_seed(5)
    classifier = torch.nn.functional.normalize(torch.randn(3, comp.d_out, generator=g), dim=1)
    return comp, readout, train, other, bases, classifier


#: the heads that carry the label in :func:`informative_task`
INFORMATIVE = ("L0H1", "L1H2")


def informative_task(*sizes: int):
    """A world where the heads in :data:`INFORMATIVE` carry the label (``make_model(seed=3)``): training λ
    helps on held-out rows. Returns (composition, readout, one source per size (seeds 11, 12, …),
    direct bases of the first source, its class-mean classifier)."""
    comp, readout = make_model(seed=3)
    sources = [make_informative_source(n, 11 + i, INFORMATIVE, comp, readout) for i, n in enumerate(sizes)]
    return comp, readout, sources, direct_bases(sources[0]), class_mean_classifier(sources[0], INFORMATIVE)
