"""Describe a model's residual units and their principal components with text.

Per unit, the contributions ``c_u = A_u f_u + k_u`` are decomposed in factored form (data
``[f_u, 1]``, basis ``[A_u, k_u]``), so a head costs d_head + 3 columns however wide the output
space is. Per principal component, the descriptions whose normalised embeddings have the largest
(positive pole) and smallest (negative pole) cosine with the component.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from resi_dual.core.progress import task
from resi_dual.errors import ResiDualError
from resi_dual.interpret.decompose import Decomposition, somp, text_span
from resi_dual.core.encodings import unit_features

METHODS = ("textspan", "somp")


def default_dictionary_path() -> Path:
    """The dictionary shipped with the package (``resi_dual/assets/dictionary.txt``)."""
    return Path(str(resources.files("resi_dual") / "assets" / "dictionary.txt"))


def load_dictionary(path: str | Path | None = None) -> list[str]:
    """Descriptions, one per line (blank lines and ``#`` comments skipped, duplicates dropped)."""
    from resi_dual.files import read_text_file

    p = Path(path) if path is not None else default_dictionary_path()
    seen, out = set(), []
    for line in read_text_file(p, "dictionary").splitlines():
        s = line.strip()
        if s and not s.startswith("#") and s not in seen:
            seen.add(s)
            out.append(s)
    if not out:
        raise ResiDualError(f"the dictionary {p} is empty")
    return out


def embed_dictionary(tower, texts: Sequence[str]) -> torch.Tensor:
    """(m, d_out) L2-normalised text embeddings of the dictionary."""
    if not texts:
        raise ResiDualError("the dictionary is empty")
    return F.normalize(tower.encode(list(texts)).double(), dim=-1)


def sample_rows(n: int, max_samples: int | None, seed: int = 0) -> np.ndarray:
    """Sorted deterministic subsample of row indices (all rows when n ≤ max_samples)."""
    if max_samples is None or n <= max_samples:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max_samples, replace=False))


def decompose_units(source, dictionary: torch.Tensor, texts: Sequence[str], method: str = "somp", k: int = 20,
                    units="heads", rank: int = 80, max_samples: int | None = 5000, seed: int = 0,
                    progress: bool = True, textspan_mode: str = "fast") -> dict[str, Decomposition]:
    """TextSpan or SOMP of every selected unit of ``source``.

    Args:
        source: an EncodingSource. dictionary: (m, d_out) normalised atoms; texts: their m descriptions.
        method: ``textspan`` or ``somp``. k: atoms per unit. units: labels or shorthand (``heads``, ``all`` …).
        rank: TextSpan's r. max_samples: deterministic subsample of rows (memory ∝ n × units' widths).
        textspan_mode: ``fast`` or ``paper`` (Gandelsman et al.'s exact span, see `decompose.TextSpanMode`).
    Returns:
        label -> :class:`Decomposition`, in composition order.
    """
    if method not in METHODS:
        raise ResiDualError(f"unknown method {method!r}; choose textspan or somp")
    if dictionary.shape[0] != len(texts):
        raise ResiDualError(f"{dictionary.shape[0]} dictionary embeddings for {len(texts)} texts")
    comp = source.composition
    idx = comp.select(units, require=True)
    if dictionary.shape[1] != comp.d_out:
        raise ResiDualError(f"dictionary is {dictionary.shape[1]}-d but the model's output is {comp.d_out}-d")
    rows = sample_rows(len(source), max_samples, seed)
    # a store reads one unit's columns at a time; in-memory sources are already in memory
    cached = None if hasattr(source, "iter_units") else source.raw(rows, torch.float64)
    readout = source.readout.to(torch.float64)
    out: dict[str, Decomposition] = {}
    with task(progress if len(idx) >= 4 else False, f"{method} on {len(idx)} units", len(idx)) as step:
        for i in idx:
            if cached is None:
                f = source.features(i, rows=rows, dtype=torch.float64)
            else:
                f = unit_features(comp, i, cached.dense, cached.heads, cached.mu, cached.sigma)
            a, const = readout.affine(comp, i)
            data = torch.cat([f, torch.ones(f.shape[0], 1, dtype=f.dtype)], 1)
            basis = torch.cat([a, const[:, None]], 1)
            label = comp.units[i].label
            if method == "somp":
                out[label] = somp(data, dictionary, k, basis=basis, texts=texts)
            else:
                out[label] = text_span(data, dictionary, k, rank=rank, basis=basis, texts=texts, mode=textspan_mode)
            step()
    return out


def pc_descriptions(bases, dictionary: torch.Tensor, texts: Sequence[str], labels: Sequence[str] | None = None,
                    n_pcs: int = 10, top: int = 3) -> list[dict]:
    """Rows ``{unit, pc, explained_variance_ratio, pole, rank, text, cosine}``: the texts closest to each
    of the first ``n_pcs`` principal components of each unit, for both signs of the component."""
    labels = list(labels or bases.labels)
    rows = []
    for lab in labels:
        comps = bases.components[lab].double()[:n_pcs]  # (k, d_out) unit rows
        if comps.shape[1] != dictionary.shape[1]:
            raise ResiDualError(f"bases are {comps.shape[1]}-d but the dictionary is {dictionary.shape[1]}-d")
        cos = comps @ dictionary.T  # (k, m)
        ratio = bases.explained_variance_ratio(lab)
        for pc in range(comps.shape[0]):
            for pole, vals in (("+", cos[pc]), ("-", -cos[pc])):
                best = torch.topk(vals, min(top, vals.numel())).indices.tolist()
                for r, j in enumerate(best):
                    rows.append(dict(unit=lab, pc=pc, explained_variance_ratio=float(ratio[pc]), pole=pole, rank=r,
                                     text=texts[j], cosine=float(cos[pc, j])))
    return rows
