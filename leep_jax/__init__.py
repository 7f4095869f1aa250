"""leep-jax: exact, fast transferability scores (LEEP, NCE, H-score, LogME, ...) in JAX.

The scores are pure jitted functions: from a source model's predictions :func:`leep`,
:func:`nce` and :func:`joint_distribution`; from its features :func:`h_score`,
:func:`regularized_h_score`, :func:`logme` (:func:`logme_regression`), :func:`transrate`,
:func:`gbc`, :func:`sfda`, :func:`parc` and :func:`nleep`. :mod:`leep_jax.streaming` has
mergeable accumulators for training loops and data larger than memory, :func:`score_model`
scores a model from its forward passes, :mod:`leep_jax.metrics` has the same as clu/nnx
metrics, and :func:`sharded_scores` runs over a device mesh. Source models,
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
    nleep,
    parc,
    regularized_h_score,
    sfda,
    transrate,
)
from leep_jax.sharding import sharded_scores
from leep_jax.streaming import score_model

__version__ = "0.1.0"


def __getattr__(name):
    # leep_jax.metrics imports clu and flax.nnx (about a second): only on first use.
    if name == "metrics":
        import importlib

        return importlib.import_module("leep_jax.metrics")
    raise AttributeError(f"module 'leep_jax' has no attribute {name!r}")


__all__ = [
    "gbc",
    "h_score",
    "joint_distribution",
    "leep",
    "logme",
    "logme_regression",
    "metrics",
    "nce",
    "nleep",
    "parc",
    "regularized_h_score",
    "score_model",
    "sfda",
    "sharded_scores",
    "streaming",
    "transrate",
]
