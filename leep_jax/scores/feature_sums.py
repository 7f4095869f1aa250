"""Building blocks of the feature-based scores: masked, shifted, mergeable sums.

The feature scores (H-score, LogME, regularized H-score, TransRate, GBC) are functions
of a few sums over examples: counts, feature sums, Gram matrices, per-class sums.
Summing ``f - shift`` instead of ``f``, with ``shift`` near the mean, keeps the float32
covariances ``S/n - m m^T`` accurate (the shift cancels exactly in every score). Every
sum here is replicated over a mesh its rows are sharded on, so the scores give the
unsharded result on sharded inputs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from leep_jax.scores import ops
from leep_jax.scores.validation import accumulation_dtype

HIGHEST = jax.lax.Precision.HIGHEST


def shifted_rows(features: jax.Array, valid: jax.Array, shift: jax.Array | None) -> jax.Array:
    """``f - shift`` in the accumulation dtype, with invalid rows set to exactly 0."""
    dtype = accumulation_dtype(features.dtype)
    rows = features.astype(dtype)
    if shift is not None:
        rows = rows - shift.astype(dtype)[None, :]
    return jnp.where(valid[:, None], rows, 0)


def valid_mean(features: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of the valid rows of ``features``, ``[D]`` (the in-memory scores' shift)."""
    rows = shifted_rows(features, valid, None)
    return jnp.sum(rows, axis=0) / jnp.sum(valid, dtype=rows.dtype)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
    """``a @ b`` at HIGHEST precision (full float32 on TPU and on GPUs with TF32)."""
    return jnp.matmul(a, b, precision=HIGHEST)


def gram(rows: jax.Array, other: jax.Array | None = None) -> jax.Array:
    """``rows^T other`` (default ``rows^T rows``) over the example axis, HIGHEST precision.

    Replicated under an Explicit mesh that splits the examples (JAX asks for an
    ``out_sharding`` there).
    """
    other = rows if other is None else other
    return jnp.einsum(
        "nd,ne->de",
        rows,
        other,
        precision=HIGHEST,
        out_sharding=ops.replicated_out_sharding(rows),
    )


def class_sums(
    rows: jax.Array, labels: jax.Array, valid: jax.Array, num_target_classes: int
) -> tuple[jax.Array, jax.Array]:
    """Per-class sums ``[C, D]`` of ``rows`` and per-class counts ``[C]``."""
    sums = ops.row_sum_into((num_target_classes, rows.shape[-1]), rows, labels, valid)
    counts = ops.row_sum_into(
        (num_target_classes,), jnp.ones(labels.shape, rows.dtype), labels, valid
    )
    return sums, counts


def symmetric(matrix: jax.Array) -> jax.Array:
    """``(A + A^T) / 2``: removes the rounding asymmetry before an eigendecomposition."""
    return (matrix + jnp.swapaxes(matrix, -1, -2)) / 2
