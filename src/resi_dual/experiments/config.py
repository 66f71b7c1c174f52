"""Grid configuration: typed dataclasses loaded from TOML and validated with one-line errors.

A grid names models, task datasets, the reference dataset, splits, limits, seeds and the settings of
each experiment. Every field is documented where it is declared; ``configs/offline.toml`` and
``configs/paper.toml`` are complete examples. Validation rejects unknown keys (a typo must not
silently fall back to a default) and names the offending key as ``section.key``.
"""

from __future__ import annotations

import tomllib
import types
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Callable, Literal, Union, get_args, get_origin, get_type_hints

from resi_dual.adapters.adapter import Init
from resi_dual.adapters.protocol import Method
from resi_dual.adapters.training import Products, TrainConfig
from resi_dual.core.units import Convention
from resi_dual.data.base import Split
from resi_dual.errors import ResiDualError
from resi_dual.store.disk import StoreDtype
from resi_dual.zeroshot.specialize import Ablation, Protocol, RankingMethod


@dataclass(frozen=True)
class Rule:
    """A constraint on a value beyond its type, attached to a field with ``Annotated``."""

    ok: Callable[[Any], bool]
    says: str  # the complaint, e.g. ``must be positive``


#: ``0`` or ``"all"`` in a limit field means no limit (None)
NO_LIMIT = "no-limit"
PosInt = Annotated[int, Rule(lambda v: v > 0, "must be positive")]
Fraction = Annotated[float, Rule(lambda v: 0.0 < v <= 1.0, "must be in (0, 1]")]
Limit = Annotated[Union[int, None], Rule(lambda v: v > 0, "must be positive"), NO_LIMIT]
Share = Annotated[float, Rule(lambda v: 0.0 <= v < 1.0, "must be in [0, 1)")]

#: rows of the adaptation table, in table order: every variant, peer and WiSE-FT
ADAPTATION_METHODS: tuple[str, ...] = ("zeroshot", "residual", "residual-keep", "residual-full", "coarse", "linear",
                                       "spectral", "linear-probe", "lp++", "tip-adapter", "tip-adapter-f", "clip-adapter",
                                       "coop", "lora", "finetune", "wise-ft")
RANKINGS: tuple[str, ...] = get_args(RankingMethod)
SPLITS: tuple[str, ...] = get_args(Split)


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
    train: Limit = None  # stratified cap on train images per task dataset (None: all)
    val: Limit = None  # cap on validation images
    test: Limit = None  # cap on test images
    reference: Limit = None  # cap on reference-dataset images (the paper: 80k ImageNet train)
    noise: PosInt = 1000  # number of random-noise control images in the similarity experiment


@dataclass(frozen=True)
class IntrinsicDimSettings:
    variance: Fraction = 0.99  # cumulative explained variance that defines the linear ID
    units: str = "all"  # which units (``all``, ``heads``, ``mlps`` or comma-separated labels)
    twonn_max_samples: PosInt = 50_000  # seeded subsample for TwoNN (the paper: ≤ 50k)
    twonn_discard: Share = 0.1  # fraction of the largest μ = r2/r1 left out of the TwoNN fit (the paper: 0.1)


@dataclass(frozen=True)
class SimilaritySettings:
    variance: Fraction = 0.9  # components kept on each side: enough for this explained variance
    split: Split = "train"  # split of each task dataset whose PCA is compared with the reference
    noise: bool = True  # add a uniform-noise image control
    noise_seed: int = 0  # seed of the noise images


@dataclass(frozen=True)
class SpecializationSettings:
    rankings: tuple[RankingMethod, ...] = RANKINGS  # head rankings to compare
    fractions: tuple[Fraction, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)  # shares of heads kept (plus top-1)
    random_seeds: PosInt = 10  # seeds of the random ranking
    ablation: Ablation = "mean"  # what replaces dropped heads: ``zero`` or ``mean`` (their mean contribution)
    protocol: Protocol = "project"  # ``paper``: the authors' experiment (only the top heads kept, every other unit ablated)
    describe_top: int = 5  # heads whose text descriptions are reported
    describe_terms: PosInt = 5  # descriptions per head (TextSpan iterations)


