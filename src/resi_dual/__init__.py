"""resi-dual: residual-unit decomposition, spectral analysis and ResiDual adaptation of vision transformers.

One function per stage, for notebooks (each imports its stage on first use)::

    import resi_dual as rd
    model = rd.load_model("demo")                              # or "hf:openai/clip-vit-base-patch16", …
    train = rd.encode(model, rd.load_dataset("digits", "train"), "stores/digits-train")
    bases = rd.fit_bases(train)                                # per-unit PCA
    ids = rd.intrinsic_dimensions(train, bases)                # linear ID, TwoNN, PC1 ratio, PR per unit
    head = rd.zero_shot_classifier(train, model)               # (C, d_out) text or prototype classifier
    adapter, metrics = rd.train_adapter(train, val, test, head, bases=bases)

Shapes: n samples, U units, C classes, d_out the output (joint image–text) width. The math and the
conventions: docs/DESIGN.md. Reference: Basile, Maiorca, Bortolussi, Rodolà, Locatello, "ResiDual
Transformer Alignment with Spectral Decomposition", TMLR 2025 (arXiv 2411.00246).
"""

from __future__ import annotations

from resi_dual.core.units import Composition, Unit
from resi_dual.errors import ResiDualError

__version__ = "0.1.0"


def _install_progress_bars() -> None:
    """Make ``progress=True`` anywhere in the package draw report's rich bars (docs/DESIGN.md §14)."""
    from resi_dual.core import progress

    def bars(description, total=None, **fields):
        from resi_dual.report.progress import bars as rich_bars

        return rich_bars(description, total, **fields)

    progress.use_default(bars)


# -- models and data -------------------------------------------------------------------------------
def load_model(spec: str, **kwargs):
    """A traced vision transformer from a spec (``hf:<id or dir>``, ``open_clip:<arch>[@<tag>]``, a short
    name such as ``clip_b``, or ``demo``). ``model.trace(pixels)`` gives (n, U, d_out) contributions that
    sum to ``model.embed(pixels)``; keywords: ``convention``, ``device`` (see ``resi_dual.models.load_model``)."""
    from resi_dual.models.loading import load_model as _load

    return _load(spec, **kwargs)


def list_models():
    """The registered model families (name, summary, spec form, short names); see `resi_dual.models.registry`."""
    from resi_dual.models.registry import list_models as _list

    return _list()


def load_dataset(spec: str, split: str = "train", root=None):
    """One split of a dataset (``folder:<path>``, ``torchvision:<Name>`` with ``root``, ``hf:<id or dir>``, or
    a bundled one: ``animal-mnist``, ``digits``, ``fashion-mnist``, ``textiles``) as an ``ImageDataset``."""
    from resi_dual.data import load_dataset as _load

    return _load(spec, split, root=root)


# -- stores ----------------------------------------------------------------------------------------
def encode(model, dataset, out, progress: bool = True, **config):
    """Encode ``dataset`` through ``model`` into the store at ``out`` (created, resumed, or reused when
    complete) and open it. ``config``: ``EncodeConfig`` fields (``batch_size``, ``dtype``, ``limit`` …).
    Returns the store: ``len(store)`` samples of (U, d_out) contributions, ``store.labels`` (n,)."""
    from resi_dual.store import open_store as _open
    from resi_dual.store.writer import EncodeConfig, encode_store

    encode_store(model, dataset, out, EncodeConfig(progress=progress, **config))
    return _open(out)


def open_store(path, **kwargs):
    """Open an encoding store written by :func:`encode` or `resi-dual encode` (see `resi_dual.store`)."""
    from resi_dual.store import open_store as _open

    return _open(path, **kwargs)


# -- spectral --------------------------------------------------------------------------------------
def fit_bases(source, units=None, progress: bool = True):
    """Per-unit PCA of a store's contributions in one pass: ``UnitBases`` with, per unit label, the mean
    (d_out,), the components (k, d_out) and their explained variance (k,). ``units``: labels or ``heads`` …"""
    from resi_dual.spectral.pca import fit_bases as _fit

    return _fit(source, units=units, progress=progress)


def intrinsic_dimensions(source, bases, threshold: float = 0.99, twonn_samples: int = 50_000, seed: int = 0,
                         progress: bool = True):
    """One ``UnitID`` per unit of ``bases``: linear ID (components for ``threshold`` of the variance),
    TwoNN ID on at most ``twonn_samples`` seeded samples, their ratio, PC1 ratio, participation ratio."""
    from resi_dual.spectral.intrinsic_dim import unit_intrinsic_dimensions

    return unit_intrinsic_dimensions(source, bases, threshold=threshold, twonn_samples=twonn_samples, seed=seed,
                                     progress=progress)


