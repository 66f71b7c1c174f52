"""Load a vision transformer from one spec string and wrap it in its family's tracer.

Specs (each registered family says which it takes, see :mod:`resi_dual.models.registry` and
:func:`resi_dual.list_models`):

* ``hf:<hub id or local directory>`` — transformers checkpoints; the family comes from the
  config's ``model_type`` (CLIP, BLIP retrieval, ViT, DINOv2, DINOv2 with registers).
* ``open_clip:<architecture>[@<pretrained tag or checkpoint file>]``, or ``open_clip:<directory>``
  holding ``open_clip_config.json`` and weights (open_clip's own ``local-dir:`` layout), or
  ``open_clip:hf-hub:<org/repo>``; ViT towers and timm towers (EVA-02, EVA, timm ViTs).
* a family's short names (``clip_b`` …, see :func:`resi_dual.models.registry.short_names`), and
  ``demo`` (the bundled model) or ``demo:<folder>`` (a checkpoint written by ``resi-dual pretrain-demo``).

The loaded object carries the checkpoint's own preprocessing (HF image processor, open_clip's
validation transform). Every failure is a one-line :class:`~resi_dual.errors.ResiDualError`.
"""

from __future__ import annotations

import json
import re

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import registry
from resi_dual.models.registry import resolve_spec  # noqa: F401 - re-exported: specs resolve here

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
    device = resolve_device(device, where="device")  # before any weights are read
    return registry.load_spec(spec.strip(), convention, device)


def describe(model) -> str:
    """One JSON line describing a traced model (spec, family, sizes, convention)."""
    c = model.composition
    return json.dumps(
        {"spec": model.spec, "family": c.family, "layers": c.n_layers, "heads": c.n_heads, "d_model": c.d_model,
         "d_head": c.d_head, "d_out": c.d_out, "units": len(c), "convention": c.convention, "image_size": model.image_size}
    )