@dataclass(frozen=True)
class AdaptationSettings:
    methods: tuple[Method, ...] = ADAPTATION_METHODS  # rows of the adaptation table: variants, peers, wise-ft
    lr: Literal["sweep", "paper"] = "sweep"  # ``sweep``: every method picks its lr on val (4 candidates, 3 for finetune/lora; lp++: Lipschitz steps); ``paper``: the paper's lrs
    shots: tuple[PosInt, ...] | None = None  # few-shot protocol: K per class for each K (val capped at min(K, 4)); None: all
    bases: Literal["reference", "task"] = "reference"  # PCA bases for ResiDual: ``reference`` (the paper) or ``task`` (train split)
    max_epochs: PosInt = TrainConfig.max_epochs  # the paper: ≤ 30 epochs
    patience: PosInt = TrainConfig.patience  # early stopping on val accuracy
    batch_size: PosInt = TrainConfig.batch_size  # the paper: 64
    init: Init = "ones"  # λ init: ``ones`` or ``paper`` (1 + N(0, 1))
    finetune_max_epochs: PosInt = TrainConfig.max_epochs  # epochs of the methods that run a tower per step (finetune, lora, coop)
    finetune_seeds: tuple[int, ...] | None = None  # their seeds (None: the grid's seeds)
    tower_datasets: tuple[str, ...] | None = None  # the datasets those methods run on (None: every dataset)
    products: Products = TrainConfig.products  # number format of the λ-step's two big products: auto, float32, bfloat16 (TrainConfig)


@dataclass(frozen=True)
class GridConfig:
    """A whole grid. ``models × datasets`` cells share one reference dataset for the PCA bases."""

    models: tuple[ModelEntry, ...]  # the models, in table order
    datasets: tuple[DatasetEntry, ...]  # the task datasets, in table order
    reference: DatasetEntry  # the dataset the bases are fitted on (the paper: ImageNet)
    reference_split: Split = "train"  # its split
    limits: Limits = field(default_factory=Limits)
    seeds: tuple[int, ...] = (0,)  # training seeds (adaptation); mean ± std over them
    convention: Convention = "paper"  # bias / LayerNorm sharing convention of the decomposition
    batch_size: PosInt = 64  # images per traced batch when encoding
    store_dtype: StoreDtype = "float32"  # storage of the raw encodings in the stores (float16 halves the disk)
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
#: the GridConfig fields that ``[grid]`` sets
_GRID_KEYS = ("seeds", "convention", "batch_size", "store_dtype", "device")


def _check_keys(section: str, table: Any, allowed: set[str]) -> dict:
    if not isinstance(table, dict):
        raise ResiDualError(f"{section}: expected a table, got {type(table).__name__}")
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ResiDualError(f"{section}.{unknown[0]}: unknown key (allowed: {', '.join(sorted(allowed))})")
    return table


def _rules(hint: Any) -> tuple[Any, tuple]:
    """(bare type, Annotated metadata) of a field annotation."""
    if get_origin(hint) is Annotated:
        base, *extras = get_args(hint)
        return base, tuple(extras)
    return hint, ()


def _optional(hint: Any) -> Any | None:
    """``X`` for ``X | None``, else None."""
    if get_origin(hint) in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(get_args(hint)) == 2:
            return args[0]
    return None


def convert(where: str, value: Any, hint: Any) -> Any:
    """Check a TOML ``value`` against a field annotation (Literal, tuple, ``| None``, Annotated rules)."""
    hint, extras = _rules(hint)
    if NO_LIMIT in extras and value in (0, "all"):
        return None
    inner = _optional(hint)
    if inner is not None:
        return convert(where, value, Annotated[(inner, *extras)] if extras else inner)
    origin = get_origin(hint)
    if origin is Literal:
        choices = get_args(hint)
        if value not in choices:
            raise ResiDualError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    elif origin is tuple:
        if not isinstance(value, list) or not value:
            raise ResiDualError(f"{where}: expected a non-empty list, got {value!r}")
        value = tuple(convert(where, v, get_args(hint)[0]) for v in value)
    elif hint is bool:
        if not isinstance(value, bool):
            raise ResiDualError(f"{where}: expected true or false, got {value!r}")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ResiDualError(f"{where}: expected an integer, got {value!r}")
    elif hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ResiDualError(f"{where}: expected a number, got {value!r}")
        value = float(value)
    elif hint is str:
        if not isinstance(value, str) or not value.strip():
            raise ResiDualError(f"{where}: expected a non-empty string, got {value!r}")
        value = value.strip()
    else:
        raise AssertionError(f"{where}: no check for {hint!r}")
    for rule in extras:
        if isinstance(rule, Rule) and not rule.ok(value):
            raise ResiDualError(f"{where}: {rule.says}, got {value}")
    return value


