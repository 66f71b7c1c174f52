"""Exact residual tracing, one module per model family over a shared base (see ``base``)."""

from resi_dual.models.tracing.base import DEFAULT_TOLERANCE, TracedModel

from resi_dual.models.tracing.layout import Layout, build_readout

__all__ = ["DEFAULT_TOLERANCE", "Layout", "TracedModel", "build_readout"]
