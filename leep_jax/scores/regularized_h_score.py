"""Regularized H-score (Ibrahim et al., NeurIPS 2021), as tllib computes it."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.feature_sums import (
    HIGHEST,
    class_sums,
    gram,
    shifted_rows,
    symmetric,
    valid_mean,
)
from leep_jax.scores.validation import validate_features


class RegularizedHScoreSums(NamedTuple):
    """Mergeable sufficient statistics of the regularized H-score, over ``x = f - shift``.

    Besides the H-score's sums, Ledoit-Wolf shrinkage needs ``sum_i ||x_i - mean||^4``,
    which expands into the fourth-moment sums below (see :func:`ledoit_wolf_shrinkage`).
    """

    count: jax.Array  # f32[]
    feature_sum: jax.Array  # f32[D]: sum_i x_i
    outer_sum: jax.Array  # f32[D, D]: sum_i x_i x_i^T
    norm_sq_weighted_sum: jax.Array  # f32[D]: sum_i ||x_i||^2 x_i
    norm_fourth_sum: jax.Array  # f32[]: sum_i ||x_i||^4
    class_sum: jax.Array  # f32[C, D]
    class_count: jax.Array  # f32[C]


def regularized_h_score_sums(
    features: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
    shift: jax.Array | None = None,
) -> RegularizedHScoreSums:
    """Sums of ``x = f - shift`` over the valid rows; sums over any split add up."""
    valid = ops.valid_rows(labels, num_target_classes, mask)
    rows = shifted_rows(features, valid, shift)
    norm_sq = jnp.sum(rows * rows, axis=1)
    sums, counts = class_sums(rows, labels, valid, num_target_classes)
    return RegularizedHScoreSums(
        count=jnp.sum(valid, dtype=rows.dtype),
        feature_sum=jnp.sum(rows, axis=0),
        outer_sum=gram(rows),
        norm_sq_weighted_sum=gram(norm_sq[:, None], rows)[0],
        norm_fourth_sum=jnp.sum(norm_sq * norm_sq),
        class_sum=sums,
        class_count=counts,
    )


def ledoit_wolf_shrinkage(sums: RegularizedHScoreSums) -> tuple[jax.Array, jax.Array]:
    """The centred empirical covariance ``S`` and sklearn's Ledoit-Wolf shrinkage.

    With ``S = X^T X / n`` of the centred rows, ``mu = tr(S) / D``::

        delta = ||S - mu I||_F^2 / D
        beta  = (sum_i ||x_i||^4 / n - ||S||_F^2) / (D n),  clipped to [0, delta]
        shrinkage = beta / delta  (0 when delta = 0, and for D = 1)

    (sklearn.covariance.ledoit_wolf_shrinkage). With ``d`` the mean of the shifted
    rows ``x'``, ``a_i = ||x'_i||^2`` and ``e = ||d||^2``, the centred fourth-moment sum
    is exactly ``sum a_i^2 - 4 d.sum(a_i x'_i) + 4 d^T (sum x' x'^T) d + 2 e sum a_i
    - 3 n e^2``.
    """
    count = sums.count
    shifted_mean = sums.feature_sum / count
    dim = shifted_mean.shape[0]
    covariance = symmetric(sums.outer_sum / count - jnp.outer(shifted_mean, shifted_mean))
    if dim == 1:
        return covariance, jnp.zeros((), covariance.dtype)
    e = jnp.sum(shifted_mean * shifted_mean)
    fourth = (
        sums.norm_fourth_sum
        - 4 * jnp.sum(shifted_mean * sums.norm_sq_weighted_sum)
        + 4
        * jnp.matmul(
            shifted_mean,
            jnp.matmul(sums.outer_sum, shifted_mean, precision=HIGHEST),
            precision=HIGHEST,
        )
        + 2 * e * jnp.trace(sums.outer_sum)
        - 3 * count * e * e
    )
    mu = jnp.trace(covariance) / dim
    delta = jnp.sum((covariance - mu * jnp.eye(dim, dtype=covariance.dtype)) ** 2) / dim
    beta = (fourth / count - jnp.sum(covariance * covariance)) / (dim * count)
    beta = jnp.clip(beta, 0, delta)
    shrinkage = jnp.where(delta > 0, beta / jnp.where(delta > 0, delta, 1), 0)
    return covariance, shrinkage


def regularized_h_score_from_sums(sums: RegularizedHScoreSums) -> jax.Array:
    """``(1 - a) tr(pinv(Cov_a f) @ Cov(E[f|y]))`` from the sums (tllib's normalisations).

    ``Cov_a f = (1 - a) S + a mu I`` with ``S`` normalised by ``n``; ``Cov(E[f|y])`` is
    ``sum_c n_c (m_c - m)(m_c - m)^T / (n - 1)`` (tllib uses ``np.cov``), 0 for
    ``n = 1``. The pseudo-inverse drops eigenvalues below ``D eps max|lambda|``.
    """
    covariance, shrinkage = ledoit_wolf_shrinkage(sums)
    dim = covariance.shape[0]
    count = sums.count
    mu = jnp.trace(covariance) / dim
    shrunk = (1 - shrinkage) * covariance + shrinkage * mu * jnp.eye(dim, dtype=covariance.dtype)
    shifted_mean = sums.feature_sum / count
    present = sums.class_count > 0
    safe_counts = jnp.where(present, sums.class_count, 1)
    offsets = sums.class_sum / safe_counts[:, None] - shifted_mean[None, :]
    offsets = jnp.where(present[:, None], offsets, 0)
    between = jnp.matmul((offsets * sums.class_count[:, None]).T, offsets, precision=HIGHEST)
    between = between / jnp.maximum(count - 1, 1)
    eigenvalues, eigenvectors = jnp.linalg.eigh(shrunk)
    cutoff = dim * jnp.finfo(eigenvalues.dtype).eps * jnp.max(jnp.abs(eigenvalues))
    keep = eigenvalues > cutoff
    inverse = jnp.where(keep, 1 / jnp.where(keep, eigenvalues, 1), 0)
    projected = jnp.einsum("dk,de,ek->k", eigenvectors, between, eigenvectors, precision=HIGHEST)
    return (1 - shrinkage) * jnp.sum(inverse * projected)


@functools.partial(jax.jit, static_argnames=("num_target_classes",))
def _regularized_h_score(features, labels, mask, num_target_classes):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    shift = valid_mean(features, valid)
    sums = regularized_h_score_sums(features, labels, num_target_classes, mask=mask, shift=shift)
    return regularized_h_score_from_sums(sums)


def regularized_h_score(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """H-score with a Ledoit-Wolf shrunk feature covariance (Ibrahim et al. 2021).

    ``H_a = tr(pinv(Cov_a f) @ (1 - a) Cov(E[f | y]))`` where ``Cov_a f = (1 - a) S +
    a (tr S / D) I`` is the Ledoit-Wolf estimate of the covariance ``S`` of the centred
    features with sklearn's shrinkage ``a``, exactly as tllib
    (``tllib.ranking.hscore.regularized_h_score``) computes it: ``S`` normalised by
    ``n``, the between-class covariance by ``n - 1`` (its ``np.cov``), and the factor
    ``(1 - a)`` on the between-class covariance. Shrinkage makes the score stable when
    ``n`` is small next to ``D``, where the plain H-score's inverse blows up.

    Invariant to translations, rotations and a common scale of the features (not to
    general invertible linear maps, unlike the H-score: shrinkage is towards ``I``).
    Classes in range but absent contribute nothing; ``n = 1`` gives 0. One pass over
    the data suffices (:func:`leep_jax.streaming.regularized_h_score`): the shrinkage
    needs ``sum_i ||f_i - mean||^4``, which expands into sums of ``||x||^4``,
    ``||x||^2 x`` and ``x x^T``.

    Args:
      features: ``[n, feature_dim]`` penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``C``, a static Python int.
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar ``>= 0``.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`.

    References:
      Ibrahim, Ponomareva, Mazumder. Newer is not always better: Rethinking
      transferability metrics, their peculiarities, stability and performance.
      NeurIPS 2021 (ECML-PKDD 2022). Ledoit & Wolf, J. Multivariate Anal. 2004.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> features = jnp.array([[1.0, 0.2], [0.8, 0.0], [0.0, 1.0], [0.2, 0.8]])
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> round(float(leep_jax.regularized_h_score(features, labels, 2)), 4)
      1.2268
    """
    arrays = validate_features(features, labels, num_target_classes, mask, check=validate_inputs)
    return _regularized_h_score(*arrays)
