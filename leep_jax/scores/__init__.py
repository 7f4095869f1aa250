"""Transferability scores as pure, jitted functions of arrays."""

from leep_jax.scores.h_score import h_score
from leep_jax.scores.joint import joint_distribution
from leep_jax.scores.leep import leep
from leep_jax.scores.nce import nce
from leep_jax.scores.nleep import nleep
from leep_jax.scores.parc import parc
from leep_jax.scores.sfda import sfda

__all__ = ["h_score", "joint_distribution", "leep", "nce"]
__all__ += ["nleep", "parc", "sfda"]
