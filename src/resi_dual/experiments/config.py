"""Grid configuration: typed dataclasses loaded from TOML and validated with one-line errors.

A grid names models, task datasets, the reference dataset, splits, limits, seeds and the settings of
each experiment. Every field is documented where it is declared; ``configs/offline.toml`` and
``configs/paper.toml`` are complete examples. Validation rejects unknown keys (a typo must not
silently fall back to a default) and names the offending key as ``section.key``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from resi_dual.errors import ResiDualError

SPLITS = ("train", "val", "test")
RANKINGS = ("S", "U|T", "U", "random")
ADAPTATION_METHODS = ("zeroshot", "residual", "residual-full", "coarse", "linear", "spectral", "finetune")


@dataclass(frozen=True)
class ModelEntry:
    name: str  # short key used in tables and cell names (e.g. ``clip_b``)
    spec: str  # what ``resi_dual.load_model`` accepts (``hf:…``, ``open_clip:…``, a short name, ``demo``)


@dataclass(frozen=True)
class DatasetEntry:
    name: str  # short key used in tables and cell names (e.g. ``cifar10``)
    spec: str  # what ``resi_dual.data.load_dataset`` accepts, or ``noise`` for uniform-noise images
    root: str | None = None  # where a ``torchvision:`` dataset lives on disk (never downloaded)


@dataclass(frozen=True)
class Limits:
    train: int | None = None  # stratified cap on train images per task dataset (None: all)
    val: int | None = None  # cap on validation images
    test: int | None = None  # cap on test images
    reference: int | None = None  # cap on reference-dataset images (the paper: 80k ImageNet train)
    noise: int = 1000  # number of random-noise control images in the similarity experiment


@dataclass(frozen=True)
class IntrinsicDimSettings:
    variance: float = 0.99  # cumulative explained variance that defines the linear ID
    units: str = "all"  # which units (``all``, ``heads``, ``mlps`` or comma-separated labels)
    twonn_max_samples: int = 50_000  # seeded subsample for TwoNN (the paper: ≤ 50k)
    twonn_discard: float = 0.1  # fraction of largest r2/r1 ratios left out of the TwoNN fit


@dataclass(frozen=True)
class SimilaritySettings:
    variance: float = 0.9  # components kept on each side: enough for this explained variance
    split: str = "train"  # split of each task dataset whose PCA is compared with the reference
    noise: bool = True  # add a uniform-noise image control
    noise_seed: int = 0  # seed of the noise images


@dataclass(frozen=True)
class SpecializationSettings:
    rankings: tuple[str, ...] = RANKINGS  # head rankings to compare
    fractions: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # shares of heads kept (plus top-1)
    random_seeds: int = 10  # seeds of the random ranking
    ablation: str = "mean"  # what replaces dropped heads: ``zero`` or ``mean`` (their mean contribution)
    describe_top: int = 5  # heads whose text descriptions are reported
    describe_terms: int = 5  # descriptions per head (TextSpan iterations)


@dataclass(frozen=True)
class AdaptationSettings:
    methods: tuple[str, ...] = ADAPTATION_METHODS  # rows of the adaptation table
    bases: str = "reference"  # PCA bases for ResiDual: ``reference`` (the paper) or ``task`` (train split)
    max_epochs: int = 30  # the paper: ≤ 30 epochs
    patience: int = 5  # early stopping on val accuracy
    batch_size: int = 64  # the paper: 64
    init: str = "ones"  # λ init: ``ones`` or ``paper`` (1 + N(0, 1))
    finetune_max_epochs: int = 30  # full fine-tuning epochs (lr 1e-5, grad clip 1)
    finetune_seeds: tuple[int, ...] | None = None  # seeds of full fine-tuning (None: the grid's seeds); it reruns the backbone
    products: str = "auto"  # number format of the λ-step's two big products: auto, float32, bfloat16 (TrainConfig)


@dataclass(frozen=True)
class GridConfig:
    """A whole grid. ``models × datasets`` cells share one reference dataset for the PCA bases."""

    models: tuple[ModelEntry, ...]  # the models, in table order
    datasets: tuple[DatasetEntry, ...]  # the task datasets, in table order
    reference: DatasetEntry  # the dataset the bases are fitted on (the paper: ImageNet)
    reference_split: str = "train"  # its split
    limits: Limits = field(default_factory=Limits)
    seeds: tuple[int, ...] = (0,)  # training seeds (adaptation); mean ± std over them
    convention: str = "paper"  # bias / LayerNorm sharing convention of the decomposition
    batch_size: int = 64  # images per traced batch when encoding
    device: str = "cpu"  # where models run (cpu, cuda, cuda:N, mps); not part of any cell's key (see grid.py)
    intrinsic_dim: IntrinsicDimSettings = field(default_factory=IntrinsicDimSettings)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    specialization: SpecializationSettings = field(default_factory=SpecializationSettings)
    adaptation: AdaptationSettings = field(default_factory=AdaptationSettings)
    source: str = ""  # path of the TOML file (not part of any cell's settings)

    def model(self, name: str) -> ModelEntry:
        return next(m for m in self.models if m.name == name)


# -- loading ------------------------------------------------------------------------------------
_TOP_KEYS = {"grid", "models", "datasets", "reference", "limits", "intrinsic-dim", "similarity", "specialization", "adaptation"}


def _check_keys(section: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ResiDualError(f"{section}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ResiDualError(f"{section}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return table


def _typed(section: str, key: str, value: Any, kind: str) -> Any:
    where = f"{section}.{key}" if section else key
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResiDualError(f"{where}: expected an integer, got {value!r}")
        return value
    if kind == "posint":
        value = _typed(section, key, value, "int")
        if value <= 0:
            raise ResiDualError(f"{where}: must be positive, got {value}")
        return value
    if kind == "limit":  # a positive int, or 0 / "all" for no limit
        if value in (0, "all"):
            return None
        return _typed(section, key, value, "posint")
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResiDualError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind == "fraction":
        value = _typed(section, key, value, "float")
        if not 0.0 < value <= 1.0:
            raise ResiDualError(f"{where}: must be in (0, 1], got {value}")
        return value
    if kind == "str":
        if not isinstance(value, str) or not value.strip():
            raise ResiDualError(f"{where}: expected a non-empty string, got {value!r}")
        return value.strip()
    if kind == "bool":
        if not isinstance(value, bool):
            raise ResiDualError(f"{where}: expected true or false, got {value!r}")
        return value
    raise AssertionError(kind)


def _fill(cls, section: str, table: dict, kinds: dict[str, str]) -> Any:
    """Build dataclass ``cls`` from ``table`` (TOML keys use dashes for underscores)."""
    names = {f.name.replace("_", "-"): f.name for f in fields(cls)}
    _check_keys(section, table, set(names))
    kwargs = {}
    for key, value in table.items():
        kind = kinds[names[key]]
        if kind.startswith("list:"):
            if not isinstance(value, list) or not value:
                raise ResiDualError(f"{section}.{key}: expected a non-empty list, got {value!r}")
            kwargs[names[key]] = tuple(_typed(section, f"{key}[{i}]", v, kind[5:]) for i, v in enumerate(value))
        elif kind.startswith("choice:"):
            choices = kind[7:].split("|")
            if value not in choices:
                raise ResiDualError(f"{section}.{key}: {value!r} is not one of {', '.join(choices)}")
            kwargs[names[key]] = value
        else:
            kwargs[names[key]] = _typed(section, key, value, kind)
    return cls(**kwargs)


def _entries(section: str, items: Any, cls) -> tuple:
    if not isinstance(items, list) or not items:
        raise ResiDualError(f"{section}: expected at least one [[{section}]] entry")
    out, seen = [], set()
    for i, item in enumerate(items):
        where = f"{section}[{i}]"
        allowed = {"name", "spec", "root"} if cls is DatasetEntry else {"name", "spec"}
        _check_keys(where, item, allowed)
        if "spec" not in item:
            raise ResiDualError(f"{where}.spec: missing")
        spec = _typed(where, "spec", item["spec"], "str")
        name = _typed(where, "name", item.get("name", spec), "str")
        if name in seen:
            raise ResiDualError(f"{where}.name: duplicate name {name!r}")
        seen.add(name)
        kwargs = {"name": name, "spec": spec}
        if "root" in item:
            kwargs["root"] = _typed(where, "root", item["root"], "str")
        out.append(cls(**kwargs))
    return tuple(out)


def parse_config(data: dict, source: str = "") -> GridConfig:
    """Validate a parsed TOML document and build the :class:`GridConfig`."""
    _check_keys("config", data, _TOP_KEYS)
    for required in ("models", "datasets", "reference"):
        if required not in data:
            raise ResiDualError(f"{required}: missing section")
    grid = _check_keys("grid", data.get("grid", {}), {"seeds", "convention", "batch-size", "device"})
    models = _entries("models", data["models"], ModelEntry)
    datasets = _entries("datasets", data["datasets"], DatasetEntry)
    ref = _check_keys("reference", data["reference"], {"name", "spec", "root", "split"})
    if "spec" not in ref:
        raise ResiDualError("reference.spec: missing")
    reference = DatasetEntry(
        name=_typed("reference", "name", ref.get("name", ref["spec"]), "str"),
        spec=_typed("reference", "spec", ref["spec"], "str"),
        root=_typed("reference", "root", ref["root"], "str") if "root" in ref else None,
    )
    ref_split = ref.get("split", "train")
    if ref_split not in SPLITS:
        raise ResiDualError(f"reference.split: {ref_split!r} is not one of {', '.join(SPLITS)}")
    limits = _fill(Limits, "limits", data.get("limits", {}),
                   {"train": "limit", "val": "limit", "test": "limit", "reference": "limit", "noise": "posint"})
    intrinsic = _fill(IntrinsicDimSettings, "intrinsic-dim", data.get("intrinsic-dim", {}),
                      {"variance": "fraction", "units": "str", "twonn_max_samples": "posint", "twonn_discard": "fraction"})
    similarity = _fill(SimilaritySettings, "similarity", data.get("similarity", {}),
                       {"variance": "fraction", "split": "choice:" + "|".join(SPLITS), "noise": "bool", "noise_seed": "int"})
    spec_ = _fill(SpecializationSettings, "specialization", data.get("specialization", {}),
                  {"rankings": "list:str", "fractions": "list:fraction", "random_seeds": "posint",
                   "ablation": "choice:zero|mean", "describe_top": "int", "describe_terms": "posint"})
    bad = [r for r in spec_.rankings if r not in RANKINGS]
    if bad:
        raise ResiDualError(f"specialization.rankings: {bad[0]!r} is not one of {', '.join(RANKINGS)}")
    adaptation = _fill(AdaptationSettings, "adaptation", data.get("adaptation", {}),
                       {"methods": "list:str", "bases": "choice:reference|task", "max_epochs": "posint",
                        "patience": "posint", "batch_size": "posint", "init": "choice:ones|paper",
                        "finetune_max_epochs": "posint", "finetune_seeds": "list:int",
                        "products": "choice:auto|float32|bfloat16"})
    bad = [m for m in adaptation.methods if m not in ADAPTATION_METHODS]
    if bad:
        raise ResiDualError(f"adaptation.methods: {bad[0]!r} is not one of {', '.join(ADAPTATION_METHODS)}")
    seeds = tuple(_typed("grid", f"seeds[{i}]", s, "int") for i, s in enumerate(grid.get("seeds", [0])))
    if not seeds:
        raise ResiDualError("grid.seeds: expected at least one seed")
    convention = grid.get("convention", "paper")
    if convention not in ("paper", "centred"):
        raise ResiDualError(f"grid.convention: {convention!r} is not one of paper, centred")
    from resi_dual.models.loading import check_device_string

    # the string is checked here; whether this machine has the device is checked when a model loads,
    # so --status and --encode-commands work on a machine without it
    device = check_device_string(_typed("grid", "device", grid.get("device", "cpu"), "str"), "grid.device")
    return GridConfig(
        models=models, datasets=datasets, reference=reference, reference_split=ref_split, limits=limits,
        seeds=seeds, convention=convention, device=device,
        batch_size=_typed("grid", "batch-size", grid.get("batch-size", 64), "posint"),
        intrinsic_dim=intrinsic, similarity=similarity, specialization=spec_, adaptation=adaptation, source=source,
    )


def load_config(path: str | Path) -> GridConfig:
    """Read and validate a grid TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ResiDualError(f"grid config {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ResiDualError(f"{path}: not valid TOML ({e})") from None
    return parse_config(data, str(path))
