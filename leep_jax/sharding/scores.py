"""LEEP, NCE and H-score over a device mesh: per-shard sums merged by ``lax.psum``."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.typing import ArrayLike

from leep_jax import streaming
from leep_jax.scores import ops
from leep_jax.scores.leep import joint_and_normalisers, per_example_terms
from leep_jax.scores.names import DEFAULT_SCORES, check_score_names
from leep_jax.scores.validation import (
    accumulation_dtype,
    check_label_range,
    check_num_classes,
    check_shapes,
    is_concrete,
    raise_if_flagged,
    reduce_checks,
    reduce_column_checks,
    row_checks,
)
from leep_jax.sharding.mesh import AxisName, axis_names_of, axis_size, data_mesh
from leep_jax.sharding.padding import pad_to_multiple

# The scores sharded_scores computes over a mesh: the one-pass ones of the paper.
METRICS = DEFAULT_SCORES


# How each value-check flag merges over shards.
_MERGE_FLAGS = {
    "num_valid": jax.lax.psum,
    "all_finite": jax.lax.pmin,
    "labels_in_range": jax.lax.pmin,
    "row_error": jax.lax.pmax,
    "min_value": jax.lax.pmin,
}


def _merge_flags(flags, axis):
    return {
        name: _MERGE_FLAGS[name](
            value.astype(jnp.int32) if value.dtype == jnp.bool_ else value, axis
        )
        for name, value in flags.items()
    }


def _shard_flags(
    predictions, labels, features, mask, *, num_target_classes, from_logits, metrics, axis
):
    """The value-check flags of the whole mesh: one fused sweep over this shard's rows.

    Padding rows are masked, so they never raise a flag. Features are checked from
    their column sums, merged over shards.
    """
    dtype = accumulation_dtype(predictions.dtype)
    row_stats = ops.map_rows(
        functools.partial(row_checks, probabilities=not from_logits), predictions, dtype
    )
    flags = {
        "predictions": _merge_flags(
            reduce_checks(
                row_stats, labels, num_target_classes, mask, probabilities=not from_logits
            ),
            axis,
        )
    }
    if features is not None:
        valid = ops.valid_rows(labels, num_target_classes, mask)
        feature_dtype = accumulation_dtype(features.dtype)
        total = jnp.sum(jnp.where(valid[:, None], features.astype(feature_dtype), 0), axis=0)
        flags["features"] = _merge_flags(
            reduce_column_checks(total, labels, num_target_classes, mask), axis
        )
    return flags


def _shard_scores(
    predictions,
    labels,
    features,
    mask,
    *,
    num_target_classes,
    from_logits,
    metrics,
    axis,
):
    """Runs on one shard of the examples; every result is psum'd, hence replicated."""
    num_source_classes = predictions.shape[-1]
    scores = {}
    if "leep" in metrics:
        # Phase 1: the global joint, so every shard holds the same frozen conditional;
        # for logits each shard keeps its rows' softmax normalisers for phase 2.
        valid = ops.valid_rows(labels, num_target_classes, mask)
        joint, normalisers = joint_and_normalisers(
            predictions, labels, valid, num_target_classes, from_logits=from_logits
        )
        joint = jax.lax.psum(joint, axis)
        # Phase 2: the summed log-EEP of this shard's rows under that conditional.
        terms = per_example_terms(joint, predictions, labels, normalisers, from_logits=from_logits)
        total, count = jax.lax.psum(
            (jnp.sum(jnp.where(valid, terms, 0)), jnp.sum(valid, dtype=terms.dtype)), axis
        )
        scores["leep"] = (total / count).astype(jnp.float32)
    if "nce" in metrics:
        nce = streaming.nce(num_target_classes, num_source_classes)
        scores["nce"] = nce.compute(
            jax.lax.psum(nce.update(nce.init(), predictions, labels, mask), axis)
        )
    if "h_score" in metrics:
        # Shift by the global mean first: raw sums of features with a large mean lose
        # the covariance to cancellation in float32 (S/n - m m^T).
        valid = ops.valid_rows(labels, num_target_classes, mask)
        dtype = accumulation_dtype(features.dtype)
        total, count = jax.lax.psum(
            (
                jnp.sum(jnp.where(valid[:, None], features.astype(dtype), 0), axis=0),
                jnp.sum(valid, dtype=dtype),
            ),
            axis,
        )
        shift = total / count
        h_score = streaming.h_score(num_target_classes, features.shape[-1], shift=shift)
        state = h_score.update(h_score.init(), features, labels, mask)
        # Every shard shares the shift: psum the sums, keep the replicated shift (it is
        # not a sum; the state's copy went through a per-shard merge, so it is typed varying).
        scores["h_score"] = h_score.compute(jax.lax.psum(state, axis)._replace(shift=shift))
    return scores


