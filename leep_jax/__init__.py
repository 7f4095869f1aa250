"""leep-jax: exact, fast transferability scores (LEEP, NCE, H-score) in JAX.

The scores are pure jitted functions (:func:`leep`, :func:`nce`, :func:`h_score`,
:func:`joint_distribution`); :mod:`leep_jax.streaming` has mergeable accumulators for
training loops and data larger than memory, :func:`score_model` scores a model from its
forward passes, and :func:`sharded_scores` runs over a device mesh. Source models,
datasets, transfer methods and the paper's experiments live in :mod:`leep_jax.models`,
:mod:`leep_jax.data`, :mod:`leep_jax.transfer` and :mod:`leep_jax.experiments`.
"""

from leep_jax import streaming
from leep_jax.scores import (
    gbc,
    h_score,
    joint_distribution,
    leep,
    logme,
    logme_regression,
    nce,
    regularized_h_score,
    transrate,
)
from leep_jax.sharding import sharded_scores
from leep_jax.streaming import score_model

__version__ = "0.1.0"

__all__ = [
    "h_score",
    "joint_distribution",
    "leep",
    "nce",
    "score_model",
    "sharded_scores",
    "streaming",
]
__all__ += ["gbc", "logme", "logme_regression", "regularized_h_score", "transrate"]
