"""H-score (Bao et al., ICIP 2019): ``tr(pinv(Cov f) @ Cov(E[f | y]))``."""

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
    matmul,
    shifted_rows,
    symmetric,
)
from leep_jax.scores.validation import (
    accumulation_dtype,
    reduce_column_checks,
    score_with_checks,
)


class HScoreSums(NamedTuple):
    """Mergeable sufficient statistics of the H-score, over features minus a shift."""

    count: jax.Array  # f32[]
    feature_sum: jax.Array  # f32[D]
    outer_sum: jax.Array  # f32[D, D]
    class_sum: jax.Array  # f32[Y, D]
    class_count: jax.Array  # f32[Y]


def h_score_sums(
    features: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
    shift: jax.Array | None = None,
) -> HScoreSums:
    """Sums of ``f - shift``, its outer products, and per-class sums and counts.

    Sums over any split of the rows add up to the sums over all rows. A ``shift`` near
    the feature mean keeps the float32 covariance accurate (it cancels exactly in the
    score); the in-memory :func:`h_score` uses the mean itself.
    """
    valid = ops.valid_rows(labels, num_target_classes, mask)
    rows = shifted_rows(features, valid, shift)
    sums, counts = class_sums(rows, labels, valid, num_target_classes)
    return HScoreSums(
        count=jnp.sum(valid, dtype=rows.dtype),
        feature_sum=jnp.sum(rows, axis=0),
        outer_sum=gram(rows),
        class_sum=sums,
        class_count=counts,
    )


def h_score_from_sums(sums: HScoreSums, shift: ArrayLike) -> jax.Array:
    """The H-score from its sufficient statistics, both covariances normalised by n.

    ``Cov f = S/n - m m^T`` and ``Cov(E[f|y]) = sum_y c_y c_y^T / (n n_y) - m m^T``
    with ``m`` the mean, ``S`` the outer-product sum and ``c_y`` the class sums.
    The pseudo-inverse uses the symmetric eigendecomposition of ``Cov f``. It keeps a
    direction ``v`` only if its variance is above ``D eps`` times the largest one and above
    ``sum_d v_d^2 (4 eps shift_d)^2``, the variance that a few ulps of ``shift`` in every
    centred row would add. Without that floor, constant features scored 1 instead of 0:
    under ``jit``, XLA rounds ``f - mean`` differently in the sums' fusions, which left a
    rank-1 residue of about ``(eps |mean|)^2`` that the relative cutoff alone kept. (With
    a fixed shift far from the mean, variances below the cancellation error of
    ``S/n - m m^T``, about ``n eps E[(f - shift)^2]`` on XLA:CPU, are not resolved.)

    Args:
      sums: :class:`HScoreSums` over ``features - shift``.
      shift: the ``[D]`` vector the sums were taken around (zeros for raw sums).
    """
    n = sums.count
    mean = sums.feature_sum / n
    mean_outer = jnp.outer(mean, mean)
    feature_cov = symmetric(sums.outer_sum / n - mean_outer)
    safe_counts = jnp.where(sums.class_count > 0, sums.class_count, 1)
    class_means = sums.class_sum / safe_counts[:, None]
    weighted = class_means * (sums.class_count / n)[:, None]
    between_cov = matmul(weighted.T, class_means) - mean_outer
    eigenvalues, eigenvectors = jnp.linalg.eigh(feature_cov)
    eps = jnp.finfo(eigenvalues.dtype).eps
    relative = eigenvalues.shape[0] * eps * jnp.max(jnp.abs(eigenvalues))
    drift = 4 * eps * jnp.asarray(shift, eigenvalues.dtype)
    cutoff = jnp.maximum(relative, matmul(drift**2, eigenvectors**2))
    keep = eigenvalues > cutoff
    inverse = jnp.where(keep, 1 / jnp.where(keep, eigenvalues, 1), 0)
    projected = jnp.einsum(
        "dk,de,ek->k", eigenvectors, between_cov, eigenvectors, precision=HIGHEST
    )
    return jnp.sum(inverse * projected)


@functools.partial(jax.jit, static_argnames=("num_target_classes", "check"))
def _h_score(features, labels, mask, num_target_classes, check=False):
    """H-score; with ``check`` also the value-check flags, from the mean's own sweep."""
    valid = ops.valid_rows(labels, num_target_classes, mask)
    dtype = accumulation_dtype(features.dtype)
    total = jnp.sum(jnp.where(valid[:, None], features.astype(dtype), 0), axis=0)
    mean = total / jnp.sum(valid, dtype=dtype)
    sums = h_score_sums(features, labels, num_target_classes, mask=mask, shift=mean)
    score = h_score_from_sums(sums, mean)
    if not check:
        return score
    return score, reduce_column_checks(total, labels, num_target_classes, mask)


def h_score(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """H-score transferability of penultimate features for a target task.

    ``H(f) = tr(pinv(Cov f) @ Cov(E[f | y]))`` (Bao et al. 2019), with both covariances
    normalised by ``n``. Invariant to invertible linear maps of the features. Computed
    from centred sums (the mean is removed first, which keeps float32 exact enough),
    with matmuls at ``Precision.HIGHEST`` so TPUs and GPUs do not drop to bf16/TF32.

    Args:
      features: ``[n, feature_dim]`` penultimate features of the source model.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``, a static Python int.
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar ``>= 0``.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`.
    """
    return score_with_checks(
        _h_score,
        "features",
        features,
        labels,
        num_target_classes,
        mask,
        probabilities=False,
        check=validate_inputs,
    )
