"""Load a vision transformer from one spec string and wrap it in its family's tracer.

Specs:

* ``hf:<hub id or local directory>`` — transformers checkpoints; the family comes from the config:
  ``CLIPConfig`` → ``CLIPModel``, ``CLIPVisionConfig`` → ``CLIPVisionModelWithProjection`` (or
  ``CLIPVisionModel`` when that is the saved architecture), ``BlipConfig`` →
  ``BlipForImageTextRetrieval``, ``ViTConfig`` → ``ViTModel`` / ``ViTForImageClassification``,
  ``Dinov2Config`` → ``Dinov2Model``.
* ``open_clip:<architecture>[@<pretrained tag or checkpoint file>]``, or ``open_clip:<directory>``
  holding ``open_clip_config.json`` and weights (open_clip's own ``local-dir:`` layout), or
  ``open_clip:hf-hub:<org/repo>``.
* the paper's seven models by short name (:data:`SHORT_NAMES`), and ``demo`` (the bundled model) or
  ``demo:<folder>`` (a checkpoint written by ``resi-dual pretrain-demo``).

The loaded object carries the checkpoint's own preprocessing (HF image processor, open_clip's
validation transform). Every failure is a one-line :class:`~resi_dual.errors.ResiDualError`.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import torch

from resi_dual.errors import ResiDualError

#: The seven models of the paper, by short name.
SHORT_NAMES: dict[str, str] = {
    "clip_b": "hf:openai/clip-vit-base-patch16",
    "clip_l": "hf:openai/clip-vit-large-patch14",
    "openclip_b": "open_clip:ViT-B-16@laion2b_s34b_b88k",
    "openclip_l": "open_clip:ViT-L-14@laion2b_s32b_b82k",
    "vit_l": "hf:google/vit-large-patch16-224",
    "dinov2_l": "hf:facebook/dinov2-large",
    "blip_l": "hf:Salesforce/blip-itm-large-flickr",
}

CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

# model types that are vision transformers with a head that is not a linear read of the CLS token
_ATTN_POOL_TYPES = {"siglip", "siglip_vision_model", "siglip2", "siglip2_vision_model", "aimv2", "aimv2_vision_model"}
_CNN_HINTS = ("resnet", "convnext", "regnet", "efficientnet", "mobilenet", "bit", "vgg", "densenet", "levit", "poolformer")


#: device strings accepted by ``--device`` and the grid's ``device`` key
DEVICE_PATTERN = re.compile(r"^(cpu|mps|cuda(:\d+)?)$")


def check_device_string(device: str, where: str = "--device") -> str:
    """``device`` stripped if it is ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (no availability check)."""
    text = str(device).strip() if isinstance(device, (str, torch.device)) else ""
    if not DEVICE_PATTERN.match(text):
        raise ResiDualError(f"{where}: {device!r} is not a device; use cpu, cuda, cuda:N or mps")
    return text


def resolve_device(device: str | torch.device | None = "cpu", where: str = "--device") -> torch.device:
    """The torch device named by ``device`` (default cpu), checked to exist on this machine.

    Raises:
        ResiDualError: a malformed string, or a device this machine (or this torch build) does not have.
    """
    text = check_device_string("cpu" if device is None else device, where)
    dev = torch.device(text)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ResiDualError(f"{where}: {text} is not available on this machine (torch {torch.__version__} sees no CUDA GPU)")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ResiDualError(f"{where}: {text} is not available on this machine (it has {count} CUDA device(s))")
    elif dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ResiDualError(f"{where}: {text} is not available on this machine (torch {torch.__version__} sees no Apple MPS device)")
    return dev


def resolve_spec(spec: str) -> str:
    """Expand a short name; other specs pass through unchanged."""
    spec = spec.strip()
    return SHORT_NAMES.get(spec, spec)


def load_model(spec: str, convention: str = "paper", device: str | torch.device = "cpu"):
    """Load the model named by ``spec`` and return its :class:`~resi_dual.models.tracing.base.TracedModel`.

    Args:
        spec: ``hf:…``, ``open_clip:…``, a short name (``clip_b`` …) or ``demo``.
        convention: ``paper`` (default) or ``centred``, see ``resi_dual.models.tracing.base``.
        device: where the weights live and the forward runs (``cpu``, ``cuda``, ``cuda:N``, ``mps``);
            checked by :func:`resolve_device`. Traced encodings, embeddings and the readout are
            returned on the CPU whatever the device.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ResiDualError("empty model spec")
    original = spec.strip()
    device = resolve_device(device, where="device")  # before any weights are read
    if original == "demo" or original.startswith("demo:"):
        from resi_dual.models.demo import load_demo

        folder = original[len("demo:"):] if original.startswith("demo:") else ""
        return load_demo(folder or None, convention=convention, device=device)
    full = resolve_spec(original)
    if full.startswith("hf:"):
        model = _load_hf(original, full[3:], convention)
    elif full.startswith("open_clip:"):
        from resi_dual.models.tracing.openclip import load_open_clip

        model = load_open_clip(original, full[len("open_clip:"):], convention)
    else:
        raise ResiDualError(
            f"unknown model spec {original!r}: expected hf:<hub id or dir>, open_clip:<arch>[@<tag or file>], "
            f"demo, or one of {', '.join(SHORT_NAMES)}"
        )
    return model.to(device)


# -- Hugging Face ------------------------------------------------------------------------------
def looks_like_path(source: str) -> bool:
    """True for strings that can only be a filesystem path (not an ``org/name`` hub id), and for an
    ``a/b`` whose ``a`` is a local directory (a relative path, never retried on the hub)."""
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source:
        return True
    head = source.split("/", 1)[0]
    return "/" in source and Path(head).is_dir()


