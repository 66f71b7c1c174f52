"""Straightforward TextSpan and SOMP, written as the papers describe them (explicit n × D data).

Reference for tests and the baseline of ``bench/bench_interpret.py``: TextSpan keeps the full D × D
projection of the dictionary and deflates the full data and text matrices at every step; SOMP refits
a full least-squares problem on all chosen atoms at every step and recomputes the n × m correlations.
Use :mod:`resi_dual.interpret.decompose` for real work: the same picks (TextSpan's ``paper`` mode always,
its ``fast`` mode whenever the data's rank is at least r), far less time and memory.
"""

from __future__ import annotations

import numpy as np


def text_span_reference(data: np.ndarray, dictionary: np.ndarray, k: int, rank: int) -> list[int]:
    """Picked dictionary rows for (n, D) data and (m, D) atoms."""
    data = np.asarray(data, dtype=np.float64)
    text = np.asarray(dictionary, dtype=np.float64)
    vh = np.linalg.svd(data, full_matrices=False)[2][:rank]  # top-r right singular vectors of the uncentred data
    text = (vh.T @ np.linalg.inv(vh @ vh.T) @ vh @ text.T).T  # project the dictionary on their span
    data = data - data.mean(0, keepdims=True)
    picks = []
    for _ in range(k):
        proj = data @ text.T
        j = int(np.argmax(proj.std(0, ddof=1)))
        picks.append(j)
        t = text[j]
        tn = t @ t
        data = data - np.outer(data @ t / tn, t)
        text = text - np.outer(text @ t / tn, t)
    return picks


def somp_reference(data: np.ndarray, dictionary: np.ndarray, k: int) -> tuple[list[int], np.ndarray]:
    """Picked dictionary rows and the final (k, n) least-squares coefficients."""
    x = np.asarray(data, dtype=np.float64)
    x = x - x.mean(0, keepdims=True)
    d = np.asarray(dictionary, dtype=np.float64)
    residual = x.copy()
    picks: list[int] = []
    coef = np.zeros((0, x.shape[0]))
    for _ in range(k):
        scores = np.abs(residual @ d.T).sum(0)
        scores[picks] = -np.inf
        picks.append(int(np.argmax(scores)))
        coef = np.linalg.lstsq(d[picks].T, x.T, rcond=None)[0]  # (s, n) refit on all chosen atoms
        residual = x - (d[picks].T @ coef).T
    return picks, coef
