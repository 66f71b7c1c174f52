"""The float32 lower bound of the exact 2-NN search (:mod:`resi_dual.spectral.neighbours`) and its passes.

The points' projections on m bounding axes give lower bounds of their true distances; the Gram trick
computes them in float32 as one product (:class:`LowerBound`), minus a rounding margin that keeps them
bounds. :func:`first_pass` finds, for every point, its smallest bounds from the minima of groups of 32
points; :func:`certify_rows` does the same one block of query rows at a time (small inputs, and the
second pass with more candidates). Candidates get their exact float64 distance (:func:`refine`); a query
is certified when the first bound not refined is at least its exact r2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_EPS32 = float(torch.finfo(torch.float32).eps)
#: columns per group in the two-stage selection of the smallest lower bounds (row blocks)
_GROUP = 32
#: points per group of the first pass's group minima (N² / 32 float32 minima: 50 MB at N = 20k)
_GROUP_PASS1 = 32


def mapped(x: torch.Tensor, linear_map: torch.Tensor | None) -> torch.Tensor:
    """Rows of x (…, D) in float64, through the optional linear map (r, D): the coordinates distances live in."""
    x = x.to(torch.float64)
    return x if linear_map is None else x @ linear_map.T


def select_smallest(d2: torch.Tensor, kk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kk smallest entries of each row of d2 (b, G·g), ascending: (values, column indices).

    Exact, and cheaper than ``topk`` over the whole row: the minimum of every group of ``_GROUP``
    columns, ``topk`` over those minima, then ``topk`` over the kk groups with the smallest minima
    (the kk smallest entries lie in at most kk groups, and those have the kk smallest minima)."""
    b, cols = d2.shape
    if kk * _GROUP * 2 >= cols:
        return torch.topk(d2, kk, dim=1, largest=False, sorted=True)
    mins = d2.view(b, cols // _GROUP, _GROUP).amin(2)
    groups = torch.topk(mins, kk, dim=1, largest=False, sorted=False).indices  # (b, kk)
    sub_cols = (groups[:, :, None] * _GROUP + torch.arange(_GROUP)).view(b, kk * _GROUP)
    vals, j = torch.topk(d2.gather(1, sub_cols), kk, dim=1, largest=False, sorted=True)
    return vals, sub_cols.gather(1, j)


def refine(x: torch.Tensor, linear_map, q_idx: torch.Tensor, cand: torch.Tensor, chunk: int = 128) -> torch.Tensor:
    """Exact float64 distances from queries (b,) to candidates (b, K), sorted per row: (b, K).

    The difference is taken before the map (and float32 differences are exact in float64), so
    duplicate points are at distance exactly 0. Chunks of ``chunk`` queries keep temporaries in cache."""
    out = torch.empty(cand.shape, dtype=torch.float64)
    for s in range(0, q_idx.numel(), chunk):
        c, q = cand[s : s + chunk], q_idx[s : s + chunk]
        xc = torch.index_select(x, 0, c.flatten()).view(*c.shape, -1).to(torch.float64)
        diff = xc.sub_(torch.index_select(x, 0, q).to(torch.float64)[:, None, :])  # (b', K, D)
        out[s : s + chunk] = torch.linalg.vector_norm(mapped(diff, linear_map), dim=2)
    return torch.sort(out, dim=1).values


@dataclass(frozen=True)
class LowerBound:
    """The points' float32 projections on the bounding axes, laid out for the Gram trick in one product.

    ``qa`` (N_pad, m+2) = [y, ‖y‖², 1] and ``ca`` (m+2, N_pad) = [−2y; 1; ‖y‖²]ᵀ, so ``qa[i] · ca[:, j]``
    is the squared projected distance of i and j. Padding rows and columns (to whole groups) carry an
    infinite norm and are never selected. The float32 value errs by at most
    ``tol · (‖y_i‖² + max ‖y‖²)`` (a dot product of m+2 terms whose magnitudes sum to ≤ 2(‖y_i‖² + ‖y_j‖²),
    plus the rounding of the norms), and storing y in float32 moves each point by at most
    ``eps · ‖y‖``: :meth:`lower_bounds` subtracts both."""

    qa: torch.Tensor
    ca: torch.Tensor
    ny: torch.Tensor  # (N,) float64 squared norms of the float32 projections
    n: int
    m: int
    tol: float
    nr_max: float
    y_norm_max: float

    @staticmethod
    def build(x, linear_map, mean, axes, block_rows: int) -> "LowerBound":
        """Projections computed in float64, stored in float32 (rounding ≤ eps32/2 per coordinate)."""
        n = x.shape[0]
        parts = []
        for s in range(0, n, block_rows):  # cache-sized float64 blocks
            xb = mapped(x[s : s + block_rows], linear_map) - mean
            parts.append((xb if axes is None else xb @ axes).to(torch.float32))
        y = torch.cat(parts)  # (N, m)
        m = y.shape[1]
        ny = (y.double() ** 2).sum(1)
        n_pad = -(-n // _GROUP_PASS1) * _GROUP_PASS1
        qa = torch.zeros(n_pad, m + 2, dtype=torch.float32)
        qa[:n, :m], qa[:, m + 1] = y, 1.0
        qa[:, m] = float("inf")
        qa[:n, m] = ny.to(torch.float32)
        ca = torch.zeros(m + 2, n_pad, dtype=torch.float32)
        ca[:m, :n], ca[m] = -2.0 * y.T, 1.0
        ca[m + 1] = float("inf")
        ca[m + 1, :n] = ny.to(torch.float32)
        nr_max = float(ny.max())
        return LowerBound(qa, ca, ny, n, m, (2 * m + 8) * _EPS32, nr_max, math.sqrt(nr_max))

    def lower_bounds(self, v: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Lower bounds (b, c) of the true distances of every point whose float32 value is ≥ v (b, c)."""
        nq = self.ny[q]
        bound2 = v.double() - (self.tol * (nq + self.nr_max))[:, None]
        return bound2.clamp_min(0).sqrt() - (_EPS32 * (nq.sqrt() + self.y_norm_max))[:, None]

    def values(self, q: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """(b, N_pad) squared projected distances of the queries q to every point, self at +inf."""
        d2 = torch.mm(self.qa[q], self.ca, out=out)
        d2[torch.arange(q.numel()), q] = float("inf")  # exclude self by index: duplicates must stay at 0
        return d2


def _finish(x, linear_map, bound: LowerBound, q, vals, idx, upper):
    """Exact r1, r2 (b,) of queries q from their smallest values (b, kk+1), ascending, and the queries
    left uncertified. Only candidates whose lower bound is below ``upper`` (a known upper bound of r2,
    or None) are refined; a query is certified when the first value not refined bounds r2 from below."""
    kk = vals.shape[1] - 1
    if kk + 1 == bound.n - 1:  # tiny inputs: every other point is a candidate, nothing to certify
        srt = refine(x, linear_map, q, idx)
        return srt[:, 0], srt[:, 1], q[:0]
    lb = bound.lower_bounds(vals, q)  # (b, kk+1)
    if upper is None and kk > 2:  # two candidates first; the rest only where the third could be closer
        srt = refine(x, linear_map, q, idx[:, :2])
        more = (srt[:, 1] > 0) & (lb[:, 2] < srt[:, 1])
        if bool(more.any()):
            srt[more] = refine(x, linear_map, q[more], idx[more, :kk])[:, :2]
        c = torch.where(more, kk, 2)
        ok = (srt[:, 1] == 0) | (lb.gather(1, c[:, None])[:, 0] >= srt[:, 1])  # r2 = 0 is exact whatever the bound
        return srt[:, 0], srt[:, 1], q[~ok]
    c = kk if upper is None else max(min(2, kk), int((lb[:, :kk] < upper[:, None]).sum(1).max()))
    srt = refine(x, linear_map, q, idx[:, :c])
    ok = (srt[:, 1] == 0) | (lb[:, c] >= srt[:, 1])  # r2 = 0 is exact whatever the bound
    return srt[:, 0], srt[:, 1], q[~ok]


def certify_rows(x, linear_map, bound: LowerBound, queries, kk: int, upper, block_rows: int):
    """r1, r2 (len(queries),) from kk candidates each, one block of query rows at a time against every
    point, and the queries left uncertified. ``upper``: known upper bounds of r2 per query, or None."""
    r1 = torch.empty(queries.numel(), dtype=torch.float64)
    r2 = torch.empty_like(r1)
    left = []
    buf = torch.empty(min(block_rows, queries.numel()) * bound.ca.shape[1], dtype=torch.float32)
    for s in range(0, queries.numel(), block_rows):
        q = queries[s : s + block_rows]
        d2 = bound.values(q, buf[: q.numel() * bound.ca.shape[1]].view(q.numel(), -1))
        vals, idx = select_smallest(d2, kk + 1)
        r1[s : s + q.numel()], r2[s : s + q.numel()], lq = _finish(
            x, linear_map, bound, q, vals, idx, None if upper is None else upper[s : s + q.numel()])
        left.append(lq)
    return r1, r2, torch.cat(left) if left else queries[:0]


def _group_minima(bound: LowerBound, block_rows: int, tile_cols: int = 2048) -> torch.Tensor:
    """(N_pad, N_pad / G) float32: for every point, the smallest value over each group of G points
    (self at +inf). Values are symmetric, so the products cover the upper triangle only (half the
    flops): a tile of rows s…s+b against later columns gives the row groups' minima of those rows and,
    read down its columns, those of the columns' rows. Tiles are cache-sized, so both reductions read
    what the product has just written."""
    g = _GROUP_PASS1
    n_pad = bound.qa.shape[0]
    rows = max(g, block_rows // g * g)
    mins = torch.empty(n_pad, n_pad // g, dtype=torch.float32)
    buf = torch.empty(rows * tile_cols, dtype=torch.float32)
    for s in range(0, n_pad, rows):
        b = min(rows, n_pad - s)
        qa = bound.qa[s : s + b]
        for c in range(s, n_pad, tile_cols):
            w = min(tile_cols, n_pad - c)
            t = torch.mm(qa, bound.ca[:, c : c + w], out=buf[: b * w].view(b, w))
            if c == s:
                t.diagonal().fill_(float("inf"))
            torch.amin(t.view(b, w // g, g), 2, out=mins[s : s + b, c // g : (c + w) // g])
            if c + w > s + b or c > s:  # the diagonal block's columns are its own rows: done above
                lo = max(c, s + b)
                mins[lo : c + w, s // g : (s + b) // g] = t[:, lo - c :].view(b // g, g, c + w - lo).amin(1).T
    return mins


def first_pass(x, linear_map, bound: LowerBound, k: int, block_rows: int):
    """Pass 1 for every point: r1, r2 (N,) from k candidates each, and the queries left uncertified.

    From the group minima, the k+1 groups with the smallest minima hold the k+1 smallest values; their
    G·(k+1) values are recomputed and the smallest k refined. Every point not refined is bounded below
    by the (k+1)-th recomputed value or, outside those groups, by the (k+2)-th smallest group minimum."""
    n, g = bound.n, _GROUP_PASS1
    n_groups = bound.qa.shape[0] // g
    if n_groups < 4 * (k + 2):  # small inputs: plain row blocks against every point
        return certify_rows(x, linear_map, bound, torch.arange(n), k, None, block_rows)
    mins = _group_minima(bound, block_rows)
    r1 = torch.empty(n, dtype=torch.float64)
    r2 = torch.empty_like(r1)
    left = []
    by_group = bound.ca.T.contiguous().view(n_groups, g, -1)  # (groups, G, m+2): a group's columns together
    offsets = torch.arange(g)
    for s in range(0, n, block_rows):
        q = torch.arange(s, min(n, s + block_rows))
        gmin, groups = torch.topk(mins[s : s + q.numel()], k + 2, dim=1, largest=False, sorted=True)
        chosen = groups[:, : k + 1]
        cols = (chosen[:, :, None] * g + offsets).flatten(1)  # (b, (k+1)·G)
        sel = torch.index_select(by_group, 0, chosen.flatten()).view(q.numel(), -1, by_group.shape[2])
        v = sel.mul_(bound.qa[s : s + q.numel(), None, :]).sum(2)  # (b, (k+1)·G)
        v[cols == q[:, None]] = float("inf")
        vals, j = torch.topk(v, k + 1, dim=1, largest=False, sorted=True)
        vals[:, k] = torch.minimum(vals[:, k], gmin[:, k + 1])
        r1[q], r2[q], lq = _finish(x, linear_map, bound, q, vals, cols.gather(1, j), None)
        left.append(lq)
    return r1, r2, torch.cat(left)