def _values(cls, section: str, table: Any, only: tuple[str, ...] | None = None, extra: tuple[str, ...] = ()) -> dict:
    """Validated keyword arguments of dataclass ``cls`` from ``table`` (TOML keys use dashes).

    ``only`` restricts the fields a table may set; keys in ``extra`` are allowed and left to the caller.
    """
    hints = get_type_hints(cls, include_extras=True)
    names = {f.name.replace("_", "-"): f.name for f in fields(cls) if only is None or f.name in only}
    _check_keys(section, table, set(names) | set(extra))
    return {names[k]: convert(f"{section}.{k}", v, hints[names[k]]) for k, v in table.items() if k in names}


def _fill(cls, section: str, table: Any) -> Any:
    return cls(**_values(cls, section, table))


def _entries(section: str, items: Any, cls) -> tuple:
    if not isinstance(items, list) or not items:
        raise ResiDualError(f"{section}: expected at least one [[{section}]] entry")
    out, seen = [], set()
    for i, item in enumerate(items):
        out.append(_entry(f"{section}[{i}]", item, cls))
        if out[-1].name in seen:
            raise ResiDualError(f"{section}[{i}].name: duplicate name {out[-1].name!r}")
        seen.add(out[-1].name)
    return tuple(out)


def _entry(where: str, item: Any, cls, extra: tuple[str, ...] = ()):
    """A model or dataset entry; ``name`` defaults to ``spec``."""
    _check_keys(where, item, {f.name for f in fields(cls)} | set(extra))
    if "spec" not in item:
        raise ResiDualError(f"{where}.spec: missing")
    kwargs = _values(cls, where, {**item, "name": item.get("name", item["spec"])}, extra=extra)
    return cls(**kwargs)


def parse_config(data: dict, source: str = "") -> GridConfig:
    """Validate a parsed TOML document and build the :class:`GridConfig`."""
    _check_keys("config", data, _TOP_KEYS)
    for required in ("models", "datasets", "reference"):
        if required not in data:
            raise ResiDualError(f"{required}: missing section")
    grid = _values(GridConfig, "grid", data.get("grid", {}), only=_GRID_KEYS)
    ref = _check_keys("reference", data["reference"], {"name", "spec", "root", "split"})
    hints = get_type_hints(GridConfig, include_extras=True)
    if "split" in ref:
        grid["reference_split"] = convert("reference.split", ref["split"], hints["reference_split"])
    from resi_dual.models.loading import check_device_string

    # the string is checked here; whether this machine has the device is checked when a model loads,
    # so --status and --encode-commands work on a machine without it
    if "device" in grid:
        grid["device"] = check_device_string(grid["device"], "grid.device")
    datasets = _entries("datasets", data["datasets"], DatasetEntry)
    adaptation = _fill(AdaptationSettings, "adaptation", data.get("adaptation", {}))
    unknown = sorted(set(adaptation.tower_datasets or ()) - {d.name for d in datasets})
    if unknown:
        raise ResiDualError(f"adaptation.tower-datasets: {unknown[0]!r} is not the name of a [[datasets]] entry")
    return GridConfig(
        models=_entries("models", data["models"], ModelEntry),
        datasets=datasets,
        reference=_entry("reference", ref, DatasetEntry, extra=("split",)),
        limits=_fill(Limits, "limits", data.get("limits", {})),
        intrinsic_dim=_fill(IntrinsicDimSettings, "intrinsic-dim", data.get("intrinsic-dim", {})),
        similarity=_fill(SimilaritySettings, "similarity", data.get("similarity", {})),
        specialization=_fill(SpecializationSettings, "specialization", data.get("specialization", {})),
        adaptation=adaptation,
        source=source, **grid,
    )


def load_config(path: str | Path) -> GridConfig:
    """Read and validate a grid TOML file."""
    from resi_dual.files import read_text_file

    path = Path(path)
    if not path.is_file():
        raise ResiDualError(f"grid config {path} not found")
    try:
        data = tomllib.loads(read_text_file(path, "grid config"))
    except tomllib.TOMLDecodeError as e:
        raise ResiDualError(f"{path}: not valid TOML ({e})") from None
    return parse_config(data, str(path))
