"""The empirical joint distribution P(y, z) of target labels and source classes."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.validation import accumulation_dtype, validate


def joint_sum(
    predictions: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    from_logits: bool = False,
    mask: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Unnormalised joint ``sum_{i: y_i = y} theta_iz`` and the number of counted rows.

    The mergeable core of LEEP: sums over any split of the examples add up to the sum
    over all of them. No validation; rows with out-of-range labels are dropped.

    Args:
      predictions: ``[n, num_source_classes]`` probabilities, or logits with
        ``from_logits=True``.
      labels: ``int[n]`` target labels.
      num_target_classes: static ``Y``.
      from_logits: whether ``predictions`` are logits.
      mask: optional ``bool[n]``; False rows are ignored.

    Returns:
      ``(joint_sum f32[Y, Z], count f32[])``.
    """
    dtype = accumulation_dtype(predictions.dtype)
    valid = ops.valid_rows(labels, num_target_classes, mask)
    table = ops.row_sum_into(
        (num_target_classes, predictions.shape[-1]),
        predictions,
        labels,
        valid,
        dtype=dtype,
        transform=functools.partial(jax.nn.softmax, axis=-1) if from_logits else None,
    )
    return table, jnp.sum(valid, dtype=dtype)


def conditional(joint: jax.Array) -> jax.Array:
    """``P(y | z) = P(y, z) / P(z)``, ``[Y, Z]``, 0 for source classes with ``P(z) = 0``.

    Works on the normalised joint or on its unnormalised sum alike.
    """
    marginal = jnp.sum(joint, axis=0, keepdims=True)
    safe = jnp.where(marginal > 0, marginal, 1)
    return jnp.where(marginal > 0, joint / safe, 0)


@functools.partial(jax.jit, static_argnames=("num_target_classes", "from_logits"))
def _joint_distribution(predictions, labels, mask, num_target_classes, from_logits):
    table, count = joint_sum(
        predictions, labels, num_target_classes, from_logits=from_logits, mask=mask
    )
    return table / count


def joint_distribution(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    from_logits: bool = False,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """The empirical joint distribution ``P(y, z)`` of LEEP (Nguyen et al. 2020, eq. 1).

    ``P(y, z) = (1/n) sum_{i: y_i = y} theta_iz`` where ``theta_i`` is the source
    model's softmax output for example ``i``. Built by a segment sum, in ``O(n Z)``.

    Args:
      predictions: ``[n, num_source_classes]`` probabilities (rows sum to 1), or logits
        with ``from_logits=True``. Any float dtype; accumulated in float32 or wider.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``, a static Python int (never inferred from the labels).
      from_logits: treat ``predictions`` as logits.
      mask: optional ``bool[n]``; False rows are dropped as if absent (padding).
      validate_inputs: run value checks on eager calls (see :func:`leep_jax.leep`).

    Returns:
      ``f32[num_target_classes, num_source_classes]`` summing to 1.

    Raises:
      ValueError: on invalid shapes, dtypes, labels or probability rows.
    """
    arrays = validate(
        "predictions",
        predictions,
        labels,
        num_target_classes,
        mask,
        probabilities=not from_logits,
        check=validate_inputs,
    )
    return _joint_distribution(*arrays, from_logits)
