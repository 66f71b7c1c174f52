"""The few-shot protocol of the CoOp lineage (docs/DESIGN.md §12).

K ∈ {1, 2, 4, 8, 16} labelled examples per class drawn from the training split with seeds 1–3, a
validation split capped at min(K, 4) examples per class, and nothing else labelled touched: not by
prototypes, not by early stopping, not by the choice of a learning rate. Everything in a run reads
only the rows :func:`few_shot_split` returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from resi_dual.errors import ResiDualError

#: The standard shot counts and seeds.
SHOTS: tuple[int, ...] = (1, 2, 4, 8, 16)
SEEDS: tuple[int, ...] = (1, 2, 3)
#: Validation examples per class are capped at min(K, VAL_CAP).
VAL_CAP = 4


def per_class_rows(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted rows holding ``per_class`` examples of every class present (a seeded draw per class).

    Raises `ResiDualError` naming the class when a class has fewer examples than asked for.
    """
    labels = np.asarray(labels)
    if per_class < 1:
        raise ResiDualError(f"shots must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    rows = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ResiDualError(f"class {int(c)} has {len(idx)} examples, fewer than the {per_class} asked for")
        rows.append(rng.choice(idx, per_class, replace=False))
    return np.sort(np.concatenate(rows))


@dataclass(frozen=True)
class FewShotSplit:
    """Rows of the training and validation splits one few-shot run may read."""

    shots: int
    seed: int
    train_rows: np.ndarray
    val_rows: np.ndarray


def few_shot_split(train_labels: np.ndarray, val_labels: np.ndarray, shots: int, seed: int) -> FewShotSplit:
    """K = ``shots`` training rows per class and min(K, 4) validation rows per class, both seeded."""
    return FewShotSplit(
        shots, seed,
        per_class_rows(train_labels, shots, seed),
        per_class_rows(val_labels, min(shots, VAL_CAP), seed + 10_000),
    )


def run_peers(train, val, test, classifier, logit_scale: float, shots: int | None, seed: int,
              peers=None, budget=None, model=None, class_names=None) -> list[dict]:
    """Fit each peer on one few-shot draw (or on the whole splits when ``shots`` is None) and test it.

    Args:
        train, val, test: `EncodingSource`s of one model and label set.
        classifier: (C, d_out) frozen class rows; logit_scale: float.
        peers: names (default: every peer on cached embeddings, plus CoOp when ``model`` is given).
        model, class_names: the loaded model and the head's class names (CoOp runs the text tower).
    Returns:
        one JSON-ready row per peer: name, shots, seed, trainable parameters, val/test accuracy, the
        settings chosen on val (and ``lr``, how it was chosen — ``lr_choice`` — and a ``note`` naming
        them and any edge choice), how many candidates were tried, seconds.
    """
    from resi_dual.adapters.peers import CACHED_PEERS, PEERS, PeerTraining, output_features, run_peer
    from resi_dual.adapters.protocol import sweep_note

    if shots is None:
        train_rows = val_rows = None
    else:
        split = few_shot_split(train.labels, val.labels, shots, seed)
        train_rows, val_rows = split.train_rows, split.val_rows
    budget = budget or PeerTraining(seed=seed)
    tr, va = output_features(train, train_rows), output_features(val, val_rows)
    te = output_features(test)
    rows = []
    for name in peers or (PEERS if model is not None else CACHED_PEERS):
        res = run_peer(name, tr, va, classifier, logit_scale, budget, model=model, class_names=class_names)
        lr = res.settings.get("lr")
        shown = {k: v for k, v in res.settings.items()
                 if k != "lr" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        note = "; ".join(filter(None, [", ".join(f"{k} {v:.3g}" for k, v in shown.items()),
                                       "lr from the Lipschitz bound (no search)" if res.lr_choice == "lipschitz" else "",
                                       "the chosen fit stopped at max_iter" if res.settings.get("converged") is False else "",
                                       sweep_note(lr, res.lr_grid) if res.lr_choice == "sweep" else ""]))
        rows.append({
            "method": name, "shots": shots, "seed": seed, "trainable_parameters": res.trainable_parameters,
            "accuracy": {"val": res.val_accuracy, "test": res.accuracy(te)}, "lr": lr, "lr_choice": res.lr_choice,
            "note": note, "settings": res.settings, "candidates": res.candidates, "seconds": res.seconds,
            "n": {"train": len(tr), "val": len(va), "test": len(te)},
        })
    return rows
