"""How the report and the figures name scores, baselines and transfer methods."""

from __future__ import annotations

from leep_jax.scores.names import SCORE_LABELS

__all__ = ["LABELS", "METHOD_LABELS", "SCORE_LABELS", "SHORT_METHOD_LABELS"]

METHOD_LABELS = {
    "retrain_head": "re-train head",
    "fine_tune": "fine-tune",
    "train_from_scratch": "scratch",
}
SHORT_METHOD_LABELS = {
    "retrain_head": "head",
    "fine_tune": "ft",
    "train_from_scratch": "scratch",
    "gain": "ft − scratch",
}

# Every score and baseline a table or figure names (`statistics`, `selection`).
LABELS: dict[str, str] = {
    **SCORE_LABELS,
    "class_count": "class count",
    "source_test_accuracy": "source acc.",
    "num_params": "parameters",
    "knn_accuracy": "k-NN acc.",
}
