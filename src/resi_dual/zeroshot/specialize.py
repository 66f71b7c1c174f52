"""Head specialization: rank attention heads by task relevance, keep the top ones, ablate the rest.

Rankings (docs/DESIGN.md §7), computed on a ranking split (validation or train — never the evaluated one):

* ``S``: each head alone — zero-shot top-1 accuracy of its contribution with the task's classifier.
* ``U|T``: correlation of the head with the sum of all heads, both projected on an orthonormal basis
  of the class text centroids (the classifier rows): the Pearson correlation over samples of each
  projected coordinate, averaged over the r coordinates — as the paper's ``score_unit_correlation``
  (covariance with divisor n, standard deviations with divisor n − 1, kept for reproduction).
* ``U``: the same correlation against the model's full output, per output coordinate, unprojected.
* ``random``: uniformly random orders (one per seed).

Ablation keeps the top-k heads of a ranking and replaces every other head's contribution with zero
(``zero``) or with its mean over the *train* split (``mean``); all other units stay. Since the units
sum to the model's output, the ablated embedding is ``output − Σ_{h ablated} (c_h − fill_h)``, so
keeping every head reproduces the base accuracy exactly.

Two protocols (docs/DESIGN.md §7):

* ``project`` (above): MLPs and embedding kept, ``U`` against the model's output, head means from the
  train split, kept sizes rounded, all heads as the last size.
* ``paper``: as the authors' experiment code. Only the top-k heads are kept; *every* other unit —
  other heads, MLPs and the embedding — is zeroed or replaced by its mean over the evaluated split
  (label-free, but transductive: the code takes the test split's mean). ``U`` is the correlation of
  each head with the sum of the heads, both projected on an orthonormal basis of the span of the
  model's outputs on the ranking split (QR of the (d_out, n) output matrix). Sizes are floored
  fractions of H, the 1 % size at least 2 heads, and no "all heads" size.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Sequence, get_args

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.errors import ResiDualError

FRACTIONS: tuple[float, ...] = (0.01, 0.05, 0.10, 0.25, 0.50, 0.75)
#: head rankings (paper §4): spectral S, output-aligned U|T and U, and the random control
RankingMethod = Literal["S", "U|T", "U", "random"]
METHODS: tuple[str, ...] = get_args(RankingMethod)
#: what replaces an ablated head: nothing, or its mean contribution on the train split
Ablation = Literal["zero", "mean"]
MODES: tuple[str, ...] = get_args(Ablation)
#: which specialization experiment: the authors' code (``paper``) or this project's variant
Protocol = Literal["paper", "project"]
PROTOCOLS: tuple[str, ...] = get_args(Protocol)


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ResiDualError(f"unknown specialization protocol {protocol!r}; choose one of {', '.join(PROTOCOLS)}")


def keep_sizes(n_heads: int, fractions: Sequence[float] = FRACTIONS, protocol: Protocol = "project") -> list[int]:
    """Numbers of heads kept: the top 1, then each fraction of ``n_heads`` (at least 1), then all.

    ``paper``: fractions floored, the 1 % size at least 2 heads, no "all heads" size."""
    _check_protocol(protocol)
    if protocol == "paper":
        sizes = [1] + [max(2 if f == 0.01 else 1, int(f * n_heads)) for f in fractions]
    else:
        sizes = [1] + [max(1, int(round(f * n_heads))) for f in fractions] + [n_heads]
    return sorted(set(sizes))


def output_basis(source, block_rows: int = 4096) -> torch.Tensor:
    """(d_out, r) orthonormal basis of the span of the model's outputs on ``source`` (Q of the QR of the
    (d_out, n) output matrix, r = min(d_out, n)): the paper's basis for ``U``."""
    outputs = torch.cat([source.output(slice(s, min(s + block_rows, len(source))), dtype=torch.float64)
                         for s in range(0, len(source), block_rows)])
    return torch.linalg.qr(outputs.T).Q


def _head_indices(source) -> list[int]:
    idx = source.composition.select("heads")
    if not idx:
        raise ResiDualError("the model has no attention heads to rank")
    return idx


def head_means(train_source, block_rows: int = 1024) -> torch.Tensor:
    """(H, d_out) mean contribution of every head over the train split (float64)."""
    idx = _head_indices(train_source)
    total, n = None, 0
    for start in range(0, len(train_source), block_rows):
        c = train_source.contributions(idx, rows=slice(start, min(start + block_rows, len(train_source))),
                                       dtype=torch.float64)
        total = c.sum(0) if total is None else total + c.sum(0)
        n += c.shape[0]
    if not n:
        raise ResiDualError("the train split is empty: no head means")
    return total / n


@dataclass
class Ranking:
    """A head order for one method. ``order``: positions into the composition's heads, best first;
    ``scores``: (H,) per head (NaN for random)."""

    method: RankingMethod
    order: list[int]
    scores: np.ndarray
    seed: int | None = None

    @property
    def name(self) -> str:
        return self.method if self.seed is None else f"{self.method}[{self.seed}]"


