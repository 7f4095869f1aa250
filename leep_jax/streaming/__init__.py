"""Streaming, mergeable accumulators: the training-loop and big-data paths."""

from leep_jax.scores.h_score import HScoreSums
from leep_jax.streaming.accumulators import (
    Accumulator,
    ConditionalAccumulator,
    HScoreState,
    JointState,
    LogEEPState,
    NCEState,
    conditional,
    h_score,
    joint,
    log_eep,
    nce,
)
from leep_jax.streaming.feature_accumulators import (
    gbc,
    logme,
    logme_regression,
    regularized_h_score,
    transrate,
)
from leep_jax.streaming.score_model import score_model

__all__ = [
    "Accumulator",
    "ConditionalAccumulator",
    "HScoreState",
    "HScoreSums",
    "JointState",
    "LogEEPState",
    "NCEState",
    "conditional",
    "gbc",
    "h_score",
    "joint",
    "log_eep",
    "logme",
    "logme_regression",
    "nce",
    "regularized_h_score",
    "score_model",
    "transrate",
]
