"""Seeded stratified splits and the stratified ``--limit``.

Where a dataset has no validation split the paper carves one out of train with seed 42, stratified
by class: 10 % for MNIST-like sets, CIFAR and GTSRB; 20 % for ImageNet, SVHN, DTD and Stanford Cars;
and 80/10/10 train/val/test where there is no test split either (:data:`VAL_FRACTION`).

The split is written here rather than taken from ``sklearn.model_selection.train_test_split``
because that one refuses classes with a single member and held-out sets smaller than the number of
classes, which small folders and test fixtures hit. Per class, a seeded permutation picks the held-out
rows; per-class counts are set by largest remainders so the total is ``round(fraction · n)`` (half up). Both
parts keep the dataset's own order.
"""

from __future__ import annotations

import numpy as np

from resi_dual.data.names import canonical_dataset
from resi_dual.errors import ResiDualError

SEED = 42

#: share of train held out as val, by canonical dataset name (default :data:`DEFAULT_VAL_FRACTION`)
VAL_FRACTION = {
    "mnist": 0.1, "fashion-mnist": 0.1, "animal-mnist": 0.1, "kmnist": 0.1, "emnist": 0.1,
    "cifar10": 0.1, "cifar100": 0.1, "gtsrb": 0.1,
    "imagenet": 0.2, "svhn": 0.2, "dtd": 0.2, "stanford-cars": 0.2,
}
DEFAULT_VAL_FRACTION = 0.1
#: val and test shares when a dataset has neither (80/10/10)
NO_TEST_SPLIT = (0.1, 0.1)


def val_fraction(name: str) -> float:
    return VAL_FRACTION.get(canonical_dataset(name), DEFAULT_VAL_FRACTION)


def _round(x: float) -> int:
    """Half-up rounding (Python's round() goes to even: 2.5 -> 2)."""
    return int(np.floor(x + 0.5 + 1e-9))


def _allocate(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class held-out counts summing to ``total``, proportional to ``counts`` by largest remainders."""
    fraction = total / max(int(counts.sum()), 1)
    quota = counts * fraction
    take = np.floor(quota + 1e-9).astype(np.int64)
    missing = int(total) - int(take.sum())
    if missing > 0:
        # largest fractional part first; ties go to the lower class index (stable sort)
        order = np.argsort(-(quota - take), kind="stable")
        take[order[:missing]] += 1
    return np.minimum(take, counts)


def stratified_split(labels: np.ndarray, fraction: float | None = None, seed: int = SEED,
                     n_held: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Split row indices into (kept, held_out), stratified by label.

    Args:
        labels: (n,) int class labels.
        fraction: share of rows held out, in [0, 1] (held-out size ``round(fraction · n)``, half up);
        n_held: or the held-out size itself.
    Returns:
        two sorted int64 index arrays partitioning ``range(n)``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if n_held is None:
        if fraction is None or not 0.0 <= fraction <= 1.0:
            raise ResiDualError(f"split fraction must be in [0, 1], got {fraction}")
        n_held = _round(fraction * len(labels))
    if not 0 <= n_held <= len(labels):
        raise ResiDualError(f"cannot hold out {n_held} of {len(labels)} rows")
    rng = np.random.default_rng(seed)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    take = _allocate(counts, n_held)
    held = []
    for c in range(len(classes)):
        rows = np.flatnonzero(inverse == c)
        held.append(rows[rng.permutation(len(rows))[: take[c]]])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    mask = np.ones(len(labels), bool)
    mask[held_idx] = False
    return np.flatnonzero(mask).astype(np.int64), held_idx.astype(np.int64)


def three_way_split(labels: np.ndarray, val: float = NO_TEST_SPLIT[0], test: float = NO_TEST_SPLIT[1],
                    seed: int = SEED) -> dict[str, np.ndarray]:
    """Train/val/test indices (sorted) for a dataset with a single split (80/10/10 by default)."""
    labels = np.asarray(labels, dtype=np.int64)
    n_val, n_test = _round(val * len(labels)), _round(test * len(labels))
    train, held = stratified_split(labels, seed=seed, n_held=n_val + n_test)
    val_rel, test_rel = stratified_split(labels[held], seed=seed + 1, n_held=n_test)
    return {"train": train, "val": held[val_rel], "test": held[test_rel]}


def stratified_limit(labels: np.ndarray, limit: int | None) -> np.ndarray:
    """The first ``limit`` rows of a class-proportional interleaving, returned in dataset order.

    Row ``i`` with within-class rank ``r`` in a class of ``n_c`` rows gets the key ``(r + ½) / n_c``;
    the ``limit`` smallest keys win (ties by row index). So every class is represented in proportion,
    each class contributes its first rows, and a smaller limit is a subset of a larger one. No seed.
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = len(labels)
    if limit is None or limit >= n:
        return np.arange(n, dtype=np.int64)
    if limit < 0:
        raise ResiDualError(f"--limit must be positive, got {limit}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    by_class = np.argsort(inverse, kind="stable")  # rows grouped by class, dataset order within
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty(n, np.int64)
    rank[by_class] = np.arange(n) - starts[inverse[by_class]]
    key = (rank + 0.5) / counts[inverse]
    order = np.lexsort((np.arange(n), key))
    return np.sort(order[:limit]).astype(np.int64)
