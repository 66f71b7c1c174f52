"""The central vocabulary: residual units and the composition of a model's output.

A *unit* is one additive term of the CLS residual stream of a pre-LN vision transformer:
the embedding (``emb``), each MLP (``L3.mlp``) and each attention head (``L3H7``). Attention-pooled
towers (SigLIP, docs/DESIGN.md §11) add one more, the pooling head's MLP (``pool``).
A *composition* is the ordered list of units of one model plus the convention used to share
the LayerNorm centring and the biases among them (docs/DESIGN.md §3). Both round-trip through JSON.
"""

from __future__ import annotations

import json
import numbers
import re
from dataclasses import asdict, dataclass, field
from typing import Iterable, Literal, get_args

from resi_dual.errors import ResiDualError

UnitKind = Literal["emb", "mlp", "head", "pool"]

#: How LayerNorm's mean term and the biases are split across units.
#: ``paper``: each head gets b_o/H; the μ and β (and projection-bias) terms are shared evenly,
#:   1/(2L+1) per block (embedding, each MLP, each attention layer), each head 1/((2L+1)H) of it.
#: ``centred``: each unit is centred by its own feature mean (LN centring is the linear map
#:   I − 11ᵀ/D, so this is also exact); β and projection bias are shared as in ``paper``.
Convention = Literal["paper", "centred"]
CONVENTIONS: tuple[str, ...] = get_args(Convention)

#: shorthand -> the unit kind it selects (``all``: every unit, ``none``: nothing)
_SHORTHANDS: dict[str, str] = {"all": "all", "heads": "head", "mlps": "mlp", "emb": "emb", "pool": "pool", "none": "none"}

#: How the output is read from the residual stream.
#: ``cls``: a linear read of one token (the CLS token), so a unit's contribution is affine in its raw
#:   term at that token, ``[x/σ, 1/σ, μ/σ]`` (d_head+2 numbers per head, docs/DESIGN.md §4).
#: ``pooled``: an attention probe over all tokens after the final LayerNorm (σ differs per token),
#:   so each unit is kept as its pooled contribution in output space (d_out numbers, docs/DESIGN.md §11).
Geometry = Literal["cls", "pooled"]
GEOMETRIES: tuple[str, ...] = get_args(Geometry)

_LABEL_RE = re.compile(r"^(?:emb|pool|L(\d+)\.mlp|L(\d+)H(\d+))$")


@dataclass(frozen=True, order=True)
class Unit:
    """One residual unit. ``layer`` is -1 for the embedding; ``head`` is -1 unless kind is ``head``."""

    kind: UnitKind
    layer: int = -1
    head: int = -1

    @property
    def label(self) -> str:
        if self.kind in ("emb", "pool"):
            return self.kind
        if self.kind == "mlp":
            return f"L{self.layer}.mlp"
        return f"L{self.layer}H{self.head}"

    @classmethod
    def from_label(cls, label: str) -> "Unit":
        m = _LABEL_RE.match(label.strip())
        if not m:
            raise ResiDualError(f"not a unit label: {label!r} (expected 'emb', 'pool', 'L<l>.mlp' or 'L<l>H<h>')")
        if label.strip() in ("emb", "pool"):
            return cls(label.strip())
        if m.group(1) is not None:
            return cls("mlp", int(m.group(1)))
        return cls("head", int(m.group(2)), int(m.group(3)))

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.label


def standard_units(n_layers: int, n_heads: int) -> list[Unit]:
    """Units in residual-stream order: ``emb``, then per layer its heads, then its MLP."""
    units = [Unit("emb")]
    for layer in range(n_layers):
        units.extend(Unit("head", layer, h) for h in range(n_heads))
        units.append(Unit("mlp", layer))
    return units


