"""Score a source model on a stream of target batches: one jitted forward+accumulate step."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from leep_jax.scores import _ops
from leep_jax.scores._validation import check_label_range, check_num_classes
from leep_jax.streaming import accumulators

METRICS = ("leep", "nce", "h_score")

ApplyFn = Callable[[jax.Array], tuple[jax.Array, jax.Array]]
Batch = tuple[Any, Any] | tuple[Any, Any, Any]


def _batch_source(batches, two_passes: bool) -> Callable[[], Iterator]:
    """A zero-argument function returning a fresh iterator over the batches."""
    if isinstance(batches, Iterable):
        if two_passes and iter(batches) is batches:
            raise ValueError(
                "keep_predictions=False reads the batches twice, but `batches` is a one-shot "
                "iterator; pass a sequence, a re-iterable dataset, or a zero-argument "
                "callable returning a fresh iterator (or use keep_predictions=True)"
            )
        return lambda: iter(batches)
    if callable(batches):
        return lambda: iter(batches())
    raise ValueError(
        "batches must be an iterable of (images, labels[, mask]) or a zero-argument "
        f"callable returning one, got {type(batches).__name__}"
    )


def _pad_rows(x, size: int):
    """Zero-pads the leading axis of a NumPy or JAX array to ``size`` rows."""
    widths = [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, widths) if isinstance(x, np.ndarray) else jnp.pad(x, widths)


def _checked_batch(index: int, batch, num_target_classes: int):
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(
            f"batch {index} must be a tuple (images, labels) or (images, labels, mask), "
            f"got {type(batch).__name__}"
        )
    images, labels = batch[0], batch[1]
    images = images if isinstance(images, (np.ndarray, jax.Array)) else np.asarray(images)
    # Labels are small: checking them on the host catches what jit would silently drop.
    labels = np.asarray(labels)
    mask = np.ones(labels.shape, bool) if len(batch) == 2 else np.asarray(batch[2])
    if images.ndim < 1 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"batch {index}: labels must have shape [n] = {images.shape[:1]} matching the "
            f"images, got {labels.shape}"
        )
    if labels.shape[0] == 0:
        raise ValueError(f"batch {index} is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"batch {index}: labels must be integers, got dtype {labels.dtype}")
    if mask.shape != labels.shape or mask.dtype != np.bool_:
        raise ValueError(
            f"batch {index}: mask must be bool with shape {labels.shape}, got "
            f"{mask.dtype} {mask.shape}"
        )
    check_label_range(labels[mask], num_target_classes, prefix=f"batch {index}: ")
    return images, labels.astype(np.int32), mask


def _fixed_size_batches(
    batches: Iterator, num_target_classes: int, batch_size: int | None
) -> Iterator[tuple[Any, np.ndarray, np.ndarray]]:
    """Batches of exactly ``batch_size`` rows (the first batch's size if None).

    Smaller batches (typically the last) are zero-padded with a False mask; larger ones
    are cut into chunks. Every step then has one shape and compiles once.
    """
    for index, batch in enumerate(batches):
        images, labels, mask = _checked_batch(index, batch, num_target_classes)
        batch_size = batch_size or labels.shape[0]
        for start in range(0, labels.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            yield (
                _pad_rows(images[chunk], batch_size),
                _pad_rows(labels[chunk], batch_size),
                _pad_rows(mask[chunk], batch_size),
            )


def _check_outputs(outputs, batch_size: int, from_logits: bool) -> tuple[int, int]:
    """``(num_source_classes, feature_dim)`` from the abstract outputs of ``apply_fn``."""
    if not isinstance(outputs, (tuple, list)) or len(outputs) != 2:
        raise ValueError("apply_fn(images) must return a pair (logits, features)")
    for name, out in zip(
        ("logits" if from_logits else "probabilities", "features"), outputs, strict=True
    ):
        if out.ndim != 2 or out.shape[0] != batch_size:
            raise ValueError(
                f"apply_fn must return {name} of shape [{batch_size}, k] for a batch of "
                f"{batch_size}, got {out.shape}"
            )
        if not jnp.issubdtype(out.dtype, jnp.floating):
            raise ValueError(f"apply_fn must return floating {name}, got dtype {out.dtype}")
    return outputs[0].shape[1], outputs[1].shape[1]


def score_model(
    apply_fn: ApplyFn,
    batches: Iterable[Batch] | Callable[[], Iterable[Batch]],
    num_target_classes: int,
    *,
    metrics: Sequence[str] = METRICS,
    keep_predictions: bool = True,
    from_logits: bool = True,
) -> dict[str, float | int]:
    """LEEP, NCE and H-score of a source model on a target dataset given in batches.

    Each batch goes through ``apply_fn`` once in a jitted step that also updates the
    streaming states (:mod:`leep_jax.streaming.accumulators`): the LEEP joint, the NCE
    counts and the H-score sums (shifted by the first batch's feature mean, for float32
    accuracy). Batches smaller than the first one (a ragged last batch) are zero-padded
    and masked, larger ones are split, so the step compiles once. NCE and H-score are
    exact in this single pass. Exact LEEP needs the conditional ``P(y|z)`` of all the
    data before its second sum, which leaves two ways:

    * ``keep_predictions=True``: keep every batch's logits on device and run the second
      sum over them. One forward pass; ``n * num_source_classes`` extra floats of device
      memory (1e6 images x 1000 classes = 4 GB in float32).
    * ``keep_predictions=False``: run the model again over the batches with the
      conditional frozen. Memory ``O(num_target_classes * num_source_classes)`` whatever
      ``n`` is; twice the forward passes, and ``batches`` must be re-iterable (a
      sequence, a re-iterable dataset, or a zero-argument callable returning a fresh
      iterator) and yield the same examples again (order may change).

    Args:
      apply_fn: ``images [b, ...] -> (logits [b, Z], features [b, D])``, traceable by
        ``jax.jit``, e.g. ``functools.partial(leep_jax.models.forward, model)`` after
        ``model.eval()`` (BatchNorm in training mode would mutate state under jit).
      batches: iterable of ``(images, labels)`` or ``(images, labels, mask)`` with NumPy
        or JAX arrays; ``labels`` ``int[b]`` in ``[0, num_target_classes)``, ``mask``
        ``bool[b]`` (False rows are ignored). Or a zero-argument callable returning
        such an iterable.
      num_target_classes: ``Y``, a static Python int.
      metrics: which of ``"leep"``, ``"nce"``, ``"h_score"`` to compute.
      keep_predictions: the LEEP strategy above (ignored without ``"leep"``).
      from_logits: whether the first output of ``apply_fn`` is logits (else
        probabilities).

    Returns:
      ``{metric: float}`` for each requested metric, plus ``"n"`` (examples counted),
      ``"forward_passes"`` (1 or 2) and ``"seconds"`` (wall time, compilation included).

    Raises:
      ValueError: for unknown metrics, no batches, malformed batches or labels out of
        range, outputs of ``apply_fn`` that are not ``([b, Z], [b, D])``, a one-shot
        iterator with ``keep_predictions=False``, or a second pass that counts a
        different number of examples.
    """
    started = time.perf_counter()
    metrics = (metrics,) if isinstance(metrics, str) else tuple(metrics)
    if not metrics or any(m not in METRICS for m in metrics) or len(set(metrics)) != len(metrics):
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {metrics!r}")
    num_target_classes = check_num_classes(num_target_classes)
    second_forward = "leep" in metrics and not keep_predictions
    source = _batch_source(batches, two_passes=second_forward)

    stream = _fixed_size_batches(source(), num_target_classes, None)
    first = next(stream, None)
    if first is None:
        raise ValueError("batches is empty")
    batch_size = first[1].shape[0]
    num_source_classes, feature_dim = _check_outputs(
        jax.eval_shape(apply_fn, first[0]), batch_size, from_logits
    )
    joint = accumulators.joint(num_target_classes, num_source_classes, from_logits=from_logits)
    log_eep = accumulators.log_eep(num_target_classes, num_source_classes, from_logits=from_logits)
    nce = accumulators.nce(num_target_classes, num_source_classes)

    def h_score(shift):
        return accumulators.h_score(num_target_classes, feature_dim, shift=shift)

    state = {"count": jnp.zeros((), jnp.float32)}
    if "leep" in metrics:
        state["joint"] = joint.init()
    if "nce" in metrics:
        state["nce"] = nce.init()
    if "h_score" in metrics:
        state["h_score"] = h_score(None).init()
        state["shift"] = jnp.zeros((feature_dim,), jnp.float32)

    @jax.jit
    def first_pass_step(state, images, labels, mask):
        outputs, features = apply_fn(images)
        valid = _ops.valid_rows(labels, num_target_classes, mask)
        batch_count = jnp.sum(valid, dtype=jnp.float32)
        new = {"count": state["count"] + batch_count}
        if "joint" in state:
            new["joint"] = joint.update(state["joint"], outputs, labels, mask)
        if "nce" in state:
            new["nce"] = nce.update(state["nce"], outputs, labels, mask)
        if "h_score" in state:
            # The shift is the mean of the first batch with counted rows; it cancels in
            # the score and only keeps float32 sums of (f - shift) well conditioned.
            batch_sum = jnp.sum(jnp.where(valid[:, None], features.astype(jnp.float32), 0), 0)
            batch_mean = batch_sum / jnp.maximum(batch_count, 1)
            shift = jnp.where(state["h_score"].count > 0, state["shift"], batch_mean)
            new["h_score"] = h_score(shift).update(state["h_score"], features, labels, mask)
            new["shift"] = shift
        return new, outputs

    kept = []
    batch = first
    while batch is not None:
        state, outputs = first_pass_step(state, *batch)
        if "leep" in metrics and keep_predictions:
            kept.append((outputs, batch[1], batch[2]))
        batch = next(stream, None)

    n = int(state["count"])
    if n == 0:
        raise ValueError("the masks exclude every example; a score needs at least one")
    results: dict[str, float | int] = {}
    if "leep" in metrics:
        conditional = accumulators.conditional(state["joint"])
        eep_state = log_eep.init()
        if keep_predictions:
            step = jax.jit(log_eep.update)
            for outputs, labels, mask in kept:
                eep_state = step(eep_state, outputs, labels, conditional, mask)
        else:

            @jax.jit
            def second_pass_step(eep_state, images, labels, mask, conditional):
                outputs, _ = apply_fn(images)
                return log_eep.update(eep_state, outputs, labels, conditional, mask)

            for images, labels, mask in _fixed_size_batches(
                source(), num_target_classes, batch_size
            ):
                eep_state = second_pass_step(eep_state, images, labels, mask, conditional)
            if int(eep_state.count) != n:
                raise ValueError(
                    f"the second pass over batches counted {int(eep_state.count)} examples, "
                    f"the first {n}: batches must yield the same data each time"
                )
        results["leep"] = float(log_eep.compute(eep_state))
    if "nce" in metrics:
        results["nce"] = float(nce.compute(state["nce"]))
    if "h_score" in metrics:
        results["h_score"] = float(h_score(None).compute(state["h_score"]))
    results["n"] = n
    results["forward_passes"] = 2 if second_forward else 1
    results["seconds"] = time.perf_counter() - started
    return results
