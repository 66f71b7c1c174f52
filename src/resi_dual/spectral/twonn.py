"""TwoNN intrinsic dimension (Facco, d'Errico, Rodriguez & Laio, Sci. Rep. 2017).

The neighbour distances r1, r2 are exact (:mod:`resi_dual.spectral.neighbours` finds them without the
N × N distance matrix). Duplicates (r1 = 0) and ties (r1 = r2) are dropped before the fit, as
docs/DESIGN.md §5 specifies.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.spectral.neighbours import _as_tensor, two_nearest_neighbours

__all__ = ["TwoNN", "subsample_rows", "two_nearest_neighbours", "twonn_fit"]


def twonn_fit(r1: torch.Tensor, r2: torch.Tensor, discard_fraction: float = 0.1) -> tuple[float, int]:
    """Fit ``−log(1−F) = d·log μ`` through the origin on the smallest (1 − discard) of μ = r2/r1.

    Points with r1 = 0 (duplicates) or r1 = r2 (ties) are dropped first.
    Returns: (dimension, number of points used in the fit).
    """
    keep = (r1 > 0) & (r2 > r1)
    mu = torch.sort(r2[keep] / r1[keep]).values
    n = mu.numel()
    n_fit = int(math.floor(n * (1.0 - discard_fraction)))
    if n_fit < 2:
        raise ResiDualError(f"TwoNN: only {n} points have two distinct, non-zero neighbour distances; need more")
    f = torch.arange(1, n + 1, dtype=torch.float64) / n
    lx = torch.log(mu[:n_fit])
    ly = -torch.log1p(-f[:n_fit])
    return float((lx * ly).sum() / (lx * lx).sum()), n_fit


class TwoNN:
    """TwoNN intrinsic-dimension estimator (scikit-learn contract).

    Parameters:
        discard_fraction: fraction of the largest μ = r2/r1 left out of the fit (0.1 as in Facco et al.).
        max_samples: seeded subsample size when more points are given (50k as in the paper).
        random_state: seed of the subsample.
        block_rows, n_candidates, n_threads: see :func:`two_nearest_neighbours`.

    Attributes:
        dimension_: the estimate (float). 0.0 when all points coincide (with a warning).
        n_samples_: points used for the neighbour search (after subsampling).
        n_fit_: points in the least-squares fit.
        n_duplicates_: points with r1 = 0; n_ties_: points with r1 = r2 > 0 (both dropped).
        r1_, r2_: (n_samples_,) neighbour distances, float64.
    """

    def __init__(self, discard_fraction: float = 0.1, max_samples: int | None = 50_000, random_state: int = 0,
                 block_rows: int = 256, n_candidates: int = 3, n_threads: int | None = None) -> None:
        self.discard_fraction = discard_fraction
        self.max_samples = max_samples
        self.random_state = random_state
        self.block_rows = block_rows
        self.n_candidates = n_candidates
        self.n_threads = n_threads

    def fit(self, X, y=None, linear_map=None) -> "TwoNN":
        """Estimate from points X (n, D); ``linear_map`` (r, D) measures distances as ‖M(x_i − x_j)‖."""
        x = _as_tensor(X)
        if x.ndim != 2:
            raise ResiDualError(f"TwoNN expects (n, d) points, got shape {tuple(x.shape)}")
        rows = subsample_rows(x.shape[0], self.max_samples, self.random_state)
        if rows is not None:
            x = x[torch.from_numpy(rows)]
        r1, r2 = two_nearest_neighbours(x, self.block_rows, self.n_candidates, linear_map=linear_map,
                                        n_threads=self.n_threads)
        self.r1_, self.r2_ = r1, r2
        self.n_samples_ = int(x.shape[0])
        self.n_duplicates_ = int((r1 == 0).sum())
        self.n_ties_ = int(((r1 == r2) & (r1 > 0)).sum())
        if bool((r2 == 0).all()):
            warnings.warn("TwoNN: every point coincides with its neighbours; dimension reported as 0")
            self.dimension_, self.n_fit_ = 0.0, 0
            return self
        self.dimension_, self.n_fit_ = twonn_fit(r1, r2, self.discard_fraction)
        return self


def subsample_rows(n: int, max_samples: int | None, seed: int) -> np.ndarray | None:
    """Sorted seeded subsample of ``max_samples`` row indices of ``n``, or None when n ≤ max_samples."""
    if max_samples is None or n <= max_samples:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_samples, replace=False))
