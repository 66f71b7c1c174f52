"""The model-family registry (the pattern of timm's ``_registry.py``).

Each family is one module that registers itself with :func:`register_family`, decorating its
tracer class (a :class:`~resi_dual.models.tracing.base.TracedModel` subclass: the layout, the
library's own forward and the hashed weights). The registration names everything else about the
family: the spec scheme and loader that build it (``hf:``, ``open_clip:``, ``demo``), how the loader
recognises it (HF ``model_type`` values, or a predicate on the built open_clip model), its
preprocessing fallback, its text tower, where its weights live on disk (the fingerprint of a spec
without loading it) and its short names. :func:`list_models` lists the registered families.

Adding a family is one module listed in :data:`FAMILY_MODULES` plus one row in the random-weight
test table (``tests/models/tracing_models.py``). ``hf:`` and ``open_clip:`` families register through
their scheme's helper (:func:`resi_dual.models.hf.register_hf_family`,
:func:`resi_dual.models.tracing.openclip.register_open_clip_family`), which fills in the shared loader,
weights path and text tower, so a family module declares only what differs.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from resi_dual.errors import ResiDualError

#: modules that register families; importing one registers its families (order = lookup order)
FAMILY_MODULES = (
    "resi_dual.models.tracing.hf_clip",
    "resi_dual.models.tracing.blip",
    "resi_dual.models.tracing.vit",
    "resi_dual.models.tracing.dinov2",
    "resi_dual.models.tracing.dinov2_registers",
    "resi_dual.models.tracing.openclip",
    "resi_dual.models.tracing.timm_vit",
    "resi_dual.models.tracing.siglip",
    "resi_dual.models.demo",
)

#: (spec, text after the scheme, convention, torch device) -> TracedModel on that device
Loader = Callable[[str, str, str, object], object]
#: (library model, tokenizer or None) -> (encode(list[str]) -> (b, d_out), logit scale[, logit bias])
TextEncoder = Callable[[object, object], tuple[Callable, float]]


@dataclass(frozen=True, repr=False)
class Family:
    """Everything about one model family.

    Attributes:
        name: the family name, also ``Composition.family`` of its traced models.
        summary: one line saying what it covers.
        scheme: the spec prefix it loads through (``hf``, ``open_clip``, ``demo``).
        load: the scheme's loader, (spec, rest of the spec, convention, device) -> TracedModel.
        tracer: the TracedModel subclass (layout, own forward, hashed weights).
        model_types: ``hf`` scheme: the config ``model_type`` values it claims.
        library_class: ``hf`` scheme: (config, saved architectures, spec) -> the transformers class to load.
        accepts: ``open_clip`` scheme: whether it traces a built library model.
        mean_std: preprocessing fallback (mean, std) for checkpoints without an image processor.
        text: its text encoder, or None for vision-only families.
        text_types: () -> library classes that carry that text tower (checked with isinstance).
        library_module: the package its library objects come from (only that one is imported).
        short_names: short name -> full spec.
        weights_path: rest of the spec -> the file or folder holding its weights (or None: hub only).
    """

    name: str
    summary: str
    scheme: str
    load: Loader
    tracer: type | None = None
    model_types: tuple[str, ...] = ()
    library_class: Callable | None = None
    accepts: Callable[[object], bool] | None = None
    mean_std: tuple | None = None
    text: TextEncoder | None = None
    text_types: Callable[[], tuple[type, ...]] | None = None
    library_module: str = ""
    short_names: Mapping[str, str] = field(default_factory=dict)
    weights_path: Callable[[str], Path | None] | None = None

    def __repr__(self) -> str:
        names = ", ".join(f"{k}={v}" for k, v in self.short_names.items())
        return f"Family({self.name!r}, {self.spec_form}{'; ' + names if names else ''})"

    @property
    def spec_form(self) -> str:
        """How a spec of this family is written."""
        return {"hf": "hf:<hub id or dir>", "open_clip": "open_clip:<arch>[@<tag or file>] | <dir> | hf-hub:<repo>",
                "demo": "demo | demo:<folder>"}.get(self.scheme, f"{self.scheme}:…")


_FAMILIES: dict[str, Family] = {}
_LOADED = False


def register_family(**fields) -> Callable[[type], type]:
    """Class decorator: register the decorated tracer as family ``fields['name']`` (see :class:`Family`)."""

    def decorate(tracer: type) -> type:
        fam = Family(tracer=tracer, **fields)
        if fam.name in _FAMILIES and _FAMILIES[fam.name].tracer is not tracer:
            raise ResiDualError(f"model family {fam.name!r} is registered twice")
        taken = {s: f.name for f in _FAMILIES.values() if f.name != fam.name for s in f.short_names}
        clash = sorted(set(fam.short_names) & set(taken))
        if clash:
            raise ResiDualError(f"short name {clash[0]!r} of {fam.name} is already taken by {taken[clash[0]]}")
        same = [f for f in _FAMILIES.values() if f.scheme == fam.scheme and f.load is not fam.load]
        if same:
            raise ResiDualError(f"family {fam.name} loads {fam.scheme}: specs differently from {same[0].name}")
        _FAMILIES[fam.name] = fam
        tracer.family = fam.name
        return tracer

    return decorate


def families() -> list[Family]:
    """Every registered family, in lookup order."""
    global _LOADED
    if not _LOADED:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _LOADED = True
    order = {m: i for i, m in enumerate(FAMILY_MODULES)}
    return sorted(_FAMILIES.values(), key=lambda f: order.get(f.tracer.__module__, len(order)))


def get_family(name: str) -> Family:
    """The family called ``name``; raises naming the registered ones."""
    for fam in families():
        if fam.name == name:
            return fam
    raise ResiDualError(f"unknown model family {name!r}; registered: {supported()}")


def supported(scheme: str | None = None) -> str:
    """Comma-separated names of the registered families (of one scheme), for error messages."""
    return ", ".join(f.name for f in families() if scheme is None or f.scheme == scheme)


def list_models() -> list[Family]:
    """The registered model families: name, summary, spec form and short names (``{name: spec}``)."""
    return families()


def short_names() -> dict[str, str]:
    """Every short name of every family and the full spec it resolves to."""
    return {s: spec for fam in families() for s, spec in fam.short_names.items()}


def resolve_spec(spec: str) -> str:
    """Expand a short name; other specs pass through unchanged (stripped)."""
    spec = spec.strip()
    return short_names().get(spec, spec)


def split_spec(spec: str) -> tuple[Family, str]:
    """(a family of the spec's scheme, the rest of the spec) for a full (resolved) spec."""
    scheme, sep, rest = spec.partition(":")
    for fam in families():
        if fam.scheme == scheme and (sep or fam.scheme == "demo"):
            return fam, rest
    schemes = sorted({f.spec_form for f in families()})
    raise ResiDualError(
        f"unknown model spec {spec!r}: expected {', '.join(schemes)}, or one of {', '.join(short_names())}"
    )


def load_spec(spec: str, convention: str, device):
    """The TracedModel of a stripped spec (short names expanded), built by its scheme's loader on ``device``."""
    fam, rest = split_spec(resolve_spec(spec))
    return fam.load(spec, rest, convention, device)


def build_tracer(fam: Family, spec: str, *args, **kwargs):
    """``fam.tracer(spec, *args, **kwargs)``; a model its family cannot decompose exactly raises one
    line that says why and names the supported families."""
    try:
        return fam.tracer(spec, *args, **kwargs)
    except ResiDualError as e:
        raise ResiDualError(f"{e} (supported families: {supported()})") from None


def looks_like_path(source: str) -> bool:
    """True for strings that can only be a filesystem path (not an ``org/name`` hub id), and for an
    ``a/b`` whose ``a`` is a local directory (a relative path, never retried on the hub)."""
    if source.startswith(("/", "./", "../", "~")) or source.count("/") > 1 or "\\" in source:
        return True
    head = source.split("/", 1)[0]
    return "/" in source and Path(head).is_dir()


def local_weights(rest: str) -> Path:
    """The file or folder of a local ``hf:``/``open_clip:`` spec (the part after any ``@``); a hub id
    gives a path that does not exist."""
    return Path(rest.partition("@")[2] or rest).expanduser()


def weights_fingerprint(spec: str) -> str:
    """What identifies a model's weights without loading it: the full spec, plus for local
    checkpoints the name, size and modification time of every file (so retrained weights differ)."""
    full = resolve_spec(spec)
    fam, rest = split_spec(full)
    path = fam.weights_path(rest) if fam.weights_path else None
    if path is None or not path.exists():
        return full
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    h = hashlib.sha256(full.encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.relative_to(path.parent)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return f"{full}#{h.hexdigest()[:16]}"


def library_family(lib) -> Family | None:
    """The family whose text tower the library object ``lib`` carries, by type (never by name).
    Only the library ``lib`` comes from is imported (importing open_clip for an HF model costs seconds)."""
    module = type(lib).__module__ or ""
    for fam in families():
        if fam.text is not None and fam.library_module and module.startswith(fam.library_module):
            if isinstance(lib, fam.text_types()):
                return fam
    return None
