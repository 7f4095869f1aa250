"""Score a zoo of source models on one target set: looped, or vmapped over stacked weights.

Models of one architecture share a ``GraphDef`` (``nnx.split``), so their weights can be
stacked leaf by leaf and run as ONE vmapped forward pass. Whether that beats a Python
loop over one compiled function depends on the backend: vmapped convolutions lower to
grouped (``feature_group_count``) convolutions, which XLA:CPU runs 3-4x slower than M
ordinary ones (``benchmarks/results/cpu-2core/zoo.md``: vmap over loop 0.26 at M = 16),
and which can lose on GPUs as well. ``strategy="auto"`` takes the path measured faster
on the current backend (`FASTER_ZOO_PATH`).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leep_jax.scores.names import DEFAULT_SCORES, check_score_names
from leep_jax.scores.validation import check_label_range, check_num_classes
from leep_jax.streaming import engine, sources
from leep_jax.streaming.score_model import ModuleForward

__all__ = ["FASTER_ZOO_PATH", "ZooStrategy", "score_zoo", "zoo_strategy"]

ZooStrategy = Literal["auto", "loop", "vmap"]

# The faster path per backend, from `python -m benchmarks --only zoo` (zoo.md beside each
# results folder). Backends without a measurement take the loop: it never compiles a
# grouped convolution, and its compile is shared by every model of an architecture.
FASTER_ZOO_PATH: dict[str, Literal["loop", "vmap"]] = {"cpu": "loop"}


def zoo_strategy(backend: str | None = None) -> Literal["loop", "vmap"]:
    """The zoo path `score_zoo` takes by default on ``backend`` (default: JAX's)."""
    return FASTER_ZOO_PATH.get(backend or jax.default_backend(), "loop")


@functools.partial(jax.jit, static_argnums=0)
def _forward_stacked(graphdef: nnx.GraphDef, states: nnx.State, images: jax.Array):
    """``[M, b, Z]`` logits and ``[M, b, D]`` features of M stacked models of one graphdef."""
    return jax.vmap(ModuleForward(graphdef), in_axes=(0, None))(states, images)


def _group_key(graphdef: nnx.GraphDef, state: nnx.State):
    leaves = jax.tree.leaves(state)
    return graphdef, tuple((x.shape, jnp.result_type(x)) for x in leaves)


def score_zoo(
    models: Mapping[str, nnx.Module],
    images: np.ndarray,
    labels: np.ndarray,
    num_target_classes: int,
    *,
    batch_size: int = 256,
    strategy: ZooStrategy = "auto",
    metrics: Sequence[str] = DEFAULT_SCORES,
    on_scored: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """The scores in ``metrics`` of every model from one forward pass each over ``images``.

    Every model sees the images once, in batches of ``batch_size`` (the last one padded
    and masked), through the scoring engine (:mod:`leep_jax.streaming.engine`): one
    compiled step per architecture and batch shape, shared by every model of that
    architecture, with its logits kept on device for LEEP's second sum. With
    ``strategy="vmap"`` the models of each architecture (equal ``nnx.split`` graph and
    weight shapes) run together: their weights are stacked and one vmapped forward
    pass serves them all. The scores are the same either way (up to float32 rounding).

    Args:
      models: name -> source model following the `leep_jax.models` contract. Each is
        put in eval mode (BatchNorm uses its running statistics); weights are not changed.
      images: ``[n, h, w, c]`` uint8 images, or float images in [0, 1], in the channel
        count every model takes.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``Y``.
      batch_size: images per forward call.
      strategy: ``"loop"``, ``"vmap"``, or ``"auto"`` for `zoo_strategy` (the path
        measured faster on this backend).
      metrics: which of :data:`leep_jax.scores.names.SCORE_NAMES` to compute.
      on_scored: called with each model's name once its scores are known (progress).

    Returns:
      ``{name: {metric: value, ..., "seconds": s}}`` in the order of ``models``;
      ``seconds`` is the model's wall time (for vmapped groups, the group's time split
      evenly), first compilation included.

    Raises:
      ValueError: no models, an unknown strategy, mismatched images and labels, labels
        out of range, or images a model rejects.
    """
    if not models:
        raise ValueError("no models to score")
    if strategy not in ("auto", "loop", "vmap"):
        raise ValueError(f"unknown strategy {strategy!r}; expected 'auto', 'loop' or 'vmap'")
    strategy = zoo_strategy() if strategy == "auto" else strategy
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    labels = np.asarray(labels)
    n = labels.shape[0] if labels.ndim == 1 else 0
    if n == 0 or np.shape(images)[0] != n:
        raise ValueError(
            f"need int labels [n >= 1] and as many images, got images {np.shape(images)} "
            f"and labels {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    check_label_range(labels, check_num_classes(num_target_classes))

    metrics = check_score_names(metrics)
    size = min(batch_size, n)
    padded = -(-n // size) * size
    mask = np.arange(padded) < n
    labels = np.pad(labels.astype(np.int32), (0, padded - n))
    # On the device once, shared by every model; only the last batch is padded.
    batches = []
    for start in range(0, n, size):
        rows = slice(start, start + size)
        batch = np.asarray(images[rows])
        batch = np.pad(batch, [(0, size - batch.shape[0])] + [(0, 0)] * (batch.ndim - 1))
        batches.append((jax.device_put(batch), labels[rows], mask[rows]))

    groups: dict[object, list[tuple[str, nnx.GraphDef, nnx.State]]] = {}
    for name, model in models.items():
        model.eval()
        graphdef, state = nnx.split(model)
        key = _group_key(graphdef, state) if strategy == "vmap" else name
        groups.setdefault(key, []).append((name, graphdef, state))

    results: dict[str, dict[str, float]] = {}
    for members in groups.values():
        start = time.perf_counter()
        try:
            if len(members) == 1:
                _, graphdef, state = members[0]
                forward, params = ModuleForward(graphdef), state
                scored = [score_batches(batches, num_target_classes, metrics, forward, params)]
            else:
                scored = _score_stacked(members, batches, num_target_classes, metrics)
        except ValueError as error:
            names = ", ".join(repr(m[0]) for m in members)
            raise ValueError(f"model {names}: {error}") from error
        seconds = (time.perf_counter() - start) / len(members)
        for (name, _, _), scores in zip(members, scored, strict=True):
            results[name] = {**scores, "seconds": seconds}
            if on_scored is not None:
                on_scored(name)
    return {name: results[name] for name in models}


def score_batches(batches, num_target_classes, metrics, forward, params) -> dict[str, float]:
    """The engine over equal-size batches ``[(inputs, labels, mask)]``."""
    result = engine.run(
        lambda second_pass=False: sources.fixed_size(batches, num_target_classes),
        num_target_classes,
        metrics,
        forward=forward,
        params=params,
    )
    return result.scores


def _score_stacked(members, batches, num_target_classes, metrics) -> list[dict[str, float]]:
    """Scores of models of one graphdef from ONE vmapped forward pass over their weights."""
    graphdef = members[0][1]
    states = jax.tree.map(lambda *leaves: jnp.stack(leaves), *(m[2] for m in members))
    outputs = [
        (_forward_stacked(graphdef, states, images), labels, mask)
        for images, labels, mask in batches
    ]
    return [
        score_batches(
            [
                ((logits[m], features[m]), labels, mask)
                for (logits, features), labels, mask in outputs
            ],
            num_target_classes,
            metrics,
            engine.given_outputs,
            None,
        )
        for m in range(len(members))
    ]
