"""Model loading and exact residual tracing."""

from resi_dual.models.encodings import Readout, UnitEncodings
from resi_dual.models.units import Composition, Unit, standard_units

__all__ = ["Composition", "Unit", "standard_units", "Readout", "UnitEncodings"]
