"""TransRate (Huang et al., ICML 2022), as tllib computes it."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.feature_sums import class_sums, gram, shifted_rows, symmetric, valid_mean
from leep_jax.scores.validation import validate


class TransRateSums(NamedTuple):
    """Mergeable sufficient statistics of TransRate, over ``x = f - shift``."""

    count: jax.Array  # f32[]
    feature_sum: jax.Array  # f32[D]
    class_count: jax.Array  # f32[C]
    class_sum: jax.Array  # f32[C, D]
    class_outer_sum: jax.Array  # f32[C, D, D]: sum_{i in c} x_i x_i^T


def transrate_sums(
    features: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
    shift: jax.Array | None = None,
) -> TransRateSums:
    """Sums of ``x = f - shift``, per class; sums over any split of the rows add up.

    The per-class Gram matrices run as a loop over classes, each a masked ``[n, D]``
    matmul: ``C n D^2`` multiply-adds and no ``[n, C, D]`` intermediate.
    """
    valid = ops.valid_rows(labels, num_target_classes, mask)
    rows = shifted_rows(features, valid, shift)
    sums, counts = class_sums(rows, labels, valid, num_target_classes)

    def class_gram(c):
        return gram(jnp.where((labels == c)[:, None], rows, 0), rows)

    outer = jax.lax.map(class_gram, jnp.arange(num_target_classes))
    return TransRateSums(
        count=jnp.sum(valid, dtype=rows.dtype),
        feature_sum=jnp.sum(rows, axis=0),
        class_count=counts,
        class_sum=sums,
        class_outer_sum=outer,
    )


def coding_rates(grams: jax.Array, counts: jax.Array, eps: float) -> jax.Array:
    """``R = 1/2 logdet(I + G / (n eps))`` for PSD Grams ``G = Z^T Z`` of ``n`` rows each.

    ``grams`` is ``[K, D, D]`` and ``counts`` ``[K]``; 0 where ``n = 0``. By Cholesky
    factorisations (11 of them at ``D = 512`` take a fraction of a second where
    ``eigvalsh`` takes ~1 s each on a 2-core CPU); when float32 rounding makes a
    matrix numerically indefinite (a Gram with a huge top eigenvalue), the
    factorisation fails and all rates come from the eigenvalues of ``G`` clipped at 0.
    """
    dim = grams.shape[-1]
    scales = 1 / (jnp.maximum(counts, 1) * eps)
    grams = symmetric(grams)
    factors = jnp.linalg.cholesky(
        jnp.eye(dim, dtype=grams.dtype)[None] + grams * scales[:, None, None]
    )
    by_cholesky = jnp.sum(jnp.log(jnp.diagonal(factors, axis1=-2, axis2=-1)), axis=-1)

    def by_eigenvalues(_):
        eigenvalues = jnp.maximum(jnp.linalg.eigvalsh(grams), 0)
        return jnp.sum(jnp.log1p(eigenvalues * scales[:, None]), axis=-1) / 2

    rates = jax.lax.cond(
        jnp.all(jnp.isfinite(by_cholesky)), lambda _: by_cholesky, by_eigenvalues, None
    )
    return jnp.where(counts > 0, rates, 0)


def transrate_from_sums(sums: TransRateSums, eps: float) -> jax.Array:
    """``R(F) - mean_c R(F_c)`` on features centred by the global mean.

    The per-class Gram of the globally centred rows is rebuilt as the within-class
    scatter ``sum x x^T - s_c s_c^T / n_c`` plus ``n_c (m_c - m)(m_c - m)^T``, which
    stays accurate in float32 whatever the shift.
    """
    present = sums.class_count > 0
    safe_counts = jnp.where(present, sums.class_count, 1)
    class_means = sums.class_sum / safe_counts[:, None]
    offsets = class_means - (sums.feature_sum / sums.count)[None, :]
    offsets = jnp.where(present[:, None], offsets, 0)
    within = (
        sums.class_outer_sum
        - jnp.einsum("c,cd,ce->cde", safe_counts, class_means, class_means) * present[:, None, None]
    )
    class_grams = within + jnp.einsum("c,cd,ce->cde", sums.class_count, offsets, offsets)
    grams = jnp.concatenate([jnp.sum(class_grams, axis=0)[None], class_grams])
    rates = coding_rates(grams, jnp.concatenate([sums.count[None], sums.class_count]), eps)
    total_rate, class_rates = rates[0], rates[1:]
    mean_class_rate = jnp.sum(class_rates) / jnp.sum(present, dtype=class_rates.dtype)
    return total_rate - mean_class_rate


@functools.partial(jax.jit, static_argnames=("num_target_classes", "eps"))
def _transrate(features, labels, mask, num_target_classes, eps):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    shift = valid_mean(features, valid)
    sums = transrate_sums(features, labels, num_target_classes, mask=mask, shift=shift)
    return transrate_from_sums(sums, eps)


def transrate(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    eps: float = 1e-4,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """TransRate: coding rate of the features minus the mean per-class coding rate.

    ``TrR = R(F, eps) - (1/C) sum_c R(F_c, eps)`` with ``R(Z, eps) = 1/2 logdet(I +
    Z^T Z / (n_Z eps))``, ``n_Z`` the number of rows of ``Z``, on features centred once
    by their global mean (``F_c`` are the rows of class ``c`` of the centred ``F``, not
    re-centred), exactly as tllib (``tllib.ranking.transrate``) computes it; the paper
    (Huang et al., ICML 2022) writes ``R`` with ``d / (n eps^2)`` and weights classes
    by ``n_c / n``. Not scale invariant: ``eps`` is an absolute distortion. Classes in
    range but absent from the data are left out of the mean (tllib returns NaN there).

    One pass suffices (:func:`leep_jax.streaming.transrate`) with ``C`` per-class
    ``D x D`` Gram matrices; the score then takes ``C + 1`` positive-definite
    factorisations (Cholesky) of size ``D``.

    Precision: the log-determinants see directions of the features with variance down to
    about ``eps``, and float32 Gram matrices resolve variances only down to ~1e-7 of the
    largest; with (nearly) collinear features float32 can be off by far more than its
    usual 1e-5 relative (we measured 0.7 relative for two features equal up to noise of
    1e-3 times their scale, 100x the others). Use float64 (``jax_enable_x64``) there.

    Args:
      features: ``[n, feature_dim]`` penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``C``, a static Python int.
      eps: the distortion ``eps > 0`` (static; tllib's default 1e-4).
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`, or ``eps <= 0``.

    References:
      Huang, Huang, Liu, Tong. Frustratingly Easy Transferability Estimation. ICML 2022.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> features = jnp.array([[1.0, 0.2], [0.8, 0.0], [0.0, 1.0], [0.2, 0.8]])
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> round(float(leep_jax.transrate(features, labels, 2, eps=0.1)), 4)
      0.0022
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    arrays = validate(
        "features",
        features,
        labels,
        num_target_classes,
        mask,
        probabilities=False,
        check=validate_inputs,
    )
    return _transrate(*arrays, float(eps))
