"""Text towers: one ``encode(list[str]) -> (n, d_out)`` interface over every family with a text side.

Each family with a text side registers its encoder (``models.registry``; HF ``CLIPModel``,
open_clip ``CLIP``/``CustomTextCLIP``, HF ``BlipForImageTextRetrieval`` in ITC mode); the bundled
demo model carries its own (its ``text_tower`` attribute). Embeddings are unnormalised, float32, in
the joint image–text space, and cached per (model weights hash, text list) in memory and optionally
on disk as safetensors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from resi_dual.errors import ResiDualError

#: in-memory cache: (tower key, text-list hash) -> (n, d_out) float32
_MEMORY_CACHE: dict[tuple[str, str], torch.Tensor] = {}


def texts_hash(texts: Sequence[str]) -> str:
    """sha256 of the text list (order matters: rows follow it)."""
    h = hashlib.sha256()
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()


@dataclass
class TextTower:
    """A model's text encoder as a plain function of strings.

    Attributes:
        encode_batch: list[str] -> (b, d_out) unnormalised embeddings (no caching, one batch).
        logit_scale: the model's (exponentiated) logit scale, multiplied onto cosine similarities.
        logit_bias: added after the scale (SigLIP's sigmoid scoring); 0 for softmax-trained towers.
        key: identity of the weights, used as the cache key (e.g. the model's weights hash).
        batch_size: texts per forward pass.
        cache_dir: when set, encodings are also cached there as safetensors.
    """

    encode_batch: Callable[[list[str]], torch.Tensor]
    logit_scale: float
    key: str
    batch_size: int = 256
    cache_dir: Path | None = None
    name: str = field(default="text tower")
    logit_bias: float = 0.0

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """(n, d_out) float32 unnormalised embeddings of ``texts``, batched and cached."""
        texts = [str(t) for t in texts]
        if not texts:
            raise ResiDualError("no texts to encode")
        th = texts_hash(texts)
        hit = _MEMORY_CACHE.get((self.key, th))
        if hit is not None:
            return hit.clone()
        path = None
        if self.cache_dir is not None:
            path = Path(self.cache_dir) / f"text-{self.key[:16]}-{th[:16]}.safetensors"
            if path.is_file():
                from safetensors.torch import load_file

                emb = load_file(str(path))["embeddings"]
                if emb.shape[0] == len(texts):
                    _MEMORY_CACHE[(self.key, th)] = emb
                    return emb.clone()
        # shortest first: each batch holds texts of similar length, so trimming to its longest real
        # sequence (done by the family encoders) drops most of the padding
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        parts = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = [texts[i] for i in order[start : start + self.batch_size]]
                parts.append(self.encode_batch(batch).detach().float().cpu())
        emb = torch.empty_like(torch.cat(parts))
        emb[torch.tensor(order)] = torch.cat(parts)
        _MEMORY_CACHE[(self.key, th)] = emb
        if path is not None:
            from safetensors.torch import save_file

            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            save_file({"embeddings": emb}, str(tmp), metadata={"key": self.key, "texts_sha256": th})
            tmp.replace(path)
        return emb.clone()


def clear_cache() -> None:
    """Forget every in-memory text encoding."""
    _MEMORY_CACHE.clear()


# -- helpers for the families' encoders (each family registers its own, see models.registry) ---

def check_ids(ids: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """``ids`` unchanged; raises when a tokenizer that does not belong to the checkpoint would index
    past the embedding table."""
    if vocab_size is not None and ids.numel() and int(ids.max()) >= vocab_size:
        raise ResiDualError(
            f"the tokenizer produced token id {int(ids.max())} but the text tower has {vocab_size} tokens: "
            "tokenizer and checkpoint do not match"
        )
    return ids


def hf_tokenize(model, tokenizer, family: str, padding: bool | str = True) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
    """texts -> (input_ids, attention_mask) on the model's device, checked against its vocabulary.

    ``padding=True`` pads to the batch's longest real sequence (exact for towers that mask padding or
    are causal); ``"max_length"`` to the full context (towers that read padded positions, SigLIP)."""
    if tokenizer is None:
        raise ResiDualError(f"{family} model has no tokenizer: load it from a checkpoint directory with tokenizer files")
    text_cfg = model.config.text_config
    max_len, vocab = int(text_cfg.max_position_embeddings), int(text_cfg.vocab_size)
    device = next(model.parameters()).device

    def tokenize(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = tokenizer(batch, padding=padding, truncation=True, max_length=max_len, return_tensors="pt")
        return check_ids(tok["input_ids"], vocab).to(device), tok["attention_mask"].to(device)

    return tokenize


def _library_kind(lib) -> str | None:
    """The name of the family whose text tower ``lib`` carries (by type), or None."""
    from resi_dual.models.registry import library_family

    fam = library_family(lib)
    return None if fam is None else fam.name


def _weights_key(model, lib) -> str:
    wh = getattr(model, "weights_hash", None)
    if callable(wh):
        try:
            return str(wh())
        except Exception:  # noqa: BLE001 - fall back to hashing the parameters ourselves
            pass
    h = hashlib.sha256()
    for name, p in sorted(lib.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def get_text_tower(model, tokenizer=None, cache_dir: str | Path | None = None, batch_size: int = 256) -> TextTower:
    """The text tower of ``model``.

    Args:
        model: a ``TracedModel`` from :func:`resi_dual.load_model` (uses ``.text_tower`` when set,
            else ``.library_model`` and ``.tokenizer``), or a library model itself
            (HF ``CLIPModel``, open_clip ``CLIP``, HF ``BlipForImageTextRetrieval``).
        tokenizer: overrides the model's tokenizer (HF tokenizer, or an open_clip tokenizer).
        cache_dir: optional directory for a safetensors cache of encodings.
    Raises:
        ResiDualError: the model has no text tower (vision-only ViT, DINOv2 …).
    """
    demo = getattr(model, "text_tower", None)
    if demo is not None:
        if isinstance(demo, TextTower):
            return demo
        if not hasattr(demo, "encode"):
            raise ResiDualError("the model's text_tower has no encode(list[str]) method")
        scale = getattr(demo, "logit_scale", 100.0)
        scale = float(scale.exp()) if isinstance(scale, torch.nn.Parameter) else float(scale)
        key = str(getattr(demo, "key", None) or _weights_key(model, getattr(model, "library_model", demo)))
        return TextTower(lambda b: torch.as_tensor(demo.encode(b)), scale, key, batch_size,
                         Path(cache_dir) if cache_dir else None, name="demo text tower")
    from resi_dual.models.registry import library_family

    lib = getattr(model, "library_model", model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    fam = library_family(lib)
    spec = getattr(model, "spec", None) or type(lib).__name__
    if fam is None:
        raise ResiDualError(f"model {spec} is vision-only (no text tower); for zero-shot use class-mean prototypes of a "
                            "train store: `resi-dual zeroshot STORE --train TRAIN_STORE` (in Python: "
                            "classifier_for_source(..., train_source=...))")
    encode, scale, *bias = fam.text(lib, tok)
    lib.eval()  # dropout off: encodings must be deterministic
    return TextTower(encode, scale, _weights_key(model, lib), batch_size, Path(cache_dir) if cache_dir else None,
                     name=f"{fam.name} text tower of {spec}", logit_bias=float(bias[0]) if bias and bias[0] is not None else 0.0)


def token_embedding(model) -> torch.nn.Embedding:
    """The text tower's token-embedding table (what turns token ids into the tower's input vectors):
    the demo's MiniLM, HF CLIP / SigLIP ``text_model``, open_clip ``CLIP`` / ``CustomTextCLIP``, BLIP's text encoder.

    Raises ``ResiDualError`` for a tower whose input embeddings cannot be reached (or no tower)."""
    demo = getattr(model, "text_tower", None)
    inner = getattr(demo, "model", None)
    if inner is not None and hasattr(inner, "get_input_embeddings"):
        return inner.get_input_embeddings()
    lib = getattr(model, "library_model", model)
    candidates = [getattr(getattr(getattr(lib, "text_model", None), "embeddings", None), "token_embedding", None),
                  getattr(lib, "token_embedding", None), getattr(getattr(lib, "text", None), "token_embedding", None)]
    for hf_text in (getattr(getattr(lib, "text", None), "transformer", None), getattr(lib, "text_encoder", None)):
        if hasattr(hf_text, "get_input_embeddings"):  # open_clip's HF text towers, BLIP's BERT
            candidates.append(hf_text.get_input_embeddings())
    for emb in candidates:
        if isinstance(emb, torch.nn.Embedding):
            return emb
    spec = getattr(model, "spec", None) or type(lib).__name__
    raise ResiDualError(f"model {spec}: no text tower that takes input embeddings (CoOp needs HF CLIP, SigLIP, BLIP, open_clip or the demo)")


def has_text_tower(model) -> bool:
    """True when :func:`get_text_tower` would succeed for ``model``."""
    return getattr(model, "text_tower", None) is not None or _library_kind(getattr(model, "library_model", model)) is not None


def clip_tokenizer_from_open_clip_bpe(model_max_length: int = 77):
    """An HF ``CLIPTokenizer`` built offline from open_clip's bundled BPE merges.

    OpenAI's CLIP vocabulary is fully determined by its merge list (256 byte symbols, their
    end-of-word forms, one token per merge, then the two specials), so the HF tokenizer of
    ``openai/clip-vit-*`` can be rebuilt without the hub — used by tests and random-weight checkpoints.
    """
    import gzip

    from open_clip.tokenizer import bytes_to_unicode, default_bpe
    from transformers import CLIPTokenizer

    lines = gzip.open(default_bpe()).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {t: i for i, t in enumerate(vocab_list)}
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
