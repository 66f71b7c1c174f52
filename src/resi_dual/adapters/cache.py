"""Per-unit PCA coefficients computed once per split from a store; training never reruns the backbone.

For an adapted unit u with mean ``m_u`` and components ``V_u`` (k_u, d_out) its contribution is
``c_u = A_u f_u + k_u`` (`Readout.affine`), so its coefficients are computed in the unit's own
d_in+2 coordinates::

    ⟨c_u − m_u, v_k⟩ = f_u · (V_u A_u)_kᵀ + V_u (k_u − m_u)

(66 numbers per sample for a 64-wide head, whatever d_out is). All adapted units' coefficients are
stacked into one flattened (n, Σ_u k_u) matrix, and the units kept as they are summed once into a
(n, d_out) ``fixed`` tensor — so a training step is a single matmul (docs/DESIGN.md §8).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError
from resi_dual.core.encodings import Readout, unit_features
from resi_dual.core.units import Composition
from resi_dual.store.base import EncodingSource


@dataclass
class CachedSplit:
    """Cached adapter inputs of one split. Shapes: coef (n, K) float32, fixed (n, d_out) float32,
    labels (n,) int64."""

    coef: torch.Tensor
    fixed: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, rows: np.ndarray | torch.Tensor) -> "CachedSplit":
        rows = torch.as_tensor(np.asarray(rows), dtype=torch.int64)
        return CachedSplit(self.coef[rows], self.fixed[rows], self.labels[rows])


@dataclass
class Projection:
    """What an adapter reads from unit encodings (the non-trainable half of an adapter).

    Attributes:
        source: ``units`` (coefficients of unit contributions) or ``output`` (coefficients of the
            model's output embedding, for the spectral / linear / zero-shot adapters).
        adapted: labels of the adapted units (``["output"]`` for the output PCA; empty for linear).
        n_components: k_u per adapted label.
        components: (K, d_out) the stacked component rows, K = Σ_u k_u.
        means: (len(adapted), d_out) the adapted units' means.
        kept: labels of units whose contributions pass through unchanged (``source == "units"``).
        keep_rest: the adapted units' means and their parts outside the kept components pass through
            unchanged too (``source == "units"``), so λ = 1 gives back the sum of the adapted and kept
            units exactly — with every unit kept or adapted, the model's own embedding.
    """

    source: str
    adapted: list[str]
    n_components: list[int]
    components: torch.Tensor
    means: torch.Tensor
    kept: list[str]
    keep_rest: bool = False

    @property
    def offsets(self) -> list[int]:
        return [0, *np.cumsum(self.n_components).tolist()]


def readout_fingerprint(comp: Composition, readout: Readout) -> torch.Tensor:
    """(U,) float64 ‖A_u‖_F + ‖k_u‖ per unit: identifies a model's readout without storing it."""
    r = readout.to(torch.float64)
    return torch.stack([r.affine(comp, i)[0].norm() + r.affine(comp, i)[1].norm() for i in range(len(comp))])


def check_same_model(a: EncodingSource, b: EncodingSource, what: str = "stores") -> None:
    """Raise `ResiDualError` unless both sources come from the same model (layout, weights hash, readout)."""
    if not a.composition.same_model(b.composition):
        raise ResiDualError(f"{what} come from different models ({a.composition.model_id!r} vs {b.composition.model_id!r})")
    ha, hb = a.meta.weights_hash, b.meta.weights_hash
    if ha and hb and ha != hb:
        raise ResiDualError(f"{what} come from different model weights ({ha[:12]} vs {hb[:12]})")
    fa, fb = readout_fingerprint(a.composition, a.readout), readout_fingerprint(b.composition, b.readout)
    if not torch.allclose(fa, fb, rtol=1e-4, atol=1e-8):
        raise ResiDualError(f"{what} come from different model weights (their readouts differ)")


def check_same_labels(a: EncodingSource, b: EncodingSource, what: str) -> None:
    if list(a.class_names) != list(b.class_names):
        raise ResiDualError(
            f"{what}: label sets differ ({len(a.class_names)} classes {a.class_names[:3]}… vs "
            f"{len(b.class_names)} classes {b.class_names[:3]}…)"
        )


def encode_split(
    source: EncodingSource,
    proj: Projection,
    rows: np.ndarray | None = None,
    block_rows: int = 4096,
    progress: bool = False,
) -> CachedSplit:
    """Compute the cached coefficients and fixed part of ``source`` (rows, or all) in float64 blocks.

    Returns a :class:`CachedSplit` with coef (n, K) and fixed (n, d_out), stored as float32.
    """
    comp = source.composition
    n = len(source) if rows is None else len(rows)
    d_out = comp.d_out
    K = int(sum(proj.n_components))
    coef = torch.empty(n, K, dtype=torch.float32)
    fixed = torch.zeros(n, d_out, dtype=torch.float32)
    readout = source.readout.to(torch.float64)
    comps = proj.components.to(torch.float64)
    means = proj.means.to(torch.float64)
    offs = proj.offsets

    # Per adapted unit: coefficients = f_u @ P_uᵀ + b_u, precomputed once (k_u × (d_in+2)).
    unit_maps = []
    if proj.source == "units":
        for j, label in enumerate(proj.adapted):
            i = comp.index(label)
            a_u, k_u = readout.affine(comp, i)
            v = comps[offs[j] : offs[j + 1]]
            unit_maps.append((i, (v @ a_u).T.contiguous(), v @ (k_u - means[j]), a_u.T.contiguous(), k_u, v))
        kept_idx = [comp.index(lab) for lab in proj.kept]

    with task(progress, "caching coefficients", n) as step:
        for start in range(0, n, block_rows):
            stop = min(start + block_rows, n)
            r = slice(start, stop) if rows is None else np.asarray(rows[start:stop])
            blk = source.raw(r, dtype=torch.float64)
            if proj.source == "units":
                rest = torch.zeros(stop - start, d_out, dtype=torch.float64)
                for j, (i, p_t, b, a_t, k_u, v) in enumerate(unit_maps):
                    f = unit_features(comp, i, blk.dense, blk.heads, blk.mu, blk.sigma)
                    c = f @ p_t + b
                    coef[start:stop, offs[j] : offs[j + 1]] = c.float()
                    if proj.keep_rest:  # c_u minus its part on the components: mean plus tail
                        rest += f @ a_t + k_u - c @ v
                if kept_idx:
                    rest += readout.apply(comp, blk.dense, blk.heads, blk.mu, blk.sigma, kept_idx).sum(1)
                fixed[start:stop] = rest.float()
            else:
                y = blk.output.to(torch.float64)
                if K:
                    c = (y - means[0]) @ comps.T
                    coef[start:stop] = c.float()
                    # mean plus whatever lies outside the kept components: λ = 1 gives y back exactly
                    y = y - c @ comps
                fixed[start:stop] = y.float()
            step(stop - start)
    if not (torch.isfinite(coef.sum()) and torch.isfinite(fixed.sum())):  # NaN/inf reach the sums: one cheap pass
        where = getattr(source, "path", None) or getattr(source.meta, "dataset_name", None) or "the encodings"
        split = getattr(source.meta, "split", None) or ""
        raise ResiDualError(f"non-finite values (NaN or inf) in the {split} store {where}; re-encode it "
                            "(`resi-dual verify` checks its files)")
    labels = torch.from_numpy(np.asarray(source.labels if rows is None else source.labels[rows], dtype=np.int64))
    return CachedSplit(coef, fixed, labels)


def output_pca(source: EncodingSource, block_rows: int = 4096) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PCA of the model's output embedding (for the spectral adapter), float64 moments in blocks.

    Returns mean (d,), components (k, d) rows by decreasing variance with the largest-|·| entry of
    each made positive (fixed signs), explained variance (k,); k = min(n − 1, d).
    """
    n = len(source)
    if n < 2:
        raise ResiDualError("the output PCA needs at least 2 samples")
    total = None
    for blk in source.iter_blocks(block_rows, dtype=torch.float64):
        y = blk.output
        total = y.sum(0) if total is None else total + y.sum(0)
    mean = total / n
    cov = None
    for blk in source.iter_blocks(block_rows, dtype=torch.float64):
        y = blk.output - mean
        cov = y.T @ y if cov is None else cov + y.T @ y
    ev, vecs = torch.linalg.eigh(cov / (n - 1))
    order = torch.argsort(ev, descending=True)
    k = min(n - 1, ev.numel())
    ev, comps = ev[order][:k].clamp_min(0), vecs[:, order][:, :k].T.contiguous()
    signs = torch.sign(comps.gather(1, comps.abs().argmax(1, keepdim=True)))
    return mean, comps * signs, ev


def tensors_hash(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()
