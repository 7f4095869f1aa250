"""leep-jax: exact, fast transferability scores (LEEP, NCE, H-score) in JAX."""

from leep_jax.scores import h_score, joint_distribution, leep, nce

__version__ = "0.1.0"

__all__ = ["h_score", "joint_distribution", "leep", "nce"]
