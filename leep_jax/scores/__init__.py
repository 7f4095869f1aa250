"""Transferability scores as pure, jitted functions of arrays."""

from leep_jax.scores.gbc import gbc
from leep_jax.scores.h_score import h_score
from leep_jax.scores.joint import joint_distribution
from leep_jax.scores.leep import leep
from leep_jax.scores.logme import logme, logme_regression
from leep_jax.scores.nce import nce
from leep_jax.scores.regularized_h_score import regularized_h_score
from leep_jax.scores.transrate import transrate

__all__ = ["h_score", "joint_distribution", "leep", "nce"]
__all__ += ["gbc", "logme", "logme_regression", "regularized_h_score", "transrate"]
