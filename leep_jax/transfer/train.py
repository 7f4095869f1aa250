"""The jitted train / eval loops of the shared recipe (`leep_jax.transfer.recipe`).

`fit` trains any module with a `TrainConfig`; `predict`, `extract_features`,
`predict_logits` and `evaluate` run it exactly over a whole set;
`recalibrate_batch_norm` re-estimates BatchNorm statistics.

How the loop is built, and why:

* The model is split once into ``(graphdef, params, rest)`` (``rest`` holds the
  BatchNorm statistics) and one pure step function is jitted per (architecture, recipe)
  with the graph bound; `jax.jit` caches its compilations by batch shape (thread-safe),
  so every epoch and every task with the same shapes reuses them: fine-tuning one
  source on 200 target tasks compiles once. Calling a jitted pure function is several
  times cheaper on CPU than `nnx.jit` with `nnx.Optimizer`, which walks the object
  graph on every call.
* The learning rate of each step is a traced scalar argument (the schedule is evaluated
  on the host once), so the schedule and the run length are not part of the compiled
  program.
* Training batches have a fixed size. The last, ragged batch of an epoch is filled with
  examples drawn again from the same epoch rather than zero-padded, because padding
  rows would leak into the BatchNorm batch statistics. A training set smaller than one
  batch is therefore tiled.
* Evaluation is exact: every test example is seen once, the last batch is padded and
  the padding rows are sliced off. BatchNorm runs in eval mode there (running
  statistics), so padding cannot change the other rows.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike
from tqdm.auto import tqdm

from leep_jax.transfer.recipe import (
    TrainConfig,
    augment,
    kernel_mask,
    learning_rate_schedule,
    sgd_recipe,
)

__all__ = [
    "FitHistory",
    "TrainConfig",
    "augment",
    "evaluate",
    "extract_features",
    "fit",
    "kernel_mask",
    "learning_rate_schedule",
    "predict",
    "predict_logits",
    "recalibrate_batch_norm",
    "sgd_recipe",
    "trace_count",
]


@dataclasses.dataclass(frozen=True)
class FitHistory:
    """What `fit` measured.

    Attributes:
        train_loss: mean training cross-entropy of each epoch (of each ``eval_every``
            steps when the config sets it; the last segment may be shorter).
        test_accuracy: accuracy on the evaluation set after each of those segments
            (empty when no evaluation set was given).
        num_steps: optimisation steps taken.
        wall_time_s: wall-clock seconds of the whole run, compilation and evaluation
            included.
        compile_time_s: the part of ``wall_time_s`` spent compiling (0 when every
            program came from the cache).
    """

    train_loss: tuple[float, ...]
    test_accuracy: tuple[float, ...]
    num_steps: int
    wall_time_s: float
    compile_time_s: float


def _as_float(images: jax.Array) -> jax.Array:
    # Loaders hand out uint8; models want float32 in [0, 1].
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


# ------------------------------------------------------------------- compiled programs

_TRACES: dict[str, int] = {"train_step": 0, "apply": 0, "batch_moments": 0}
_TRACES_LOCK = threading.Lock()
_THREAD = threading.local()  # this thread's trace count: tells a fit whether it compiled


def trace_count(name: str = "train_step") -> int:
    """How many times the named program was traced.

    Programs: ``"train_step"``, ``"apply"`` (evaluation, features) and
    ``"batch_moments"`` (BatchNorm recalibration).

    Each trace is followed by one compilation; tests use this to check that training
    compiles once per shape.
    """
    return _TRACES[name]


def _count_trace(name: str) -> None:
    # Runs while tracing only (the traced function's Python body), never per call.
    with _TRACES_LOCK:
        _TRACES[name] += 1
    _THREAD.traces = getattr(_THREAD, "traces", 0) + 1


@functools.lru_cache(maxsize=64)
def _program(fn: Callable[..., Any], graphdef: nnx.GraphDef, static: Any) -> Callable[..., Any]:
    """``jax.jit(fn)`` with the model's graph and static options bound.

    `jax.jit` caches the compiled program by argument shapes, dtypes and placement and
    is thread-safe. The graph is bound here rather than passed as a static argument
    because hashing a ResNet20 graphdef takes about 1 ms, which `jax.jit` would pay on
    every call; here it is paid once per `fit`. Equal graphs (a clone of the same
    architecture) share one entry, so fine-tuning one source on many tasks compiles once.
    """
    return jax.jit(functools.partial(fn, graphdef, static))


def _call(program: Callable[..., Any], *args: Any) -> tuple[Any, float]:
    """``program(*args)`` and the seconds spent compiling in the call (0 without a trace)."""
    before = getattr(_THREAD, "traces", 0)
    start = time.perf_counter()
    out = program(*args)
    seconds = time.perf_counter() - start
    return out, (seconds if getattr(_THREAD, "traces", 0) > before else 0.0)


class _StepOptions(NamedTuple):
    """The parts of a `TrainConfig` the compiled step depends on (its cache key).

    Epochs, seed, batch count and learning rate are runtime values, so changing them
    reuses the compiled step.
    """

    momentum: float
    nesterov: bool
    weight_decay: float
    crop_padding: int
    flip: bool

    @classmethod
    def of(cls, config: TrainConfig) -> _StepOptions:
        return cls(
            config.momentum, config.nesterov, config.weight_decay, config.crop_padding, config.flip
        )

    def unit_recipe(self) -> optax.GradientTransformation:
        # Unit learning rate: the step scales the update (SGD is linear in it).
        return sgd_recipe(
            1.0, momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay
        )


def _train_step(
    graphdef: nnx.GraphDef,
    options: _StepOptions,
    params: nnx.State,
    rest: nnx.State,
    opt_state: optax.OptState,
    images: jax.Array,
    labels: jax.Array,
    learning_rate: jax.Array,
    base_key: jax.Array,
    step: jax.Array,
):
    _count_trace("train_step")
    x = _as_float(images)
    if x.ndim == 4 and (options.crop_padding or options.flip):
        x = augment(
            x,
            jax.random.fold_in(base_key, step),
            crop_padding=options.crop_padding,
            flip=options.flip,
        )
    model = nnx.merge(graphdef, params, rest)

    def loss_fn(model):
        logits = model(x).astype(jnp.float32)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    # The learning rate is a traced argument, so one executable serves every schedule.
    updates, opt_state = options.unit_recipe().update(grads, opt_state, params)
    updates = jax.tree.map(lambda u: learning_rate * u, updates)
    params = optax.apply_updates(params, updates)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    return params, rest, opt_state, loss


def _apply(graphdef: nnx.GraphDef, with_features: bool, state: nnx.State, images: jax.Array):
    _count_trace("apply")
    model = nnx.merge(graphdef, state)
    x = _as_float(images)
    if with_features:
        features = model.features(x)
        return model.head(features), features
    return model(x)


def _batch_moments(
    graphdef: nnx.GraphDef,
    _: None,
    params: nnx.State,
    stats: nnx.State,
    other: nnx.State,
    images: jax.Array,
) -> dict[str, Any]:
    _count_trace("batch_moments")
    # BatchNorm momentum is 0 in this graph, so after one train-mode forward pass the
    # running statistics hold exactly this batch's mean and (biased) variance.
    model = nnx.merge(graphdef, params, stats, other)
    model(_as_float(images))
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))


def _pool_moments(batch_sums: Any, squared_mean_sums: Any, num_batches: int) -> Any:
    """Population mean and variance from per-batch moments of equal-size batches."""

    def pool(node, squares):
        if isinstance(node, dict):
            out = {key: pool(value, squares[key]) for key, value in node.items()}
            if "mean" in out and "var" in out and not isinstance(out["mean"], dict):
                # Var of the union = mean of the batch variances + variance of the batch
                # means: E[var_b + mean_b^2] - (E[mean_b])^2.
                mean = node["mean"] / num_batches
                out["var"] = node["var"] / num_batches + squares["mean"] / num_batches - mean**2
            return out
        return node / num_batches

    return pool(batch_sums, squared_mean_sums)


def recalibrate_batch_norm(
    model: nnx.Module,
    images: ArrayLike,
    *,
    batch_size: int,
    max_examples: int = 2048,
    seed: int = 0,
) -> float:
    """Re-estimates every BatchNorm's running statistics from training images, in place.

    The moving averages that BatchNorm keeps during training lag behind the weights,
    and after a few dozen steps (a small target task) they are still dominated by their
    initial values (or, when fine-tuning, by the source data), which can drive eval-mode
    accuracy to chance. This replaces them with the statistics of up to
    ``max_examples`` training images passed through the final weights in train mode, in
    batches of the training batch size ("precise BN", Wu & Johnson 2021, "Rethinking
    'Batch' in BatchNorm"). Parameters are not touched; models without BatchNorm are
    left as they are.

    Args:
        model: the model to update.
        images: ``[n, h, w, c]`` training images (no augmentation is applied).
        batch_size: examples per forward pass (use the training batch size).
        max_examples: at most this many images (drawn at random) are used.
        seed: seeds the draw.

    Returns:
        Seconds spent compiling.
    """
    if not jax.tree.leaves(nnx.state(model, nnx.BatchStat)):
        return 0.0
    probe = nnx.clone(model)
    for _, module in nnx.iter_modules(probe):
        if isinstance(module, nnx.BatchNorm):
            module.momentum = 0.0
    probe.train()
    graphdef, params, stats, other = nnx.split(probe, nnx.Param, nnx.BatchStat, ...)
    images = np.asarray(images)
    rng = np.random.default_rng(seed)
    chosen = rng.permutation(images.shape[0])[: max(max_examples, 1)]
    batches = _epoch_order(rng, chosen.size, batch_size)
    sums = squares = None
    program, compile_s = _program(_batch_moments, graphdef, None), 0.0
    for batch in batches:
        moments, seconds = _call(program, params, stats, other, images[chosen[batch]])
        compile_s += seconds
        squared = jax.tree.map(jnp.square, moments)
        if sums is None:
            sums, squares = moments, squared
        else:
            sums = jax.tree.map(jnp.add, sums, moments)
            squares = jax.tree.map(jnp.add, squares, squared)
    pooled = _pool_moments(sums, squares, len(batches))
    state = nnx.state(model, nnx.BatchStat)
    nnx.replace_by_pure_dict(state, pooled)
    nnx.update(model, state)
    return compile_s


# ----------------------------------------------------------------------------- loops


def _epoch_order(rng: np.random.Generator, n: int, batch_size: int) -> np.ndarray:
    """Indices ``[steps, batch_size]`` for one epoch: a permutation, ragged tail filled."""
    order = rng.permutation(n)
    missing = -n % batch_size
    if missing:
        fill = rng.choice(n, size=missing, replace=missing > n)
        order = np.concatenate([order, fill])
    return order.reshape(-1, batch_size)


def _check_examples(images: ArrayLike, labels: ArrayLike | None, what: str) -> None:
    if np.ndim(images) < 2:
        raise ValueError(f"{what} images must have a batch axis, got shape {np.shape(images)}")
    if np.shape(images)[0] == 0:
        raise ValueError(f"{what} set is empty")
    if labels is not None:
        if np.ndim(labels) != 1 or np.shape(labels)[0] != np.shape(images)[0]:
            raise ValueError(
                f"{what} labels must have shape [{np.shape(images)[0]}], got {np.shape(labels)}"
            )


def _apply_batched(
    model: nnx.Module, images: ArrayLike, batch_size: int, with_features: bool
) -> tuple[Any, float]:
    _check_examples(images, None, "evaluation")
    model.eval()
    graphdef, state = nnx.split(model)
    images = np.asarray(images)
    n = images.shape[0]
    outputs, compile_s = [], 0.0
    program = _program(_apply, graphdef, with_features)
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        rows = batch.shape[0]
        if rows < batch_size:
            # Pad to the fixed shape (no recompile); eval-mode BatchNorm keeps rows
            # independent, and the padding rows are sliced off below.
            pad = np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        out, seconds = _call(program, state, batch)
        compile_s += seconds
        outputs.append(jax.tree.map(lambda a, rows=rows: a[:rows], out))
    result = jax.tree.map(lambda *parts: jnp.concatenate(parts), *outputs)
    return result, compile_s


def predict(
    model: nnx.Module, images: ArrayLike, *, batch_size: int = 512
) -> tuple[jax.Array, jax.Array]:
    """Logits and penultimate features of every example, from one eval-mode pass.

    Puts ``model`` in eval mode (BatchNorm uses its running statistics).

    Args:
        model: a source model following the model contract (``features`` and ``head``).
        images: ``[n, h, w, c]`` uint8 (scaled to [0, 1]) or float images.
        batch_size: examples per compiled call; the last batch is padded.

    Returns:
        ``(logits [n, num_classes], features [n, feature_dim])``.
    """
    (logits, features), _ = _apply_batched(model, images, batch_size, True)
    return logits, features


def extract_features(
    model: nnx.Module, images: ArrayLike, batch_size: int = 512
) -> tuple[jax.Array, float]:
    """Penultimate features of every image, from one eval-mode pass of a copy of ``model``.

    Args:
        model: a source model (``features``, ``head``); not modified, its mode included.
        images: ``[n, h, w, c]`` uint8 or float images.
        batch_size: images per compiled call; the last batch is padded.

    Returns:
        ``(features [n, feature_dim], seconds spent compiling)``.
    """
    (_, features), compile_s = _apply_batched(nnx.clone(model), images, batch_size, True)
    return features, compile_s


def predict_logits(model: nnx.Module, inputs: ArrayLike, *, batch_size: int = 512) -> jax.Array:
    """``model(inputs)`` over all examples in eval mode, batched and exact.

    Works for any module (for example a bare ``nnx.Linear`` head on features).

    Returns:
        ``[n, num_classes]`` logits.
    """
    logits, _ = _apply_batched(model, inputs, batch_size, False)
    return logits


def _accuracy(logits: jax.Array, labels: ArrayLike) -> float:
    return float(np.mean(np.asarray(jnp.argmax(logits, axis=-1)) == np.asarray(labels)))


def evaluate(
    model: nnx.Module, inputs: ArrayLike, labels: ArrayLike, *, batch_size: int = 512
) -> float:
    """Exact top-1 accuracy of ``model`` over all ``n`` examples (eval mode).

    Args:
        model: any module mapping ``inputs`` to logits.
        inputs: ``[n, ...]`` images (or features for a bare head).
        labels: ``[n]`` int labels.
        batch_size: examples per compiled call; the last batch is padded and masked.

    Returns:
        The fraction of examples whose argmax logit equals the label.
    """
    _check_examples(inputs, labels, "evaluation")
    return _accuracy(predict_logits(model, inputs, batch_size=batch_size), labels)


def fit(
    model: nnx.Module,
    images: ArrayLike,
    labels: ArrayLike,
    config: TrainConfig,
    *,
    eval_images: ArrayLike | None = None,
    eval_labels: ArrayLike | None = None,
    progress: bool = False,
    desc: str = "train",
) -> FitHistory:
    """Train all parameters of ``model`` in place with the recipe in ``config``.

    The model trains in train mode (BatchNorm batch statistics). Before each
    evaluation and at the end its BatchNorm running statistics are re-estimated from
    the training images (`recalibrate_batch_norm`, unless
    ``config.bn_recalibration_examples`` is 0), and it is left in eval mode.
    Augmentation applies to 4-D image inputs only.

    Args:
        model: any module mapping a batch of ``images`` to logits ``[b, num_classes]``.
        images: ``[n, h, w, c]`` uint8 or float images (or ``[n, d]`` features).
        labels: ``[n]`` int labels in ``[0, num_classes)``.
        config: the recipe.
        eval_images: optional evaluation inputs, scored exactly after every epoch (or
            every ``config.eval_every`` steps) and at the end.
        eval_labels: their ``[m]`` labels.
        progress: show a tqdm bar over the steps.
        desc: the bar's label.

    Returns:
        The per-epoch loss and accuracy curves and the timings.

    Raises:
        ValueError: on empty or mismatched inputs.
    """
    start = time.perf_counter()
    _check_examples(images, labels, "training")
    if (eval_images is None) != (eval_labels is None):
        raise ValueError("give both eval_images and eval_labels, or neither")
    if eval_images is not None:
        _check_examples(eval_images, eval_labels, "evaluation")
    images = np.asarray(images)
    labels = np.asarray(labels, np.int32)
    n = images.shape[0]
    steps_per_epoch = math.ceil(n / config.batch_size)
    total_steps = config.steps or steps_per_epoch * config.epochs
    # Losses are averaged, and the model evaluated, at the end of each segment: an
    # epoch, or ``eval_every`` steps, and the last step.
    segment = config.eval_every or steps_per_epoch
    schedule = learning_rate_schedule(config, total_steps)
    learning_rates = np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)), np.float32)

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    options = _StepOptions.of(config)
    opt_state = options.unit_recipe().init(params)
    base_key = jax.random.key(config.seed)
    rng = np.random.default_rng(config.seed)
    batches = itertools.chain.from_iterable(
        _epoch_order(rng, n, config.batch_size) for _ in itertools.count()
    )

    train_losses, accuracies = [], []
    compile_s = 0.0
    step_fn = _program(_train_step, graphdef, options)
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    try:
        segment_losses = []
        for step, batch_index in zip(range(total_steps), batches, strict=False):
            args = (
                params,
                rest,
                opt_state,
                images[batch_index],
                labels[batch_index],
                learning_rates[step],
                base_key,
                np.int32(step),
            )
            (params, rest, opt_state, loss), seconds = _call(step_fn, *args)
            compile_s += seconds
            if segment_losses:
                # One step stays in flight; the bar tracks finished steps.
                segment_losses[-1].block_until_ready()
            segment_losses.append(loss)
            bar.update(1)
            last_step = step == total_steps - 1
            if (step + 1) % segment and not last_step:
                continue
            train_losses.append(float(jnp.mean(jnp.stack(segment_losses))))
            segment_losses = []
            if eval_images is not None or last_step:
                # The moving averages stay in the loop's `rest` (they do not affect the
                # parameters); the model gets recalibrated statistics.
                nnx.update(model, params, rest)
                if config.bn_recalibration_examples:
                    compile_s += recalibrate_batch_norm(
                        model,
                        images,
                        batch_size=config.batch_size,
                        max_examples=config.bn_recalibration_examples,
                        seed=config.seed,
                    )
            if eval_images is not None:
                logits, seconds = _apply_batched(model, eval_images, config.eval_batch_size, False)
                compile_s += seconds
                accuracies.append(_accuracy(logits, eval_labels))
            postfix = {"loss": f"{train_losses[-1]:.3f}"}
            if accuracies:
                postfix["acc"] = f"{accuracies[-1]:.3f}"
            bar.set_postfix(postfix)
    finally:
        bar.close()
    model.eval()
    return FitHistory(
        train_loss=tuple(train_losses),
        test_accuracy=tuple(accuracies),
        num_steps=total_steps,
        wall_time_s=time.perf_counter() - start,
        compile_time_s=compile_s,
    )
