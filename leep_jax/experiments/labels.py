"""How the report and the figures name scores and transfer methods."""

from __future__ import annotations

__all__ = ["METHOD_LABELS", "METRIC_LABELS"]

METRIC_LABELS = {"leep": "LEEP", "nce": "NCE", "h_score": "H-score"}
METHOD_LABELS = {
    "retrain_head": "re-train head",
    "fine_tune": "fine-tune",
    "train_from_scratch": "scratch",
}
