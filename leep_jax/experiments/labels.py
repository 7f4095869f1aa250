"""How the report and the figures name scores and transfer methods."""

from __future__ import annotations

from leep_jax.scores.names import SCORE_LABELS

__all__ = ["METHOD_LABELS", "SCORE_LABELS"]

METHOD_LABELS = {
    "retrain_head": "re-train head",
    "fine_tune": "fine-tune",
    "train_from_scratch": "scratch",
}