def _sharded_scores_impl(
    predictions,
    labels,
    features,
    mask,
    *,
    num_target_classes,
    from_logits,
    metrics,
    mesh,
    axis_name,
    check,
):
    shards = axis_size(mesh, axis_name)
    predictions, padding_mask = pad_to_multiple(predictions, shards)
    labels, _ = pad_to_multiple(labels, shards)
    mask = padding_mask if mask is None else pad_to_multiple(mask, shards)[0] & padding_mask
    arrays = (
        (predictions, labels, mask)
        if features is None
        else (predictions, labels, mask, pad_to_multiple(features, shards)[0])
    )
    spec = jax.P(axis_names_of(axis_name))
    if AxisType.Explicit in mesh.axis_types:
        # Explicit axes: shard_map insists that in_specs match the inputs' types.
        arrays = tuple(jax.sharding.reshard(a, NamedSharding(mesh, spec)) for a in arrays)

    def per_shard(predictions, labels, mask, features=None):
        return (_shard_flags if check else _shard_scores)(
            predictions,
            labels,
            features,
            mask,
            num_target_classes=num_target_classes,
            from_logits=from_logits,
            metrics=metrics,
            axis=axis_names_of(axis_name),
        )

    return jax.shard_map(per_shard, mesh=mesh, in_specs=spec, out_specs=jax.P())(*arrays)


_STATIC = ("num_target_classes", "from_logits", "metrics", "mesh", "axis_name")
# Two jitted programs, each compiled once per shapes and options: the scores, and the
# value-check flags (one fused sweep per shard, merged over the mesh), which validated
# calls dispatch next to the scores. The scores' program is the same either way.
_sharded_scores = jax.jit(
    functools.partial(_sharded_scores_impl, check=False), static_argnames=_STATIC
)
_sharded_flags = jax.jit(
    functools.partial(_sharded_scores_impl, check=True), static_argnames=_STATIC
)