@dataclass(frozen=True)
class Composition:
    """Ordered units of one model and how its output is split among them.

    Attributes:
        model_id: the spec string the model was loaded from (e.g. ``hf:openai/clip-vit-base-patch16``).
        family: tracer family (``hf-clip``, ``open_clip``, ``blip``, ``vit``, ``dinov2`` …).
        n_layers, n_heads, d_model, d_head, d_out: read from the model.
        convention: see :data:`Convention`.
        units: all units, in residual-stream order (then ``pool`` for the pooled geometry).
        geometry: see :data:`Geometry`.
    """

    model_id: str
    family: str
    n_layers: int
    n_heads: int
    d_model: int
    d_head: int
    d_out: int
    convention: str = "paper"
    units: tuple[Unit, ...] = field(default_factory=tuple)
    geometry: str = "cls"

    def __post_init__(self) -> None:
        if self.convention not in CONVENTIONS:
            raise ResiDualError(f"unknown convention {self.convention!r}; choose one of {', '.join(CONVENTIONS)}")
        if self.geometry not in GEOMETRIES:
            raise ResiDualError(f"unknown geometry {self.geometry!r}; choose one of {', '.join(GEOMETRIES)}")
        if not self.units:
            extra = [Unit("pool")] if self.pooled else []
            object.__setattr__(self, "units", tuple(standard_units(self.n_layers, self.n_heads) + extra))

    # -- stored layout --------------------------------------------------------------------
    @property
    def pooled(self) -> bool:
        return self.geometry == "pooled"

    def dense_slot(self, unit: Unit) -> int:
        """Index of an emb / MLP / pool unit in the stored ``dense`` array (embedding, MLPs, pool)."""
        return 0 if unit.kind == "emb" else self.n_layers + 1 if unit.kind == "pool" else 1 + unit.layer

    @property
    def dense_slots(self) -> int:
        """Rows of the stored ``dense`` array per sample: 1+L (cls) or 2+L (pooled)."""
        return self.n_layers + 1 + int(self.pooled)

    def width(self, kind: str) -> int:
        """Width of a unit's stored raw encoding: d_head / d_model (cls) or d_out (pooled)."""
        if self.pooled:
            return self.d_out
        return self.d_head if kind == "head" else self.d_model

    # -- lookup -------------------------------------------------------------------------
    @property
    def labels(self) -> list[str]:
        return [u.label for u in self.units]

    def __len__(self) -> int:
        return len(self.units)

    def index(self, unit: Unit | str) -> int:
        label = unit if isinstance(unit, str) else unit.label
        try:
            return self.labels.index(label)
        except ValueError:
            raise ResiDualError(f"unit {label!r} is not part of model {self.model_id!r}") from None

    def select(self, units: Iterable[Unit | str | int] | str | None = None, require: bool = False) -> list[int]:
        """Indices of the requested units: the one unit selection of the package.

        ``units``: None (all); a string of comma-separated tokens, each a shorthand (``all``,
        ``heads``, ``mlps``, ``emb``; ``none`` for nothing) or a label (``L3H7``, ``L3.mlp``); or a
        sequence of labels, :class:`Unit` objects or indices. Shorthands expand in composition order,
        explicit units keep the order given; a unit selected twice appears once. ``require``: raise
        when nothing is selected.
        """
        if units is None:
            out = list(range(len(self.units)))
        else:
            tokens = [t.strip() for t in units.split(",")] if isinstance(units, str) else list(units)
            out, seen = [], set()
            for t in tokens:
                for i in self._token(t):
                    if i not in seen:
                        seen.add(i)
                        out.append(i)
        if require and not out:
            raise ResiDualError(f"no units selected by {units!r}")
        return out

    def select_labels(self, units: Iterable[Unit | str | int] | str | None) -> list[str]:
        """Labels of :meth:`select` in composition order; None or ``""`` selects nothing here."""
        return [self.units[i].label for i in sorted(self.select(units or ""))]

    def _token(self, token: Unit | str | int) -> list[int]:
        if isinstance(token, numbers.Integral) and not isinstance(token, bool):
            if not 0 <= int(token) < len(self.units):
                raise ResiDualError(f"unit index {int(token)} out of range for {len(self.units)} units")
            return [int(token)]
        if isinstance(token, str) and token in _SHORTHANDS:
            kind = _SHORTHANDS[token]
            return [i for i, u in enumerate(self.units) if kind == "all" or u.kind == kind]
        return [] if token == "" else [self.index(token)]

    @property
    def head_units(self) -> list[Unit]:
        return [u for u in self.units if u.kind == "head"]

    # -- JSON round trip ----------------------------------------------------------------
    def to_dict(self) -> dict:
        d = asdict(self)
        d["units"] = [u.label for u in self.units]
        if not self.pooled:  # CLS compositions keep the JSON they always had
            del d["geometry"]
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "Composition":
        d = dict(d)
        d.setdefault("geometry", "cls")  # compositions written before pooled towers existed
        d["units"] = tuple(Unit.from_label(s) for s in d.get("units", ()))
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "Composition":
        return cls.from_dict(json.loads(text))

    def same_model(self, other: "Composition") -> bool:
        """True when both describe the same unit layout and convention (model weights are checked by hash elsewhere)."""
        a, b = self.to_dict(), other.to_dict()
        return all(a[k] == b[k] for k in a if k != "model_id")


def head_share(n_layers: int, n_heads: int) -> float:
    """The paper's share of the μ and β terms for one head: 1/((2L+1)H)."""
    return 1.0 / ((2 * n_layers + 1) * n_heads)


def block_share(n_layers: int) -> float:
    """The paper's share of the μ and β terms for the embedding or one MLP: 1/(2L+1)."""
    return 1.0 / (2 * n_layers + 1)
