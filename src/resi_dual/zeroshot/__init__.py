"""Zero-shot classification from class-name prompts, class-mean prototypes, and head specialization."""

from resi_dual.zeroshot.classifier import (
    ZeroShotHead,
    accuracy_report,
    build_classifier,
    classifier_for_source,
    prototype_classifier,
    source_logits,
)
from resi_dual.zeroshot.prompts import class_names_for, templates_for

__all__ = [
    "ZeroShotHead", "accuracy_report", "build_classifier", "classifier_for_source", "prototype_classifier",
    "source_logits", "class_names_for", "templates_for",
]