def rank_heads(source, classifier, methods: Sequence[str] = METHODS, seeds: Sequence[int] = range(10),
               block_rows: int = 512, protocol: Protocol = "project") -> list[Ranking]:
    """Rankings of the heads of ``source`` (the ranking split) for the task of ``classifier``.

    Args:
        source: EncodingSource of the ranking split. classifier: a ``ZeroShotHead`` (weights (C, d_out)).
        methods: any of ``S``, ``U|T``, ``U``, ``random``. seeds: one random order per seed.
        protocol: ``project`` (``U`` against the output, unprojected) or ``paper`` (``U`` against the
            sum of heads in the outputs' basis, see the module doc).
    """
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ResiDualError(f"unknown ranking {bad[0]!r}; choose from {', '.join(METHODS)}")
    _check_protocol(protocol)
    basis_u = output_basis(source) if protocol == "paper" and "U" in methods else None
    idx = _head_indices(source)
    H = len(idx)
    w = classifier.weights.double()
    q = torch.linalg.qr(w.T).Q  # (d_out, C) orthonormal basis of the class centroids
    n = 0
    correct = torch.zeros(H, dtype=torch.float64)
    # running sums for the two correlations: x = head (projected / raw), y = sum of heads (projected) / output
    mom = {key: dict(sx=0.0, sy=0.0, sxy=0.0, sxx=0.0, syy=0.0) for key in ("U|T", "U")}
    labels = torch.as_tensor(np.asarray(source.labels), dtype=torch.long)
    for start in range(0, len(source), block_rows):
        rows = slice(start, min(start + block_rows, len(source)))
        c = source.contributions(idx, rows=rows, dtype=torch.float64)  # (b, H, d_out)
        y_out = source.output(rows, dtype=torch.float64)  # (b, d_out)
        b = c.shape[0]
        n += b
        if "S" in methods:
            pred = (F.normalize(c, dim=-1) @ w.T).argmax(-1)  # (b, H)
            correct += (pred == labels[rows][:, None]).sum(0).double()
        for key in ("U|T", "U"):
            if key not in methods:
                continue
            if key == "U|T":
                x = c @ q
                y = x.sum(1)
            elif basis_u is not None:
                x = c @ basis_u  # (b, H, r)
                y = x.sum(1)
            else:
                x, y = c, y_out
            m = mom[key]
            m["sx"] = m["sx"] + x.sum(0)  # (H, r)
            m["sy"] = m["sy"] + y.sum(0)  # (r,)
            m["sxy"] = m["sxy"] + torch.einsum("bhr,br->hr", x, y)
            m["sxx"] = m["sxx"] + x.pow(2).sum(0)  # (H, r)
            m["syy"] = m["syy"] + y.pow(2).sum(0)  # (r,)
    out = []
    for method in methods:
        if method == "random":
            for s in seeds:
                order = np.random.default_rng(s).permutation(H).tolist()
                out.append(Ranking("random", order, np.full(H, np.nan), seed=int(s)))
            continue
        if method == "S":
            scores = (correct / max(n, 1)).numpy()
        else:
            m = mom[method]
            mx, my = m["sx"] / n, m["sy"] / n  # (H, r), (r,)
            cov = (m["sxy"] - n * mx * my) / n
            sdx = ((m["sxx"] - n * mx.pow(2)) / (n - 1)).clamp_min(0).sqrt()
            sdy = ((m["syy"] - n * my.pow(2)) / (n - 1)).clamp_min(0).sqrt()
            scores = (cov / (sdx * sdy).clamp_min(1e-300)).mean(1).numpy()
        # stable sort on −score: ties keep composition order, so rankings are deterministic
        order = np.argsort(-scores, kind="stable").tolist()
        out.append(Ranking(method, order, scores))
    return out


@dataclass
class AblationResult:
    """Accuracy of the kept-head configurations on one evaluated split.

    ``accuracy[name][mode]``: (len(sizes),) top-1 accuracy keeping the top ``sizes[i]`` heads of ranking
    ``name``; ``base_accuracy``: the unablated model's accuracy on the same split.
    """

    sizes: list[int]
    n_heads: int
    base_accuracy: float
    accuracy: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)


