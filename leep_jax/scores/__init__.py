"""Transferability scores as pure, jitted functions of arrays.

From a source model's predictions (probabilities or logits): :func:`leep`, :func:`nce`
and :func:`joint_distribution`. From its penultimate features: :func:`h_score`,
:func:`regularized_h_score`, :func:`logme` (and :func:`logme_regression` for real-valued
targets), :func:`transrate`, :func:`gbc`, :func:`sfda`, :func:`parc` and :func:`nleep`.
:mod:`leep_jax.scores.names` lists them by name.
"""

from leep_jax.scores.gbc import gbc
from leep_jax.scores.h_score import h_score
from leep_jax.scores.joint import joint_distribution
from leep_jax.scores.leep import leep
from leep_jax.scores.logme import logme, logme_regression
from leep_jax.scores.nce import nce
from leep_jax.scores.nleep import nleep
from leep_jax.scores.parc import parc
from leep_jax.scores.regularized_h_score import regularized_h_score
from leep_jax.scores.sfda import sfda
from leep_jax.scores.transrate import transrate

__all__ = [
    "gbc",
    "h_score",
    "joint_distribution",
    "leep",
    "logme",
    "logme_regression",
    "nce",
    "nleep",
    "parc",
    "regularized_h_score",
    "sfda",
    "transrate",
]
