"""ResiDual and its baselines: adapters trained on cached per-unit PCA coefficients (docs/DESIGN.md §8)."""

from resi_dual.adapters.adapter import (
    DEFAULT_LR,
    VARIANTS,
    Adapter,
    AdapterConfig,
    build_adapter,
    describe,
)
from resi_dual.adapters.fewshot import FewShotSplit, few_shot_split
from resi_dual.adapters.cache import CachedSplit, Projection, check_same_labels, check_same_model, encode_split
from resi_dual.adapters.training import FitResult, TrainConfig, fit, lr_range_test

__all__ = [
    "Adapter", "AdapterConfig", "CachedSplit", "DEFAULT_LR", "FitResult", "Projection", "TrainConfig", "VARIANTS",
    "build_adapter", "check_same_labels", "check_same_model", "describe", "encode_split", "FewShotSplit", "few_shot_split", "fit",
    "lr_range_test",
]
