"""The central types every stage speaks: residual units, the composition of a model's output,
and the exact per-unit readout into output space. Nothing here imports a later stage."""

from resi_dual.core.encodings import Readout, UnitEncodings, relative_error, unit_features
from resi_dual.core.units import CONVENTIONS, Composition, Convention, Unit, UnitKind, standard_units

__all__ = [
    "CONVENTIONS", "Composition", "Convention", "Readout", "Unit", "UnitEncodings", "UnitKind",
    "relative_error", "standard_units", "unit_features",
]
