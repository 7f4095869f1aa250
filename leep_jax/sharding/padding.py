"""Padding ragged batches so they split evenly over devices, with a mask that drops it."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def pad_to_multiple(x: ArrayLike, multiple: int, *, axis: int = 0) -> tuple[jax.Array, jax.Array]:
    """Zero-pads ``x`` along ``axis`` to the next multiple of ``multiple``.

    The scores treat rows whose mask is False exactly as absent, so padding with any
    finite value and masking it out leaves every score unchanged. Works on NumPy
    arrays, on (global, sharded) ``jax.Array`` s and on tracers inside ``jit``; the
    padded length is static because it depends on shapes only.

    Args:
      x: array with at least ``axis + 1`` dimensions, e.g. ``[n, num_source_classes]``.
      multiple: positive int, e.g. the number of devices along the data axis.
      axis: the axis to pad (the example axis, 0 by default).

    Returns:
      ``(padded, mask)``: ``padded`` has ``ceil(n / multiple) * multiple`` entries
      along ``axis`` (``x`` itself, as a ``jax.Array``, when ``n`` already divides);
      ``mask`` is ``bool[padded_n]``, True for the original ``n`` entries.

    Raises:
      ValueError: if ``multiple`` is not a positive int or ``axis`` is out of range.

    Examples:
      >>> import numpy as np
      >>> padded, mask = pad_to_multiple(np.ones((5, 2)), 4)
      >>> padded.shape, mask.tolist()
      ((8, 2), [True, True, True, True, True, False, False, False])
    """
    if isinstance(multiple, bool) or not isinstance(multiple, (int, np.integer)) or multiple < 1:
        raise ValueError(f"multiple must be a positive int, got {multiple!r}")
    shape = jnp.shape(x)
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for an array of shape {shape}")
    axis = axis % len(shape)
    n = shape[axis]
    padding = -n % int(multiple)
    x = jnp.asarray(x)
    mask = jnp.arange(n + padding) < n
    if padding == 0:
        return x, mask
    widths = [(0, 0)] * len(shape)
    widths[axis] = (0, padding)
    return jnp.pad(x, widths), mask