def similarity(bases_a, bases_b, units=None, variance: float = 0.9):
    """One ``UnitSimilarity`` per unit: the normalised spectral cosine (1 = same spectrum) between the
    unit's PCA on two datasets of the same model, each cut at ``variance`` explained variance."""
    from resi_dual.spectral.similarity import similarity_table

    return similarity_table(bases_a, bases_b, units=units, variance=variance)


# -- interpretation and zero-shot ------------------------------------------------------------------
def interpret(source, model, method: str = "textspan", k: int = 5, units="heads", dictionary=None,
              progress: bool = True):
    """Describe each unit by ``k`` entries of a text dictionary (default: the bundled one), embedded by
    ``model``'s text tower. ``method``: ``textspan`` or ``somp``. Returns label -> ``Decomposition``
    (``texts``, ``weights``, cumulative ``explained`` variance)."""
    from resi_dual.interpret import decompose_units, embed_dictionary, load_dictionary
    from resi_dual.models.text import get_text_tower

    texts = load_dictionary(dictionary)
    atoms = embed_dictionary(get_text_tower(model), texts)  # (m, d_out), normalised
    return decompose_units(source, atoms, texts, method=method, k=k, units=units, progress=progress)


def zero_shot_classifier(source, model=None, train_source=None):
    """The frozen classifier of a store's task: a ``ZeroShotHead`` with ``weights`` (C, d_out) from class-name
    prompts when the model has a text tower, else class-mean prototypes of ``train_source``."""
    from resi_dual.zeroshot import classifier_for_source

    return classifier_for_source(source, model=model, train_source=train_source)


def zero_shot(source, classifier) -> dict:
    """Zero-shot accuracy of ``classifier`` on a store: ``{"top1", "top5", "per_class", "n", …}``."""
    from resi_dual.zeroshot import accuracy_report, source_logits

    return accuracy_report(source_logits(classifier, source), source.labels, classifier.class_names)


def specialize(rank_source, eval_source, classifier, train_source=None, methods=("S", "U|T", "U", "random"),
               ablation: str = "mean"):
    """Rank the heads on ``rank_source`` (never the evaluated split) and ablate all but the top ones on
    ``eval_source`` (``mean``: replaced by their ``train_source`` mean, or ``zero``). Returns
    ``(rankings, AblationResult)``; ``result.accuracy[ranking][ablation]`` is (len(result.sizes),)."""
    from resi_dual.zeroshot.specialize import ablation_curves, head_means, rank_heads

    rankings = rank_heads(rank_source, classifier, methods=methods)
    means = head_means(train_source) if ablation == "mean" and train_source is not None else None
    return rankings, ablation_curves(eval_source, classifier, rankings, modes=(ablation,), means=means)


# -- adaptation ------------------------------------------------------------------------------------
def train_adapter(train, val, test, classifier, variant: str = "residual", bases=None, shots: int | None = None,
                  **train_config):
    """Train one adapter on cached coefficients of three stores of one model and test its best epoch.

    ``variant``: ``residual`` (one λ per head component), ``residual-full``, ``coarse``, ``spectral`` or
    ``linear``; ``bases`` from :func:`fit_bases` (the unit variants); ``train_config``: ``TrainConfig``
    fields (``max_epochs``, ``lr``, ``seed`` …). Returns ``(adapter, metrics)``: a ``RunMetrics``
    (``val_accuracy``, ``test_accuracy``, ``zeroshot_test``, ``trainable_parameters`` …; ``to_dict()`` for
    JSON); ``adapter.save(path)`` persists the adapter.
    """
    from resi_dual.adapters import AdapterConfig, TrainConfig
    from resi_dual.adapters.protocol import train_and_evaluate

    return train_and_evaluate(AdapterConfig(variant=variant), train, val, test, classifier.weights,
                              classifier.logit_scale, bases=bases, train_config=TrainConfig(**train_config), shots=shots)


def apply_adapter(adapter, model, images):
    """(n, C) class probabilities of ``images`` (PIL images or paths) under a trained adapter; ``model``
    must be the one the adapter was trained on (``adapter.class_names`` names the columns)."""
    import numpy as np
    import torch

    from resi_dual.core.images import open_image
    from resi_dual.store.base import MemorySource

    images = [open_image(im) if isinstance(im, (str, bytes)) or hasattr(im, "__fspath__") else im for im in images]
    enc = model.trace(model.preprocess(images), check=True)
    source = MemorySource(enc, np.zeros(len(images), dtype=np.int64), adapter.class_names,
                          meta={"weights_hash": model.weights_hash()})
    return torch.softmax(adapter.predict_logits(adapter.encode(source)), dim=1)


_install_progress_bars()

__all__ = [
    "ResiDualError", "Unit", "Composition", "__version__",
    "load_model", "list_models", "load_dataset",
    "encode", "open_store",
    "fit_bases", "intrinsic_dimensions", "similarity",
    "interpret", "zero_shot_classifier", "zero_shot", "specialize",
    "train_adapter", "apply_adapter",
]
