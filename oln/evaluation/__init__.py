"""Open-world recall evaluation (AR@k, AUC; class-agnostic, cross-category)."""

from oln.evaluation.recall import (
    DEFAULT_MAX_DETS,
    EvaluateOptions,
    ar_auc,
    evaluate_recall,
    evaluate_to_file,
)

__all__ = ["DEFAULT_MAX_DETS", "EvaluateOptions", "ar_auc", "evaluate_recall", "evaluate_to_file"]
