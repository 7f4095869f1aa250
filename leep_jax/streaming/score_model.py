"""Score a source model on a stream of target batches, compiled once per architecture."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax.numpy as jnp
from flax import nnx

from leep_jax.scores.names import DEFAULT_SCORES, check_score_names
from leep_jax.scores.validation import check_num_classes
from leep_jax.streaming import engine, sources

Batch = tuple[Any, Any] | tuple[Any, Any, Any]


@dataclasses.dataclass(frozen=True)
class ModuleForward:
    """``(state, images) -> (logits, features)`` of the NNX modules of one graphdef.

    Hashable by its graphdef, so every model of one architecture shares one compiled
    step. The module is merged in eval mode (BatchNorm uses its running statistics)
    without changing the caller's model. It follows the :mod:`leep_jax.models` contract
    (``features`` and ``head``) when the module has one, else ``module(images)`` must
    return ``(logits, features)``. uint8 images are scaled to ``[0, 1]``.
    """

    graphdef: nnx.GraphDef

    def __call__(self, state, images):
        if images.dtype == jnp.uint8:
            images = images.astype(jnp.float32) / 255.0
        module = nnx.merge(self.graphdef, state)
        module.eval()
        return module_outputs(module, images)


def module_outputs(module: nnx.Module, images) -> tuple:
    """``(logits, features)`` of an NNX module in one pass (see :class:`ModuleForward`)."""
    if hasattr(module, "features") and hasattr(module, "head"):
        features = module.features(images)
        return module.head(features), features
    return module(images)


@dataclasses.dataclass(frozen=True)
class _Unary:
    """The forward of an ``apply_fn(images)`` without parameters (hashable by identity)."""

    apply_fn: Callable

    def __call__(self, params, images):
        del params
        return self.apply_fn(images)


def split_model(model, params: Any = None) -> tuple[engine.Forward, Any]:
    """``(forward, params)`` for the engine from a model in any of the accepted forms."""
    if isinstance(model, nnx.Module):
        if params is not None:
            raise ValueError("params= is for an apply_fn; an nnx.Module carries its weights")
        graphdef, state = nnx.split(model)
        return ModuleForward(graphdef), state
    if not callable(model):
        raise ValueError(f"model must be an nnx.Module or a callable, got {type(model).__name__}")
    return (_Unary(model), None) if params is None else (model, params)


def score_model(
    model: nnx.Module | Callable,
    batches: Iterable[Batch] | Callable[[], Iterable[Batch]],
    num_target_classes: int,
    *,
    params: Any = None,
    metrics: Sequence[str] = DEFAULT_SCORES,
    keep_predictions: bool = True,
    from_logits: bool = True,
) -> dict[str, float | int]:
    """The scores in ``metrics`` (default LEEP, NCE, H-score) of a source model on a target set.

    Each batch goes through the model once in a jitted step that also updates the
    streaming states (:mod:`leep_jax.streaming.engine`): the LEEP joint, the NCE counts,
    the feature scores' sums (features are kept for SFDA, PARC and NLEEP). Batches
    smaller than the first one (a ragged last batch) are zero-padded and masked, larger
    ones are split, so the step compiles once per architecture, batch shape and options:
    a second call with another model of the same architecture (other weights, same
    ``nnx`` graph) compiles nothing. NCE and H-score are exact in this single pass.
    Exact LEEP needs the conditional ``P(y|z)`` of all the data before its second sum,
    which leaves two ways:

    * ``keep_predictions=True``: keep every batch's logits on device and run the second
      sum over them. One forward pass; ``n * num_source_classes`` extra floats of device
      memory (1e6 images x 1000 classes = 4 GB in float32).
    * ``keep_predictions=False``: run the model again over the batches with the
      conditional frozen. Memory ``O(num_target_classes * num_source_classes)`` whatever
      ``n`` is; twice the forward passes, and ``batches`` must be re-iterable (a
      sequence, a re-iterable dataset, or a zero-argument callable returning a fresh
      iterator) and yield the same examples again (order may change).

    Args:
      model: one of
        * an ``nnx.Module`` following the :mod:`leep_jax.models` contract (``features``
          and ``head``) or returning ``(logits, features)``; run in eval mode;
        * a pure ``apply_fn(params, images) -> (logits [b, Z], features [b, D])`` with
          ``params=`` (compiled once per ``apply_fn``: pass the same function object);
        * ``apply_fn(images) -> (logits, features)`` closing over its weights (compiled
          once per function object; a fresh closure per call compiles again).
      batches: iterable of ``(images, labels)`` or ``(images, labels, mask)`` with NumPy
        or JAX arrays; ``labels`` ``int[b]`` in ``[0, num_target_classes)``, ``mask``
        ``bool[b]`` (False rows are ignored). Or a zero-argument callable returning
        such an iterable.
      num_target_classes: ``Y``, a static Python int.
      params: the weights for a two-argument ``apply_fn``.
      metrics: which of :data:`leep_jax.scores.names.SCORE_NAMES` to compute.
      keep_predictions: the LEEP strategy above (ignored without ``"leep"``).
      from_logits: whether the model's first output is logits (else probabilities).

    Returns:
      ``{metric: float}`` for each requested metric, plus ``"n"`` (examples counted),
      ``"forward_passes"`` (1 or 2) and ``"seconds"`` (wall time, compilation included).

    Raises:
      ValueError: for unknown metrics, no batches, malformed batches or labels out of
        range, outputs that are not ``([b, Z], [b, D])``, NaN/Inf outputs, a one-shot
        iterator with ``keep_predictions=False``, or a second pass that counts a
        different number of examples.
    """
    metrics = check_score_names(metrics)
    num_target_classes = check_num_classes(num_target_classes)
    forward, params = split_model(model, params)
    second_forward = "leep" in metrics and not keep_predictions
    fresh = sources.reiterable(batches, passes=2 if second_forward else 1)

    def source(second_pass: bool = False):
        del second_pass
        return sources.fixed_size(fresh(), num_target_classes)

    result = engine.run(
        source,
        num_target_classes,
        metrics,
        forward=forward,
        params=params,
        from_logits=from_logits,
        keep_predictions=keep_predictions,
    )
    return {
        **result.scores,
        "n": result.n,
        "forward_passes": result.forward_passes,
        "seconds": result.seconds,
    }
