"""GBC: the Gaussian Bhattacharyya coefficient (Pandy et al., CVPR 2022)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.feature_sums import class_sums, shifted_rows, valid_mean
from leep_jax.scores.validation import validate_features

GAUSSIAN_TYPES = ("spherical", "diagonal")
VARIANCE_FLOOR = 1e-4


class GBCSums(NamedTuple):
    """Mergeable per-class sums of ``x = f - shift`` and of its squares."""

    class_count: jax.Array  # f32[C]
    class_sum: jax.Array  # f32[C, D]
    class_sq_sum: jax.Array  # f32[C, D]


def gbc_sums(
    features: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
    shift: jax.Array | None = None,
) -> GBCSums:
    """Per-class sums of ``x = f - shift`` and ``x^2``; sums over any split add up."""
    valid = ops.valid_rows(labels, num_target_classes, mask)
    rows = shifted_rows(features, valid, shift)
    sums, counts = class_sums(rows, labels, valid, num_target_classes)
    squares, _ = class_sums(rows * rows, labels, valid, num_target_classes)
    return GBCSums(class_count=counts, class_sum=sums, class_sq_sum=squares)


def gbc_from_sums(sums: GBCSums, gaussian_type: str) -> jax.Array:
    """``-sum_{c != c'} exp(-D_B(c, c'))`` over the classes present.

    ``D_B = 1/8 sum_d (m_cd - m_c'd)^2 / v_d + 1/2 sum_d (log v_d - log v_cd / 2 -
    log v_c'd / 2)`` with ``v = (v_c + v_c') / 2``; for spherical Gaussians every
    ``v_cd`` is the class's mean variance, so the log terms carry the factor ``D``.
    """
    present = sums.class_count > 0
    counts = jnp.where(present, sums.class_count, 1)[:, None]
    means = sums.class_sum / counts
    variances = jnp.maximum(sums.class_sq_sum / counts - means * means, VARIANCE_FLOOR)
    dim = means.shape[-1]
    if gaussian_type == "spherical":
        variances = jnp.mean(variances, axis=-1, keepdims=True)
    pair_variances = (variances[:, None, :] + variances[None, :, :]) / 2
    squared = (means[:, None, :] - means[None, :, :]) ** 2
    # 1/2 (log v - log v_c / 2 - log v_c' / 2), per dimension.
    log_ratio = (
        jnp.log(pair_variances) / 2
        - (jnp.log(variances)[:, None, :] + jnp.log(variances)[None, :, :]) / 4
    )
    if gaussian_type == "spherical":
        distance = jnp.sum(squared, axis=-1) / pair_variances[..., 0] / 8 + dim * log_ratio[..., 0]
    else:
        distance = jnp.sum(squared / pair_variances, axis=-1) / 8 + jnp.sum(log_ratio, axis=-1)
    pairs = present[:, None] & present[None, :] & ~jnp.eye(present.shape[0], dtype=bool)
    return -jnp.sum(jnp.where(pairs, jnp.exp(-distance), 0))


@functools.partial(jax.jit, static_argnames=("num_target_classes", "gaussian_type"))
def _gbc(features, labels, mask, num_target_classes, gaussian_type):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    shift = valid_mean(features, valid)
    sums = gbc_sums(features, labels, num_target_classes, mask=mask, shift=shift)
    return gbc_from_sums(sums, gaussian_type)


def check_gaussian_type(gaussian_type: str) -> str:
    if gaussian_type not in GAUSSIAN_TYPES:
        raise ValueError(f"gaussian_type must be one of {GAUSSIAN_TYPES}, got {gaussian_type!r}")
    return gaussian_type


def gbc(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    gaussian_type: str = "spherical",
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """Gaussian Bhattacharyya coefficient: how little the classes overlap.

    ``GBC = -sum_{c != c'} exp(-D_B(c, c'))`` over ordered pairs of classes (Pandy et
    al., CVPR 2022), with ``D_B`` the Bhattacharyya distance between per-class Gaussians
    with diagonal covariance (the classes' population variances per dimension, floored
    at 1e-4) or, with ``gaussian_type="spherical"``, ``v I`` with ``v`` the mean of
    those floored variances. ``<= 0``; higher (closer to 0) predicts better transfer.

    Conventions: for spherical Gaussians the log-determinant term is ``D`` times the
    log of the variance ratio, as the formula says; google-research stable_transfer's
    TensorFlow code drops that factor ``D``. stable_transfer's experiments also project
    the features onto 64 principal components first (its ``gbc.pca_reduction``); this
    function scores the features it is given, so apply a PCA yourself to reproduce that
    (it keeps the score one-pass). Classes in range but absent from the data take part
    in no pair; a class with one example has variance 0, floored to 1e-4; with fewer
    than two classes present the score is 0.

    One pass suffices (:func:`leep_jax.streaming.gbc`): per-class sums and sums of
    squares, ``O(C D)`` state.

    Args:
      features: ``[n, feature_dim]`` penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``C``, a static Python int.
      gaussian_type: ``"spherical"`` (default, as stable_transfer) or ``"diagonal"``.
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar in ``[-C (C - 1), 0]``.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`, or an unknown
        ``gaussian_type``.

    References:
      Pandy, Agostinelli, Uijlings, Ferrari, Mensink. Transferability Estimation using
      Bhattacharyya Class Separability. CVPR 2022.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> features = jnp.array([[0.0], [0.4], [0.3], [0.7]])  # means 0.2, 0.5; variances 0.04
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> round(float(leep_jax.gbc(features, labels, 2)), 3)  # -2 exp(-0.3**2 / 0.04 / 8)
      -1.51
    """
    gaussian_type = check_gaussian_type(gaussian_type)
    arrays = validate_features(features, labels, num_target_classes, mask, check=validate_inputs)
    return _gbc(*arrays, gaussian_type)