def _offline_error(spec: str, source: str, err: Exception) -> ResiDualError:
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not Path(source).exists() and looks_like_path(source):
        return ResiDualError(f"{spec!r}: no such checkpoint directory {source}")
    if Path(source).exists():
        return ResiDualError(f"could not load {spec!r} from {source}: {reason}")
    return ResiDualError(
        f"could not fetch the weights of {spec!r} (hub id {source!r}): not a local directory and the hub "
        f"is unreachable (offline?) — {reason[:160]}"
    )


def _load_hf(spec: str, source: str, convention: str):
    if not source:
        raise ResiDualError(f"model spec {spec!r} names no checkpoint after 'hf:'")
    if looks_like_path(source) and not Path(source).expanduser().exists():
        raise ResiDualError(f"{spec!r}: no such checkpoint directory {source}")
    source = str(Path(source).expanduser()) if source.startswith("~") else source
    import transformers
    from transformers import AutoConfig

    from resi_dual.models.checkpoint_safety import NO_REMOTE_CODE, pickle_guard, refuse_remote_code, refuse_remote_config

    refuse_remote_code(source, spec)
    try:
        config = AutoConfig.from_pretrained(source, **NO_REMOTE_CODE)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _offline_error(spec, source, e) from None
    refuse_remote_config(config, spec, source)
    model_type = getattr(config, "model_type", "?")
    archs = list(getattr(config, "architectures", None) or [])

    if model_type in _ATTN_POOL_TYPES:
        raise ResiDualError(
            f"{spec!r} is a {model_type} model whose attention-pool head mixes tokens nonlinearly after the "
            "last block; its output is not a sum of residual units (only CLS-token ViTs are supported)"
        )
    if any(h in model_type for h in _CNN_HINTS):
        raise ResiDualError(f"{spec!r} is a {model_type} model, not a vision transformer (a CNN has no residual units to trace)")

    from resi_dual.models.tracing import blip, dinov2, hf_clip, vit

    if model_type == "clip":
        cls, tracer, fallback = transformers.CLIPModel, hf_clip.HFClipTraced, (CLIP_MEAN, CLIP_STD)
    elif model_type == "clip_vision_model":
        cls = transformers.CLIPVisionModel if "CLIPVisionModel" in archs else transformers.CLIPVisionModelWithProjection
        tracer, fallback = hf_clip.HFClipTraced, (CLIP_MEAN, CLIP_STD)
    elif model_type == "blip":
        other = [a for a in archs if a != "BlipForImageTextRetrieval"]
        if other and "BlipForImageTextRetrieval" not in archs:
            raise ResiDualError(
                f"{spec!r} is a {other[0]} checkpoint; only BlipForImageTextRetrieval (image–text space via vision_proj) is supported"
            )
        cls, tracer, fallback = transformers.BlipForImageTextRetrieval, blip.BlipTraced, (CLIP_MEAN, CLIP_STD)
    elif model_type == "vit":
        cls = transformers.ViTForImageClassification if "ViTForImageClassification" in archs else transformers.ViTModel
        tracer, fallback = vit.ViTTraced, (IMAGENET_MEAN, IMAGENET_STD)
    elif model_type == "dinov2":
        cls, tracer, fallback = transformers.Dinov2Model, dinov2.Dinov2Traced, (IMAGENET_MEAN, IMAGENET_STD)
    else:
        raise ResiDualError(
            f"{spec!r} has model type {model_type!r}; supported hf families: clip, clip_vision_model, blip, vit, dinov2"
        )
    try:
        with warnings.catch_warnings(), pickle_guard(spec, source):
            warnings.simplefilter("ignore")
            library_model = cls.from_pretrained(source, dtype=torch.float32, **NO_REMOTE_CODE)
    except (OSError, ValueError, EnvironmentError) as e:
        raise _offline_error(spec, source, e) from None
    vision_cfg = getattr(config, "vision_config", config)
    preprocess, size = _hf_preprocess(source, vision_cfg, fallback)
    tokenizer = _hf_tokenizer(source) if model_type in ("clip", "blip") else None
    return tracer(spec, library_model, preprocess, size, tokenizer, convention, patch_size=vision_cfg.patch_size)


def _hf_preprocess(source: str, vision_cfg, fallback: tuple) -> tuple:
    """(preprocess(list of PIL) -> (n,3,S,S), S) from the checkpoint's image processor, or a
    CLIP-style resize + centre crop at the config's image size when the checkpoint has none."""
    from transformers import AutoImageProcessor, CLIPImageProcessor

    from resi_dual.models.checkpoint_safety import NO_REMOTE_CODE

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
            stacklevel=3,
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


def _hf_tokenizer(source: str):
    from transformers import AutoTokenizer

    from resi_dual.models.checkpoint_safety import NO_REMOTE_CODE

    local = Path(source)
    if local.is_dir() and not any((local / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt")):
        return None
    try:
        return AutoTokenizer.from_pretrained(source, **NO_REMOTE_CODE)
    except Exception:  # noqa: BLE001 - a missing tokenizer only disables text features
        return None


def describe(model) -> str:
    """One JSON line describing a traced model (spec, family, sizes, convention)."""
    c = model.composition
    return json.dumps(
        {"spec": model.spec, "family": c.family, "layers": c.n_layers, "heads": c.n_heads, "d_model": c.d_model,
         "d_head": c.d_head, "d_out": c.d_out, "units": len(c), "convention": c.convention, "image_size": model.image_size}
    )


