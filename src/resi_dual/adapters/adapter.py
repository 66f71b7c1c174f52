"""Adapters as one object: what they read (`Projection`), what they learn (a module) and the frozen head.

Variants (docs/DESIGN.md §8):

========================  ==================================================  =========================
variant                   adapted units / components                          other units
========================  ==================================================  =========================
``residual``              heads, components to 90 % explained variance,       dropped (the paper's
                          one λ per component                                 ResiDual*)
``residual-keep``         heads, components to 90 % explained variance,       kept as they are (MLPs,
                          one λ per component                                 embedding, and the heads'
                                                                              means and variance past
                                                                              the cut): λ = 1 is the
                                                                              model's own embedding
``residual-full``         heads and MLPs, all components, one λ each          embedding kept as is
``coarse``                heads, one λ per head scaling its whole c_u         dropped
``spectral``              the output embedding, all its PCA components        (mean kept as is)
``linear``                ``W y + b`` on the output embedding                 —
``zeroshot``              nothing (reference row)                             —
========================  ==================================================  =========================

(``finetune`` trains the vision encoder itself on images, ``lora`` low-rank updates of its attention
projections: :mod:`resi_dual.adapters.finetune`, :mod:`resi_dual.adapters.lora`.)

An adapter file is self-contained safetensors: the learned scalars, the component rows and means it
projects on, the frozen classifier, and in its header the variant, units, k per unit, the basis
content hash, model spec / weights hash / composition and class names. Embedding the components
(≈ 9 MB for ViT-B/16 at 90 %) means `resi-dual apply` needs only the model, not the basis file or
store the adapter was trained against, which may live on another machine; the basis hash still
records which basis it was, and loading against another basis is refused.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import torch
from torch import nn

from resi_dual.adapters.cache import (
    CachedSplit,
    Projection,
    encode_split,
    output_pca,
    readout_fingerprint,
    tensors_hash,
)
from resi_dual.adapters.modules import ComponentScaling, LinearAdapter, PassThrough, classify, trainable_parameters
from resi_dual.errors import ResiDualError
from resi_dual.core.units import Composition
from resi_dual.store.base import EncodingSource

FORMAT = "resi-dual-adapter/1"

#: Variants trained on cached coefficients, plus ``finetune`` and ``lora`` (images) and ``zeroshot`` (no training).
Variant = Literal["zeroshot", "coarse", "residual", "residual-keep", "residual-full", "spectral", "linear", "finetune",
                  "lora"]
VARIANTS: tuple[str, ...] = get_args(Variant)
#: λ initialisation: all ones, or 1 + N(0, 1) as the paper's code
Init = Literal["ones", "paper"]
INITS: tuple[str, ...] = get_args(Init)

#: The paper's learning rates (Schedule-Free AdamW).
DEFAULT_LR = {"residual": 0.8, "residual-keep": 0.8, "residual-full": 0.8, "coarse": 0.8, "spectral": 1e-3, "linear": 1e-3, "finetune": 1e-5, "lora": 1e-4}
#: The learning rates each method chooses from on validation (``lr="sweep"``, the default): the same
#: budget of four candidates a decade apart for every method trained on cached features, around the
#: paper's value; three for full fine-tuning and LoRA, which rerun the backbone (the peers' grid is
#: :data:`resi_dual.adapters.peers.LR_GRID`; CoOp's SGD sweeps its paper's 0.002 and a decade either side).
LR_SWEEP = {
    "residual": (0.008, 0.08, 0.8, 8.0), "residual-keep": (0.008, 0.08, 0.8, 8.0),
    "residual-full": (0.008, 0.08, 0.8, 8.0), "coarse": (0.008, 0.08, 0.8, 8.0),
    "spectral": (0.008, 0.08, 0.8, 8.0), "linear": (1e-4, 1e-3, 1e-2, 1e-1), "finetune": (1e-5, 1e-4, 1e-3),
    "lora": (1e-4, 1e-3, 1e-2), "coop": (2e-4, 2e-3, 2e-2, 2e-1),
}

# variant -> (read from, adapted units, kept units, variance cut or None for all, mean mode, one λ per unit,
#            the adapted units' rest (means, variance past the cut) kept)
_PRESETS = {
    "residual": ("units", "heads", "", 0.9, "drop", False, False),
    "residual-keep": ("units", "heads", "mlps,emb", 0.9, "drop", False, True),
    "residual-full": ("units", "heads,mlps", "emb", None, "drop", False, False),
    "coarse": ("units", "heads", "", None, "scale", True, False),
    "spectral": ("output", "output", "", None, "drop", False, False),
    "linear": ("output", "", "", None, "drop", False, False),
    "zeroshot": ("output", "", "", None, "drop", False, False),
}


@dataclass
class AdapterConfig:
    """Which adapter to build. ``None`` fields take the variant's preset (table in the module doc).

    Attributes:
        variant: one of :data:`VARIANTS` except ``finetune``.
        units: adapted units (``heads``, ``mlps``, ``all``, ``emb`` or labels, comma-separated).
        keep: units whose contributions pass through unchanged (same syntax; ``""`` for none).
        variance: cumulative explained-variance ratio per unit for the component cut; 1.0 or
            ``None`` keeps all components.
        mean_mode: ``drop`` (paper), ``add`` (add the adapted units' means back) or ``scale``.
        init: ``ones`` or ``paper`` (λ = 1 + N(0, 1)).
        seed: seed of the ``paper`` init.
    """

    variant: Variant = "residual"
    units: str | None = None
    keep: str | None = None
    variance: float | None | str = "preset"
    mean_mode: str | None = None
    init: Init = "ones"
    seed: int = 0

    def resolved(self) -> dict:
        if self.variant not in _PRESETS:
            raise ResiDualError(f"unknown adapter {self.variant!r}; choose one of {', '.join(VARIANTS)}")
        src, units, keep, variance, mean_mode, tied, keep_rest = _PRESETS[self.variant]
        if keep_rest and self.mean_mode not in (None, "drop"):
            raise ResiDualError(f"{self.variant} keeps the heads' means as they are; mean_mode {self.mean_mode!r} "
                                "would count them twice")
        if self.variance != "preset":
            variance = None if self.variance is None else float(self.variance)
        if variance is not None and not (0.0 < variance <= 1.0):
            raise ResiDualError(f"variance cut must be in (0, 1], got {variance}")
        if self.init not in INITS:
            raise ResiDualError(f"unknown init {self.init!r}; choose one of {', '.join(INITS)}")
        return dict(
            variant=self.variant,
            source=src,
            units=units if self.units is None else self.units,
            keep=keep if self.keep is None else self.keep,
            variance=variance,
            mean_mode=mean_mode if self.mean_mode is None else self.mean_mode,
            tied=tied,
            keep_rest=keep_rest,
            init=self.init,
            seed=self.seed,
        )


def needs_unit_bases(variant: str) -> bool:
    """Whether ``variant`` reads per-unit PCA bases (the λ-per-component and per-head variants)."""
    return variant in _PRESETS and _PRESETS[variant][0] == "units"


def _make_module(cfg: dict, proj: Projection, d_out: int) -> nn.Module:
    if cfg["variant"] == "linear":
        return LinearAdapter(d_out)
    if not proj.n_components:
        return PassThrough()
    k = torch.tensor(proj.n_components)
    if cfg["tied"]:
        group = torch.repeat_interleave(torch.arange(len(k)), k)
        n_params = len(k)
    else:
        group = torch.arange(int(k.sum()))
        n_params = int(k.sum())
    means = proj.means if proj.source == "units" else proj.means[:0]
    return ComponentScaling(proj.components, group, means, n_params, cfg["mean_mode"], cfg["init"], cfg["seed"])


class Adapter(nn.Module):
    """A trainable adapter with its projection and frozen classifier.

    ``forward(coef, fixed)`` gives logits (b, C) from a cached split; :meth:`encode` builds that split
    from any :class:`EncodingSource` of the same model. Build with :func:`build_adapter`; persist with
    :meth:`save` / :meth:`load`.

    Attributes:
        config: the resolved configuration (see :meth:`AdapterConfig.resolved`).
        projection: the :class:`Projection` (components, means, adapted and kept units).
        module: the trainable part.
        classifier: (C, d_out) buffer, L2-normalised rows; logit_scale, logit_bias: floats (the bias is
        SigLIP's, 0 otherwise).
        composition, class_names, fingerprint ((U,) readout fingerprint), provenance (dict: basis_hash,
        basis_meta, model_spec, weights_hash).
    """

    def __init__(self, config: dict, projection: Projection, classifier: torch.Tensor, logit_scale: float,
                 composition: Composition, class_names: list[str], fingerprint: torch.Tensor, provenance: dict,
                 logit_bias: float = 0.0):
        super().__init__()
        if classifier.shape != (len(class_names), composition.d_out):
            raise ResiDualError(
                f"classifier has shape {tuple(classifier.shape)}, expected ({len(class_names)}, {composition.d_out})"
            )
        self.config = config
        self.projection = projection
        self.module = _make_module(config, projection, composition.d_out)
        self.register_buffer("classifier", classifier.to(torch.float32).contiguous())
        self.logit_scale = float(logit_scale)
        self.logit_bias = float(logit_bias)
        self.composition = composition
        self.class_names = list(class_names)
        self.fingerprint = fingerprint.to(torch.float64)
        self.provenance = dict(provenance)

    # -- forward ---------------------------------------------------------------------------
    def embed(self, coef: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(b, K), (b, d_out) -> adapted embedding (b, d_out), unnormalised."""
        return self.module(coef, fixed)

    def forward(self, coef: torch.Tensor, fixed: torch.Tensor) -> torch.Tensor:
        """(b, K), (b, d_out) -> logits (b, C)."""
        return classify(self.embed(coef, fixed), self.classifier, self.logit_scale, self.logit_bias)

    @property
    def n_trainable(self) -> int:
        return trainable_parameters(self.module)

    # -- data ------------------------------------------------------------------------------
    def check_source(self, source: EncodingSource, what: str = "store") -> None:
        """Refuse encodings of another model (layout, weights hash when known, readout fingerprint)."""
        comp = source.composition
        if not self.composition.same_model(comp):
            raise ResiDualError(
                f"{what} comes from another model ({comp.model_id!r}) than the adapter ({self.composition.model_id!r})"
            )
        mine, theirs = self.provenance.get("weights_hash"), source.meta.weights_hash
        if mine and theirs and mine != theirs:
            raise ResiDualError(f"{what} comes from other model weights ({theirs[:12]}) than the adapter ({mine[:12]})")
        fp = readout_fingerprint(comp, source.readout)
        if not torch.allclose(fp, self.fingerprint, rtol=1e-4, atol=1e-8):
            raise ResiDualError(f"{what} comes from other model weights than the adapter (readouts differ)")

    def encode(self, source: EncodingSource, rows=None, block_rows: int = 4096, progress: bool = False) -> CachedSplit:
        """Cached coefficients of ``source`` for this adapter (the frozen backbone is not rerun)."""
        self.check_source(source)
        return encode_split(source, self.projection, rows, block_rows, progress)

    @torch.no_grad()
    def predict_logits(self, split: CachedSplit, batch_rows: int = 4096) -> torch.Tensor:
        """(n, C) logits of a cached split, in large batches."""
        out = [self(split.coef[s : s + batch_rows], split.fixed[s : s + batch_rows]) for s in range(0, len(split), batch_rows)]
        return torch.cat(out) if out else torch.empty(0, len(self.class_names))

    def accuracy(self, split: CachedSplit) -> float:
        if len(split) == 0:
            return float("nan")
        return float((self.predict_logits(split).argmax(1) == split.labels).double().mean())

    # -- interpretation --------------------------------------------------------------------
    def component_weights(self) -> dict[str, torch.Tensor]:
        """Adapted unit label -> (k_u,) the scalar on each of its components (Coarse: repeated)."""
        if not isinstance(self.module, ComponentScaling):
            return {}
        w = self.module.component_weights().detach()
        offs = self.projection.offsets
        return {lab: w[offs[j] : offs[j + 1]].clone() for j, lab in enumerate(self.projection.adapted)}

    # -- persistence -----------------------------------------------------------------------
    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        """Write safetensors: learned parameters, projection, classifier; metadata in the header."""
        from safetensors.torch import save

        from resi_dual.files import atomic_write

        path = Path(path)
        tensors = {f"module.{k}": v.detach().contiguous() for k, v in self.module.named_parameters()}
        tensors.update({
            "projection.components": self.projection.components.to(torch.float32).contiguous(),
            "projection.means": self.projection.means.to(torch.float32).contiguous(),
            "classifier": self.classifier.contiguous(),
            "fingerprint": self.fingerprint.contiguous(),
        })
        p = self.projection
        header = {
            "format": FORMAT,
            "config": json.dumps(self.config),
            "projection": json.dumps(dict(source=p.source, adapted=p.adapted, n_components=p.n_components, kept=p.kept,
                                          keep_rest=p.keep_rest)),
            "composition": self.composition.to_json(),
            "class_names": json.dumps(self.class_names),
            "logit_scale": repr(self.logit_scale),
            "logit_bias": repr(self.logit_bias),
            "classifier_hash": tensors_hash(self.classifier),
            "provenance": json.dumps(self.provenance),
            "extra": json.dumps(extra or {}),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        return atomic_write(path, save(tensors, metadata=header))  # umask's permissions, all or nothing

    @classmethod
    def load(cls, path: str | Path, basis_hash: str | None = None) -> "Adapter":
        """Load an adapter file; with ``basis_hash``, refuse one trained against another basis."""
        from resi_dual.files import read_safetensors

        header, tensors = read_safetensors(path, "adapter")
        if header.get("format") != FORMAT:
            raise ResiDualError(f"{path} is not a resi-dual adapter file")
        prov = json.loads(header["provenance"])
        if basis_hash is not None and prov.get("basis_hash") != basis_hash:
            raise ResiDualError(
                f"{path} was trained against another basis ({str(prov.get('basis_hash'))[:12]}…, not {basis_hash[:12]}…)"
            )
        pj = json.loads(header["projection"])
        proj = Projection(pj["source"], pj["adapted"], pj["n_components"], tensors["projection.components"],
                          tensors["projection.means"], pj["kept"], pj.get("keep_rest", False))
        out = cls(json.loads(header["config"]), proj, tensors["classifier"], float(header["logit_scale"]),
                  Composition.from_json(header["composition"]), json.loads(header["class_names"]),
                  tensors["fingerprint"], prov, float(header.get("logit_bias", "0.0")))
        params = {k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")}
        missing = set(dict(out.module.named_parameters())) ^ set(params)
        if missing:
            raise ResiDualError(f"{path}: adapter parameters do not match its variant ({sorted(missing)})")
        with torch.no_grad():
            for k, p in out.module.named_parameters():
                p.copy_(params[k])
        out.extra = json.loads(header.get("extra", "{}"))
        return out


def build_adapter(
    config: AdapterConfig,
    source: EncodingSource,
    classifier: torch.Tensor,
    logit_scale: float,
    bases=None,
    reference: EncodingSource | None = None,
    logit_bias: float = 0.0,
) -> Adapter:
    """Build an untrained adapter for the model of ``source`` (the training split).

    Args:
        config: the variant and its options.
        source: training encodings (their composition, readout fingerprint, class names, meta).
        classifier: (C, d_out) frozen class embeddings (L2-normalised rows); logit_scale: float.
        bases: :class:`~resi_dual.spectral.bases.UnitBases` for the unit variants (residual, coarse …).
        reference: encodings for the spectral adapter's output PCA (default: ``source``).
        logit_bias: SigLIP's logit bias (0 otherwise).
    """
    cfg = config.resolved()
    comp = source.composition
    d_out = comp.d_out
    classifier = torch.as_tensor(classifier, dtype=torch.float32)
    prov = {"model_spec": source.meta.model_spec or comp.model_id, "weights_hash": source.meta.weights_hash}
    if cfg["source"] == "units":
        if bases is None:
            raise ResiDualError(f"adapter {cfg['variant']!r} needs per-unit PCA bases")
        if not bases.composition.same_model(comp):
            raise ResiDualError(
                f"the basis was fitted on another model ({bases.composition.model_id!r}) than the store ({comp.model_id!r})"
            )
        adapted = comp.select_labels(cfg["units"])
        kept = [lab for lab in comp.select_labels(cfg["keep"]) if lab not in adapted]
        missing = [lab for lab in adapted if lab not in bases.labels]
        if missing:
            raise ResiDualError(f"the basis has no PCA for units {missing[:5]}{'…' if len(missing) > 5 else ''}")
        ks, rows, means = [], [], []
        for lab in adapted:
            k = bases.components[lab].shape[0] if cfg["variance"] in (None, 1.0) else bases.n_components_for(lab, cfg["variance"])
            ks.append(int(k))
            rows.append(bases.components[lab][:k].to(torch.float32))
            means.append(bases.means[lab].to(torch.float32))
        proj = Projection("units", adapted, ks, torch.cat(rows) if rows else torch.zeros(0, d_out),
                          torch.stack(means) if means else torch.zeros(0, d_out), kept, cfg["keep_rest"])
        prov.update(basis_hash=bases.content_hash(), basis_meta=bases.meta)
    elif cfg["units"] == "output":
        ref = reference if reference is not None else source
        mean, comps, ev = output_pca(ref)
        if cfg["variance"] not in (None, 1.0):
            ratio = torch.cumsum(ev, 0) / ev.sum().clamp_min(1e-300)
            k = int(torch.searchsorted(ratio, torch.tensor(cfg["variance"], dtype=ratio.dtype) - 1e-12)) + 1
            comps = comps[:k]
        proj = Projection("output", ["output"], [int(comps.shape[0])], comps.float(), mean.float()[None], [])
        prov.update(basis_hash=tensors_hash(mean, comps), basis_meta={"kind": "output-pca", "n_samples": len(ref),
                                                                      **{k: v for k, v in ref.meta.identity().items() if k in ("dataset_name", "split")}})
    else:
        proj = Projection("output", [], [], torch.zeros(0, d_out), torch.zeros(0, d_out), [])
        prov.update(basis_hash=None)
    return Adapter(cfg, proj, classifier, logit_scale, comp, list(source.class_names),
                   readout_fingerprint(comp, source.readout), prov, logit_bias)


def describe(adapter: Adapter) -> dict:
    """A JSON-ready summary: variant, trainable parameters, units and k per unit."""
    p = adapter.projection
    return dict(variant=adapter.config["variant"], trainable_parameters=adapter.n_trainable,
                adapted_units=len(p.adapted), components=int(sum(p.n_components)), kept_units=p.kept)


__all__ = ["Adapter", "AdapterConfig", "VARIANTS", "DEFAULT_LR", "build_adapter", "describe", "LR_SWEEP",
           "CachedSplit"]
