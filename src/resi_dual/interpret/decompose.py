"""TextSpan and SOMP: describe a point cloud by a few dictionary atoms (docs/DESIGN.md §6).

Both take the data either as an explicit (n, D) matrix or factored, ``X = data @ basisᵀ`` with
``data`` (n, p) and ``basis`` (D, p) — a head's contributions are ``[f, 1] @ [A_u, k_u]ᵀ`` with
p = d_head + 3 ≪ D, so the work happens in p dimensions. Both return the same picks as the
straightforward algorithms (``resi_dual.interpret.reference``), much faster — TextSpan whenever the
data's rank reaches r, and always in its ``paper`` mode (see :data:`TextSpanMode`):

* TextSpan (Gandelsman et al., ICLR 2024): the dictionary is projected on the span of the top-r right
  singular vectors of the (uncentred) data; every later step only involves those r coordinates, so we
  keep the r × r covariance of the centred data and the m × r text coordinates, and deflate both
  by the chosen direction (rank-one updates) instead of n × D data and m × D text matrices.
* SOMP (Tropp et al. 2006): scores Σ_n |⟨r_n, d⟩| need the n × m residual correlations. Refitting all
  chosen atoms by least squares leaves the residual ``X (I − P_S)``; adding one atom changes ``P_S`` by
  one orthonormal direction q (Gram–Schmidt of the atom against the chosen ones), so the correlations
  get the rank-one update ``M −= (X q)(D q)ᵀ`` instead of a new least-squares fit and an n × D × m product.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, get_args

import numpy as np
import torch

from resi_dual.errors import ResiDualError
from resi_dual.runtime import single_thread


#: TextSpan's span: ``fast`` takes the data's top-r right singular vectors in its own p coordinates,
#: clipped to its numerical rank; ``paper`` reproduces Gandelsman et al.'s code exactly: the SVD of
#: the explicit (n, D) data, whose rows beyond the data's rank are arbitrary null-space directions that
#: still change how the texts are deflated (so the picks can differ from the second step on).
TextSpanMode = Literal["fast", "paper"]
TEXTSPAN_MODES: tuple[str, ...] = get_args(TextSpanMode)


@dataclass
class Decomposition:
    """Atoms chosen for one point cloud.

    Attributes:
        method: ``textspan`` or ``somp``.
        indices: (k,) dictionary rows, in the order picked.
        texts: the corresponding descriptions (empty strings when no texts were given).
        weights: (k,) SOMP: norm over samples of each atom's least-squares coefficient;
            TextSpan: std of the data along the direction removed at that step.
        explained: (k,) cumulative fraction of the data's total variance explained after each step.
        total_variance: trace of the data's covariance.
    """

    method: str
    indices: list[int]
    texts: list[str]
    weights: np.ndarray
    explained: np.ndarray
    total_variance: float
    meta: dict = field(default_factory=dict)


def _as_double(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)


def _check(data: torch.Tensor, dictionary: torch.Tensor, basis: torch.Tensor | None, k: int) -> None:
    if dictionary.ndim != 2 or dictionary.shape[0] == 0:
        raise ResiDualError("the dictionary is empty")
    if data.ndim != 2 or data.shape[0] < 2:
        raise ResiDualError("need at least 2 samples to decompose")
    d = basis.shape[0] if basis is not None else data.shape[1]
    if basis is not None and basis.shape[1] != data.shape[1]:
        raise ResiDualError(f"basis has {basis.shape[1]} columns for {data.shape[1]}-wide data")
    if dictionary.shape[1] != d:
        raise ResiDualError(f"dictionary is {dictionary.shape[1]}-d but the data is {d}-d (wrong text tower?)")
    if k < 1:
        raise ResiDualError("k must be at least 1")
    if not torch.isfinite(data).all():
        raise ResiDualError("the data contains NaN or inf")


def _texts(texts: Sequence[str] | None, idx: list[int]) -> list[str]:
    return [texts[i] for i in idx] if texts is not None else ["" for _ in idx]


def text_span(data, dictionary, k: int = 20, rank: int = 80, basis=None, texts: Sequence[str] | None = None,
              rank_tol: float = 1e-10, mode: TextSpanMode = "fast") -> Decomposition:
    """TextSpan: k descriptions that successively explain the most variance of the data.

    Args:
        data: (n, p) samples, or coefficients of ``basis`` when given.
        dictionary: (m, D) atoms (L2-normalised text embeddings).
        k: steps. rank: r, the number of top right singular vectors the dictionary is projected on
            (``fast``: clipped to the data's numerical rank, where extra directions would be arbitrary).
        basis: optional (D, p); the data then is ``data @ basisᵀ``.
        texts: the m descriptions, for the report.
        mode: ``fast`` or ``paper`` (see :data:`TextSpanMode`); both give the same picks whenever the
            data's rank is at least r.
    """
    if mode not in TEXTSPAN_MODES:
        raise ResiDualError(f"unknown TextSpan mode {mode!r}; choose one of {', '.join(TEXTSPAN_MODES)}")
    y = _as_double(data)
    t = _as_double(dictionary)
    b = None if basis is None else _as_double(basis)
    _check(y, t, b, k)
    if k > t.shape[0]:
        raise ResiDualError(f"k = {k} is larger than the dictionary ({t.shape[0]} descriptions); TextSpan picks each at most once")
    if mode == "paper":
        cov, tc, total, r_eff = _paper_span(y if b is None else y @ b.T, t, rank)
    else:
        cov, tc, total, r_eff = _fast_span(y, t, b, rank, rank_tol)
    with single_thread():
        picks, weights, explained, removed = _text_span_steps(cov, tc, k, total)
    return Decomposition("textspan", picks, _texts(texts, picks), np.array(weights), np.array(explained), total,
                         {"rank": r_eff, "mode": mode})


def _fast_span(y: torch.Tensor, t: torch.Tensor, b: torch.Tensor | None, rank: int, rank_tol: float):
    """(r × r covariance of the centred data, (m, r) text coordinates, total variance, r) in p coordinates."""
    if b is not None:
        # X = Y Bᵀ = (Y Rᵀ) Qᵀ with Q orthonormal: singular vectors of X are Q times those of Y Rᵀ
        q, r = torch.linalg.qr(b)
        y = y @ r.T
        t = t @ q
    n = y.shape[0]
    gram = y.T @ y  # uncentred, as the original (the SVD is taken before centring)
    with single_thread():  # a small eigh is latency-bound: a contended thread pool only adds waiting
        evals, evecs = torch.linalg.eigh(gram)
    evals, evecs = evals.flip(0), evecs.flip(1)
    numerical_rank = int((evals > evals[0].clamp_min(1e-300) * rank_tol).sum())
    r_eff = max(1, min(rank, numerical_rank))
    w = evecs[:, :r_eff]  # (p, r)
    mean = y.mean(0)
    cov_y = (gram - n * torch.outer(mean, mean)) / (n - 1)
    return w.T @ cov_y @ w, t @ w, float(torch.trace(cov_y)), r_eff


def _paper_span(x: torch.Tensor, t: torch.Tensor, rank: int):
    """The same four quantities from the explicit (n, D) data, with the SVD the original code takes
    (numpy's, ``full_matrices=False``, top ``rank`` rows whatever the data's rank)."""
    vh = np.linalg.svd(x.numpy(), full_matrices=False)[2][:rank]
    w = torch.from_numpy(np.ascontiguousarray(vh.T))  # (D, r) orthonormal columns
    xc = x - x.mean(0)
    cov_x = xc.T @ xc / (x.shape[0] - 1)
    return w.T @ cov_x @ w, t @ w, float(torch.trace(cov_x)), int(w.shape[1])


def _text_span_steps(cov: torch.Tensor, tc: torch.Tensor, k: int, total: float):
    """The greedy loop of :func:`text_span` on the r × r covariance and the m × r text coordinates."""
    picks, weights, explained, removed = [], [], [], 0.0
    for _ in range(k):
        scores = ((tc @ cov) * tc).sum(1)  # variance of the data projected on each (unnormalised) text
        j = int(torch.argmax(scores))
        norm = tc[j].norm()
        if norm <= 0:
            break
        u = tc[j] / norm
        cu = cov @ u
        var = float(u @ cu)
        cov = cov - torch.outer(u, cu) - torch.outer(cu, u) + var * torch.outer(u, u)
        tc = tc - torch.outer(tc @ u, u)
        removed += var
        picks.append(j), weights.append(np.sqrt(max(var, 0.0))), explained.append(removed / max(total, 1e-300))
    return picks, weights, explained, removed


def somp(data, dictionary, k: int = 64, basis=None, texts: Sequence[str] | None = None,
         block_rows: int = 256) -> Decomposition:
    """Simultaneous orthogonal matching pursuit of the centred data on the dictionary.

    Args:
        data: (n, p) samples, or coefficients of ``basis`` when given.
        dictionary: (m, D) atoms (L2-normalised text embeddings).
        k: atoms to pick (at most m).
        basis: optional (D, p); the data then is ``data @ basisᵀ``.
        texts: the m descriptions, for the report.
        block_rows: rows of the n × m correlation matrix updated at a time (bounds temporaries).
    """
    y = _as_double(data)
    d = _as_double(dictionary)
    b = None if basis is None else _as_double(basis)
    _check(y, d, b, k)
    n, m = y.shape[0], d.shape[0]
    k = min(k, m)
    yc = y - y.mean(0)
    db = d @ b if b is not None else d  # (m, p): atoms seen through the basis
    corr = yc @ db.T  # (n, m) residual correlations, updated in place
    xnorm2 = float((yc @ b.T).pow(2).sum()) if b is not None else float(yc.pow(2).sum())
    used = torch.zeros(m, dtype=torch.bool)
    qs = torch.empty(0, d.shape[1], dtype=torch.float64)  # orthonormal basis of the chosen atoms' span
    picks: list[int] = []
    explained: list[float] = []
    removed = 0.0
    scores = torch.zeros(m, dtype=torch.float64)
    for s in range(0, n, block_rows):  # blockwise: no second n × m temporary
        scores += corr[s : s + block_rows].abs().sum(0)
    with single_thread():
        for _ in range(k):
            scores[used] = -torch.inf
            j = int(torch.argmax(scores))
            picks.append(j)
            used[j] = True
            q = d[j].clone()
            for _rep in range(2):  # Gram–Schmidt, twice for orthogonality in floating point
                q -= qs.T @ (qs @ q)
            qn = q.norm()
            if qn > 1e-10:  # an atom inside the chosen span changes nothing
                q /= qn
                qs = torch.cat([qs, q[None]])
                xq = yc @ (b.T @ q) if b is not None else yc @ q  # (n,)
                dq = d @ q  # (m,)
                removed += float(xq @ xq)
                scores = torch.zeros(m, dtype=torch.float64)
                for s in range(0, n, block_rows):
                    blk = corr[s : s + block_rows]
                    blk.addr_(xq[s : s + block_rows], dq, alpha=-1.0)  # R ← R (I − q qᵀ)
                    scores += blk.abs().sum(0)
            explained.append(removed / max(xnorm2, 1e-300))
    # least-squares coefficients of every sample on the chosen atoms: C = X D_Sᵀ (D_S D_Sᵀ)⁻¹
    ds = d[picks]
    xd = yc @ db[picks].T  # (n, k)
    coef = torch.linalg.lstsq(ds @ ds.T, xd.T).solution  # (k, n)
    weights = coef.norm(dim=1).numpy()
    return Decomposition("somp", picks, _texts(texts, picks), weights, np.array(explained), xnorm2 / (n - 1))