def eval_means(eval_source, block_rows: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """((H, d_out) head means, (d_out,) output mean) over the evaluated split, float64: the fills of the
    paper protocol's mean ablation (the output mean is the sum of every unit's mean)."""
    return head_means(eval_source, block_rows), torch.cat([
        eval_source.output(slice(s, min(s + block_rows, len(eval_source))), dtype=torch.float64)
        for s in range(0, len(eval_source), block_rows)]).mean(0)


def _ablation_masks(rankings: Sequence[Ranking], sizes: Sequence[int], H: int) -> torch.Tensor:
    """(K, H) float64, 1 where a head is ablated, one row per (ranking, size) in that order."""
    configs = []
    for r in rankings:
        for s in sizes:
            m = torch.ones(H, dtype=torch.float64)
            m[r.order[:s]] = 0.0
            configs.append(m)
    return torch.stack(configs)


def ablation_curves(eval_source, classifier, rankings: Sequence[Ranking], sizes: Sequence[int] | None = None,
                    modes: Sequence[str] = MODES, means: torch.Tensor | None = None,
                    block_rows: int = 256, protocol: Protocol = "project") -> AblationResult:
    """Top-1 accuracy on ``eval_source`` keeping the top-k heads of each ranking.

    Args:
        means: (H, d_out) head means from the train split (``project`` protocol's ``mean`` mode; never
            computed here from the evaluated split). The ``paper`` protocol ignores it and takes every
            unit's mean over the evaluated split, as the authors' code does.
        protocol: ``project`` (other heads ablated, MLPs and embedding kept) or ``paper`` (only the
            kept heads stay; every other unit is ablated).
    """
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise ResiDualError(f"unknown ablation {bad[0]!r}; choose zero or mean")
    _check_protocol(protocol)
    if protocol == "project" and "mean" in modes and means is None:
        raise ResiDualError("mean ablation needs head means from the train split (head_means(train_source))")
    idx = _head_indices(eval_source)
    H = len(idx)
    sizes = list(sizes or keep_sizes(H, protocol=protocol))
    w = classifier.weights.double()
    d = w.shape[1]
    masks = _ablation_masks(rankings, sizes, H)  # (K, H)
    if protocol == "paper":
        # embedding = Σ_kept c_h + Σ_{every other unit} fill_u; with mean fills that sum is mean(output) − Σ_kept mean_h
        kept = 1.0 - masks
        fills = {"zero": torch.zeros(masks.shape[0], d, dtype=torch.float64)}
        if "mean" in modes:
            m_heads, m_out = eval_means(eval_source)
            fills["mean"] = m_out[None] - kept @ m_heads  # (K, d)
    else:
        fills = {"zero": torch.zeros(H, d, dtype=torch.float64)}
        if "mean" in modes:
            if means.shape != (H, d):
                raise ResiDualError(f"head means have shape {tuple(means.shape)}, expected {(H, d)}")
            fills["mean"] = means.double()
    labels = torch.as_tensor(np.asarray(eval_source.labels), dtype=torch.long)
    correct = {mode: torch.zeros(masks.shape[0], dtype=torch.float64) for mode in modes}
    base_correct = 0.0
    for start in range(0, len(eval_source), block_rows):
        rows = slice(start, min(start + block_rows, len(eval_source)))
        c = eval_source.contributions(idx, rows=rows, dtype=torch.float64)  # (b, H, d)
        out = eval_source.output(rows, dtype=torch.float64)  # (b, d)
        y = labels[rows]
        base_correct += float(((F.normalize(out, dim=-1) @ w.T).argmax(-1) == y).sum())
        for mode in modes:
            if protocol == "paper":
                emb = torch.einsum("kh,bhd->kbd", kept, c) + fills[mode][:, None]  # (K, b, d)
            else:
                emb = out[None] - torch.einsum("kh,bhd->kbd", masks, c - fills[mode][None])  # (K, b, d)
            pred = (F.normalize(emb, dim=-1) @ w.T).argmax(-1)  # (K, b)
            correct[mode] += (pred == y[None]).sum(1).double()
    n = len(eval_source)
    res = AblationResult(sizes, H, base_correct / n)
    k = 0
    for r in rankings:
        res.accuracy[r.name] = {mode: (correct[mode][k : k + len(sizes)] / n).numpy() for mode in modes}
        k += len(sizes)
    return res


def summarize_random(res: AblationResult) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Per method and mode: (mean, std) over seeds for random rankings, (acc, 0) for the others."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
    groups: dict[str, list[dict[str, np.ndarray]]] = {}
    for name, acc in res.accuracy.items():
        groups.setdefault(name.split("[")[0], []).append(acc)
    for method, accs in groups.items():
        out[method] = {}
        for mode in accs[0]:
            stack = np.stack([a[mode] for a in accs])
            out[method][mode] = (stack.mean(0), stack.std(0))
    return out


def jaccard(a: Sequence[int], b: Sequence[int]) -> float:
    """|A ∩ B| / |A ∪ B| of two head sets (1 for two empty sets)."""
    sa, sb = set(a), set(b)
    return 1.0 if not sa and not sb else len(sa & sb) / len(sa | sb)


def jaccard_table(rankings_by_dataset: dict[str, Sequence[Ranking]], sizes: Sequence[int]) -> list[dict]:
    """Rows ``{method, n_heads, dataset_a, dataset_b, jaccard}`` for every non-random method and pair."""
    names = list(rankings_by_dataset)
    rows = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ra = {r.name: r for r in rankings_by_dataset[a] if r.seed is None}
            rb = {r.name: r for r in rankings_by_dataset[b] if r.seed is None}
            for method in ra:
                if method not in rb:
                    continue
                for s in sizes:
                    rows.append(dict(method=method, n_heads=s, dataset_a=a, dataset_b=b,
                                     jaccard=jaccard(ra[method].order[:s], rb[method].order[:s])))
    return rows


def fraction_label(size: int, n_heads: int) -> str:
    """``1 head`` / ``5 %`` style label of a kept-head count."""
    return "1 head" if size == 1 else f"{100 * size / n_heads:.0f} %"

