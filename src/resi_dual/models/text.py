"""Text towers: one ``encode(list[str]) -> (n, d_out)`` interface over every family with a text side.

Supported: HF ``CLIPModel`` (``get_text_features``), open_clip ``CLIP``/``CustomTextCLIP``
(``encode_text``), HF ``BlipForImageTextRetrieval`` (its text encoder in ITC mode — no image
cross-attention — and ``text_proj`` on the CLS token, as the model does with ``use_itm_head=False``),
and the bundled demo model (its ``text_tower`` attribute). Embeddings are unnormalised, float32, in
the joint image–text space, and cached per (model weights hash, text list) in memory and optionally
on disk as safetensors.
"""

from __future__ import annotations

import hashlib
import math
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


# -- per-family encoders ----------------------------------------------------------------------

def _check_ids(ids: torch.Tensor, vocab_size: int | None) -> torch.Tensor:
    """A tokenizer that does not belong to the checkpoint would index past the embedding table."""
    if vocab_size is not None and ids.numel() and int(ids.max()) >= vocab_size:
        raise ResiDualError(
            f"the tokenizer produced token id {int(ids.max())} but the text tower has {vocab_size} tokens: "
            "tokenizer and checkpoint do not match"
        )
    return ids


def _hf_tokenizer(model, tokenizer, family: str) -> Callable[[list[str]], tuple[torch.Tensor, torch.Tensor]]:
    """texts -> (input_ids, attention_mask) on the model's device, checked against its vocabulary."""
    if tokenizer is None:
        raise ResiDualError(f"{family} model has no tokenizer: load it from a checkpoint directory with tokenizer files")
    text_cfg = model.config.text_config
    max_len, vocab = int(text_cfg.max_position_embeddings), int(text_cfg.vocab_size)
    device = next(model.parameters()).device

    def tokenize(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tok = tokenizer(batch, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _check_ids(tok["input_ids"], vocab).to(device), tok["attention_mask"].to(device)

    return tokenize


def _hf_clip_encoder(model, tokenizer) -> Callable[[list[str]], torch.Tensor]:
    tokenize = _hf_tokenizer(model, tokenizer, "HF CLIP")

    def encode(batch: list[str]) -> torch.Tensor:
        ids, mask = tokenize(batch)
        out = model.get_text_features(input_ids=ids, attention_mask=mask)
        # transformers ≥ 5 returns a model output whose pooler_output is the projected embedding
        return out if isinstance(out, torch.Tensor) else out.pooler_output

    return encode


def _open_clip_trimmed_forward(model) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``ids -> embeddings`` that runs open_clip's text tower on the batch's real tokens only, when that
    is exact: a causal mask (no position reads a later one) and pooling at the end-of-text or first
    token, no appended class token. None otherwise (SigLIP's bidirectional towers pool the last
    padded position, so they run at their full context)."""
    from open_clip.transformer import TextTransformer, text_global_pool

    tower = model.text if isinstance(getattr(model, "text", None), TextTransformer) else model
    pool = getattr(tower, "pool_type", None) or getattr(tower, "text_pool_type", None)
    eos = getattr(tower, "eos_id", None) if tower is not model else getattr(model, "text_eos_id", None)
    mask = getattr(tower, "attn_mask", None)
    if getattr(tower, "cls_emb", None) is not None or pool not in ("argmax", "eos", "first") or mask is None:
        return None
    pad = int(getattr(tower, "pad_id", 0))

    def forward(ids: torch.Tensor) -> torch.Tensor:
        real = (ids != pad).any(0).nonzero()
        n = int(real[-1]) + 1 if real.numel() else 1
        ids = ids[:, :n]
        cast = tower.transformer.get_cast_dtype()
        x = tower.token_embedding(ids).to(cast) + tower.positional_embedding[:n].to(cast)
        x = tower.ln_final(tower.transformer(x, attn_mask=mask[:n, :n]))
        x = text_global_pool(x, ids, pool, eos_token_id=eos)
        proj = tower.text_projection
        if proj is None:
            return x
        return proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj

    return forward


def _open_clip_encoder(model, tokenizer) -> Callable[[list[str]], torch.Tensor]:
    if tokenizer is None:
        from open_clip.tokenizer import SimpleTokenizer

        tokenizer = SimpleTokenizer(context_length=int(getattr(model, "context_length", 77)))
    device = next(model.parameters()).device
    table = getattr(model, "token_embedding", None)
    vocab = int(table.num_embeddings) if isinstance(table, torch.nn.Embedding) else None
    trimmed = _open_clip_trimmed_forward(model)

    def encode(batch: list[str]) -> torch.Tensor:
        ids = _check_ids(tokenizer(batch), vocab).to(device)
        return trimmed(ids) if trimmed is not None else model.encode_text(ids, normalize=False)

    return encode


def _blip_encoder(model, tokenizer) -> Callable[[list[str]], torch.Tensor]:
    tokenize = _hf_tokenizer(model, tokenizer, "BLIP")

    def encode(batch: list[str]) -> torch.Tensor:
        ids, mask = tokenize(batch)
        # ITC mode: text encoder without image cross-attention, projection of the CLS token
        hidden = model.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return model.text_proj(hidden[:, 0, :])

    return encode


def _library_kind(lib) -> str | None:
    """Which text path a library model takes, by type (never by name strings). Only the library the
    object comes from is imported (importing open_clip for an HF model costs seconds)."""
    module = type(lib).__module__ or ""
    if module.startswith("transformers"):
        from transformers import BlipForImageTextRetrieval, CLIPModel

        if isinstance(lib, CLIPModel):
            return "hf-clip"
        if isinstance(lib, BlipForImageTextRetrieval):
            return "blip"
    elif module.startswith("open_clip"):
        import open_clip

        if isinstance(lib, (open_clip.CLIP, open_clip.CustomTextCLIP)):
            return "open_clip"
    return None


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
    lib = getattr(model, "library_model", model)
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    kind = _library_kind(lib)
    spec = getattr(model, "spec", None) or type(lib).__name__
    if kind is None:
        raise ResiDualError(f"model {spec} has no text tower; use class-mean prototypes (classifier_for_source(..., train_source=...))")
    if kind == "hf-clip":
        encode, scale = _hf_clip_encoder(lib, tok), float(lib.logit_scale.detach().exp())
    elif kind == "open_clip":
        encode, scale = _open_clip_encoder(lib, tok), float(lib.logit_scale.detach().exp())
    else:
        # HF's retrieval model has no learned temperature; BLIP's is initialised at the config value
        encode, scale = _blip_encoder(lib, tok), math.exp(float(lib.config.logit_scale_init_value))
    lib.eval()  # dropout off: encodings must be deterministic
    return TextTower(encode, scale, _weights_key(model, lib), batch_size, Path(cache_dir) if cache_dir else None,
                     name=f"{kind} text tower of {spec}")


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
