"""resi-dual: residual-unit decomposition, spectral analysis and ResiDual adaptation of vision transformers.

Reference: Basile, Maiorca, Bortolussi, Rodolà, Locatello, "ResiDual Transformer Alignment with
Spectral Decomposition", TMLR 2025 (arXiv 2411.00246).
"""

from resi_dual.errors import ResiDualError
from resi_dual.core.units import Composition, Unit

__version__ = "0.1.0"


def load_model(spec: str, **kwargs):
    """Load and wrap a vision transformer from a spec string (see `resi_dual.models.load_model`)."""
    from resi_dual.models.loading import load_model as _load

    return _load(spec, **kwargs)


def list_models():
    """The registered model families (name, summary, spec form, short names); see `resi_dual.models.registry`."""
    from resi_dual.models.registry import list_models as _list

    return _list()


def open_store(path, **kwargs):
    """Open an encoding store written by `resi-dual encode` (see `resi_dual.store`)."""
    from resi_dual.store import open_store as _open

    return _open(path, **kwargs)


__all__ = ["ResiDualError", "Unit", "Composition", "list_models", "load_model", "open_store", "__version__"]
