"""Transferability scores as training-loop metrics (the clu / metrax / nnx protocol).

Each factory returns a ``clu.metrics.Metric`` subclass (an immutable pytree with
``empty``, ``from_model_output``, ``merge``, ``compute`` and ``reduce``) over the
streaming accumulator of the same name, with the class counts and model-output names
bound, so it goes into a ``clu.metrics.Collection``; :class:`NnxMetric` makes any of
them an in-place ``nnx.Metric`` for ``nnx.MultiMetric``. :func:`from_accumulator` is
the one adapter behind them: any :class:`~leep_jax.streaming.Accumulator` becomes a
metric in one line.

The one-pass feature scores (LogME, regularized H-score, TransRate, GBC) are metrics
too; SFDA, PARC and NLEEP need every feature at once and have no metric form.

LEEP is exact in two phases (:mod:`leep_jax.metrics.scores`): :func:`joint`, then
:func:`log_eep` with the :func:`conditional` frozen from the complete joint.
"""

from leep_jax.metrics.adapter import AccumulatorMetric, from_accumulator
from leep_jax.metrics.nnx_wrapper import NnxMetric
from leep_jax.metrics.scores import (
    conditional,
    gbc,
    h_score,
    joint,
    log_eep,
    logme,
    nce,
    regularized_h_score,
    transrate,
)

__all__ = [
    "AccumulatorMetric",
    "NnxMetric",
    "conditional",
    "from_accumulator",
    "gbc",
    "h_score",
    "joint",
    "log_eep",
    "logme",
    "nce",
    "regularized_h_score",
    "transrate",
]
