"""Text interpretation of residual units: TextSpan, SOMP and per-component descriptions (docs/DESIGN.md §6)."""

from resi_dual.interpret.decompose import Decomposition, somp, text_span
from resi_dual.interpret.units import (
    decompose_units,
    default_dictionary_path,
    embed_dictionary,
    load_dictionary,
    pc_descriptions,
)

__all__ = [
    "Decomposition", "somp", "text_span", "decompose_units", "default_dictionary_path", "embed_dictionary",
    "load_dictionary", "pc_descriptions",
]