def sharded_scores(
    predictions: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    features: ArrayLike | None = None,
    from_logits: bool = False,
    mask: ArrayLike | None = None,
    mesh: Mesh | None = None,
    axis_name: AxisName = "data",
    metrics: Sequence[str] = METRICS,
    validate_inputs: bool = True,
) -> dict[str, jax.Array]:
    """LEEP, NCE and H-score with the examples split over a device mesh.

    One jitted ``jax.shard_map``: each device reduces its shard of the examples to
    sums (the states of :mod:`leep_jax.streaming`) and ``lax.psum`` merges them.
    LEEP is exact in two phases inside the same map: per-shard joint (for logits
    keeping each row's softmax normaliser, as :func:`leep_jax.leep` does), psum,
    conditional, per-shard summed log-EEP, psum. H-score first psums the feature mean
    and accumulates features minus that mean, which keeps float32 accurate. Any ``n``
    works: rows are zero-padded to a multiple of the shard count and masked out, so
    results equal :func:`leep_jax.leep`, :func:`leep_jax.nce` and
    :func:`leep_jax.h_score` on the same data up to float32 summation order.

    Inputs may be NumPy arrays or ``jax.Array`` s with any sharding (they are
    resharded along ``axis_name``); Auto and Explicit mesh axes both work, with or
    without ``jax.set_mesh``. Compiles once per shapes, mesh and static options.

    Multi-host: after ``jax.distributed.initialize()``, every process calls this
    function with the same arguments on global arrays, e.g. built with
    ``jax.make_array_from_process_local_data(NamedSharding(mesh, jax.P("data")),
    local_rows)`` over a mesh of ``jax.devices()``; nothing here assumes the data is
    host-local (padding happens inside ``jit``, results are replicated scalars). The
    value checks are jitted programs too, with replicated results, so on global arrays
    every process raises the same ValueError, naming the global row. CI runs it over 2
    local processes (gloo CPU collectives, tests/test_sweep_processes.py); separate
    machines have not been tested.

    Args:
      predictions: ``[n, num_source_classes]`` source-model probabilities, or logits
        with ``from_logits=True``.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``, a static Python int.
      features: ``[n, feature_dim]`` penultimate features; needed for ``"h_score"``.
      from_logits: treat ``predictions`` as logits.
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      mesh: the device mesh, or ``None`` for the ``jax.set_mesh`` mesh if one is set,
        else all devices (``jax.devices()``) on a 1-D mesh named ``axis_name``.
      axis_name: the mesh axis (or tuple of axes) the examples are split along.
      metrics: which of ``"leep"``, ``"nce"``, ``"h_score"`` to compute.
      validate_inputs: value checks as in :func:`leep_jax.leep` on concrete inputs.

    Returns:
      ``{metric: float32 scalar}`` for each requested metric.

    Raises:
      ValueError: on invalid inputs (as :func:`leep_jax.leep`), unknown metrics,
        ``"h_score"`` without features, or a mesh lacking ``axis_name``.

    Examples:
      >>> import numpy as np
      >>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]], np.float32)
      >>> scores = sharded_scores(probs, np.array([0, 1, 0]), 2, metrics=("leep", "nce"))
      >>> round(float(scores["leep"]), 4), float(scores["nce"])
      (-0.3652, 0.0)
    """
    metrics = check_score_names(metrics, allowed=METRICS)
    num_target_classes = check_num_classes(num_target_classes)
    if not isinstance(from_logits, bool):
        raise ValueError(f"from_logits must be a bool, got {from_logits!r}")
    check_shapes("predictions", predictions, labels, mask)
    if "h_score" in metrics:
        if features is None:
            raise ValueError('metric "h_score" needs features= (penultimate features [n, d])')
        check_shapes("features", features, labels, mask)
    else:
        features = None
    mesh = data_mesh(mesh, axis_name)
    check = validate_inputs and is_concrete(predictions, labels, features, mask)
    if check and isinstance(labels, np.ndarray):
        check_label_range(labels, num_target_classes, mask)
    predictions, labels = jnp.asarray(predictions), jnp.asarray(labels)
    features = None if features is None else jnp.asarray(features)
    mask = None if mask is None else jnp.asarray(mask)
    kwargs = dict(
        num_target_classes=num_target_classes,
        from_logits=from_logits,
        metrics=metrics,
        mesh=mesh,
        axis_name=axis_name if isinstance(axis_name, str) else tuple(axis_name),
    )
    if not check:
        return _sharded_scores(predictions, labels, features, mask, **kwargs)
    flags = _sharded_flags(predictions, labels, features, mask, **kwargs)
    scores = _sharded_scores(predictions, labels, features, mask, **kwargs)
    for name, values, probabilities in (
        ("predictions", predictions, not from_logits),
        ("features", features, False),
    ):
        if values is not None:
            raise_if_flagged(
                flags[name],
                name,
                values,
                labels,
                num_target_classes,
                mask,
                probabilities=probabilities,
            )
    return scores
