"""The ``hf:`` loader: transformers checkpoints (hub id or local directory), shared by every HF family.

The family comes from the config's ``model_type`` (each registered family lists the types it
claims); the family picks the transformers class. The loaded object carries the checkpoint's own
preprocessing (its image processor, or the family's mean/std at the config's image size) and its
tokenizer when the family has a text tower. Every failure is a one-line ResiDualError.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import registry
from resi_dual.models.checkpoint_safety import NO_REMOTE_CODE, pickle_guard, refuse_remote_code, refuse_remote_config

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN_STD, IMAGENET_MEAN_STD = (CLIP_MEAN, CLIP_STD), (IMAGENET_MEAN, IMAGENET_STD)

# attention-pooled model types without a registered family (SigLIP 2 NaFlex: patch-sequence input; AIMv2)
_ATTN_POOL_TYPES = {"siglip2", "siglip2_vision_model", "aimv2", "aimv2_vision_model"}
_CNN_HINTS = ("resnet", "convnext", "regnet", "efficientnet", "mobilenet", "bit", "vgg", "densenet", "levit", "poolformer")


def offline_error(spec: str, source: str, err: Exception) -> ResiDualError:
    """One line for a checkpoint that could not be read: missing directory, bad files, or no hub."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not Path(source).exists() and registry.looks_like_path(source):
        return ResiDualError(f"{spec!r}: no such checkpoint directory {source}")
    if Path(source).exists():
        return ResiDualError(f"could not load {spec!r} from {source}: {reason}")
    return ResiDualError(
        f"could not fetch the weights of {spec!r} (hub id {source!r}): not a local directory and the hub "
        f"is unreachable (offline?) — {reason[:160]}"
    )


def _family_of(spec: str, config) -> registry.Family:
    model_type = getattr(config, "model_type", "?")
    for fam in registry.families():
        if fam.scheme == "hf" and model_type in fam.model_types:
            return fam
    names = registry.supported("hf")
    if model_type in _ATTN_POOL_TYPES:
        raise ResiDualError(
            f"{spec!r} is a {model_type} model: an attention-pooled tower whose input or head no registered family "
            f"traces (SigLIP 2 FixRes checkpoints load as siglip; supported hf families: {names})"
        )
    if any(h in model_type for h in _CNN_HINTS):
        raise ResiDualError(
            f"{spec!r} is a {model_type} model, not a vision transformer (a CNN has no residual units to trace; "
            f"supported hf families: {names})"
        )
    raise ResiDualError(f"{spec!r} has model type {model_type!r}; supported hf families: {names}")


def read_config(spec: str, source: str):
    """The checkpoint's transformers config (``source``: hub id or directory)."""
    from transformers import AutoConfig

    refuse_remote_code(source, spec)
    try:
        config = AutoConfig.from_pretrained(source, **NO_REMOTE_CODE)
    except (OSError, ValueError, EnvironmentError) as e:
        raise offline_error(spec, source, e) from None
    refuse_remote_config(config, spec, source)
    return config


def load_hf(spec: str, source: str, convention: str, device="cpu"):
    """The TracedModel of ``hf:<source>``; the family is chosen by the config's ``model_type``."""
    if not source:
        raise ResiDualError(f"model spec {spec!r} names no checkpoint after 'hf:'")
    if registry.looks_like_path(source) and not Path(source).expanduser().exists():
        raise ResiDualError(f"{spec!r}: no such checkpoint directory {source}")
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    config = read_config(spec, source)
    fam = _family_of(spec, config)
    cls = fam.library_class(config, list(getattr(config, "architectures", None) or []), spec)
    library_model = load_library(spec, source, cls)
    vision_cfg = getattr(config, "vision_config", config)
    preprocess, size = hf_preprocess(source, vision_cfg, fam.mean_std)
    tokenizer = hf_tokenizer(source) if fam.text is not None else None
    model = registry.build_tracer(fam, spec, library_model, preprocess, size, tokenizer, convention,
                                  patch_size=vision_cfg.patch_size)
    return model.to(device)


def load_library(spec: str, source: str, cls):
    """``cls.from_pretrained(source)`` in float32, with load errors as one line."""
    try:
        with warnings.catch_warnings(), pickle_guard(spec, source):
            warnings.simplefilter("ignore")
            return cls.from_pretrained(source, dtype=torch.float32, **NO_REMOTE_CODE)
    except (OSError, ValueError, EnvironmentError) as e:
        raise offline_error(spec, source, e) from None


def hf_preprocess(source: str, vision_cfg, fallback: tuple) -> tuple:
    """(preprocess(list of PIL) -> (n,3,S,S), S) from the checkpoint's image processor, or a
    CLIP-style resize + centre crop at the config's image size when the checkpoint has none."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    processor = None
    local = Path(source)
    if not local.is_dir() or (local / "preprocessor_config.json").exists():
        try:
            processor = AutoImageProcessor.from_pretrained(source, **NO_REMOTE_CODE)
        except (OSError, ValueError, EnvironmentError):
            processor = None
    if processor is None:
        size = int(vision_cfg.image_size)
        warnings.warn(
            f"{source}: no image processor config; using resize+centre-crop to {size} px with "
            f"mean {fallback[0]} / std {fallback[1]}",
            stacklevel=4,
        )
        processor = CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size},
            image_mean=list(fallback[0]), image_std=list(fallback[1]),
        )

    def preprocess(images: list) -> torch.Tensor:
        return processor(images=images, return_tensors="pt")["pixel_values"].float()

    from PIL import Image

    size = int(preprocess([Image.new("RGB", (37, 29))]).shape[-1])
    return preprocess, size


def hf_tokenizer(source: str):
    """The checkpoint's tokenizer, or None when it has no tokenizer files."""
    from transformers import AutoTokenizer

    local = Path(source)
    if local.is_dir() and not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")):
        return None
    try:
        return AutoTokenizer.from_pretrained(source, **NO_REMOTE_CODE)
    except Exception:  # noqa: BLE001 - a missing tokenizer only disables text features
        return None


def transformers_classes(*names: str) -> Callable[[], tuple[type, ...]]:
    """() -> the transformers classes called ``names`` (imported when called, not at registration)."""

    def get() -> tuple[type, ...]:
        import transformers

        return tuple(getattr(transformers, n) for n in names)

    return get


def register_hf_family(name: str, model_types: tuple[str, ...], library_class: str | Callable, mean_std: tuple, *,
                       text: Callable | None = None, text_class: str | None = None, **fields) -> Callable[[type], type]:
    """:func:`~resi_dual.models.registry.register_family` for an ``hf:`` family that claims the config
    ``model_types``: the shared loader and local weights are filled in, so a family declares only what differs.

    ``library_class`` is a transformers class name, or (config, saved architectures, spec) -> class;
    ``mean_std`` the preprocessing fallback; ``text_class`` names the class that carries the ``text`` tower.
    """
    if isinstance(library_class, str):
        only = transformers_classes(library_class)
        library_class = lambda config, archs, spec: only()[0]  # noqa: E731
    if text_class is not None:
        fields["text_types"] = transformers_classes(text_class)
    return registry.register_family(name=name, scheme="hf", load=load_hf, model_types=model_types,
                                    library_class=library_class, mean_std=mean_std, text=text,
                                    library_module="transformers", weights_path=registry.local_weights, **fields)
