"""The shared training recipe and the jitted train / eval loops.

One recipe serves source training, fine-tuning, training from scratch and the linear
head of `retrain_head`: SGD with Nesterov momentum 0.9, a (warmup-)cosine learning-rate
schedule, L2 weight decay on kernels only (not on biases or BatchNorm scales), and light
augmentation (random crop with zero padding; horizontal flip optional, since flipping
is wrong for digits).

How the loop is built, and why:

* The model is split once into ``(graphdef, params, rest)`` (``rest`` holds the
  BatchNorm statistics) and one pure step function is compiled ahead of time per
  (architecture, recipe, batch shape). The compiled step is cached at module level, so
  every epoch and every task with the same shapes reuses it: fine-tuning one source on
  200 target tasks compiles once. Calling a compiled pure function is several times
  cheaper on CPU than `nnx.jit` with `nnx.Optimizer`, which walks the object graph on
  every call.
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
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike
from tqdm.auto import tqdm

__all__ = [
    "FitHistory",
    "TrainConfig",
    "augment",
    "evaluate",
    "fit",
    "kernel_mask",
    "learning_rate_schedule",
    "predict",
    "predict_logits",
    "recalibrate_batch_norm",
    "sgd_recipe",
    "trace_count",
]

Schedule = Literal["cosine", "warmup_cosine", "constant"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all hashable, so they key compile caches).

    Attributes:
        epochs: passes over the training set; an epoch is ``ceil(n / batch_size)`` steps.
        batch_size: examples per step (fixed, see the module docstring).
        learning_rate: peak learning rate of the schedule.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 coefficient, applied to kernels only.
        schedule: ``"cosine"`` (decay to 0), ``"warmup_cosine"`` (linear warmup over
            ``warmup_fraction`` of the steps, then cosine to 0) or ``"constant"``.
        warmup_fraction: share of the steps spent warming up (``"warmup_cosine"`` only).
        crop_padding: zero padding (pixels) for random crops; 0 disables cropping.
        flip: random horizontal flips (leave off for digits and other chiral data).
        seed: seeds the data order and the augmentation.
        eval_batch_size: batch size of evaluation and feature extraction.
        bn_recalibration_examples: before each evaluation and at the end, BatchNorm
            running statistics are re-estimated from up to this many (un-augmented)
            training examples; 0 keeps the moving averages (see
            `recalibrate_batch_norm`).
    """

    epochs: int
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "warmup_cosine"
    warmup_fraction: float = 0.05
    crop_padding: int = 2
    flip: bool = False
    seed: int = 0
    eval_batch_size: int = 512
    bn_recalibration_examples: int = 2048

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("cosine", "warmup_cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.bn_recalibration_examples < 0:
            raise ValueError(
                f"bn_recalibration_examples must be >= 0, got {self.bn_recalibration_examples}"
            )


@dataclasses.dataclass(frozen=True)
class FitHistory:
    """What `fit` measured.

    Attributes:
        train_loss: mean training cross-entropy of each epoch, ``[epochs]``.
        test_accuracy: accuracy on the evaluation set after each epoch, ``[epochs]``
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


# ---------------------------------------------------------------------------- recipe


def _is_kernel(path: tuple[Any, ...]) -> bool:
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] == "kernel"


def kernel_mask(params: Any) -> Any:
    """A pytree of bools over ``params``: True for kernels (Linear, Conv), else False.

    Weight decay on biases and BatchNorm scales only hurts (it shrinks the
    normalisation), so the recipe decays kernels alone.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def sgd_recipe(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and L2 weight decay on kernels only.

    Args:
        learning_rate: a constant or an optax schedule (see `learning_rate_schedule`).
        momentum: momentum coefficient.
        nesterov: use Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient of each kernel.

    Returns:
        The optax transformation (coupled L2, as in the classic ResNet recipe).
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=kernel_mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The schedule named by ``config.schedule`` over ``total_steps`` steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    peak = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(peak)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(peak, total_steps)
    warmup = int(round(config.warmup_fraction * total_steps))
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)


# ----------------------------------------------------------------------- augmentation


def augment(images: jax.Array, key: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
    """Random crops (zero padding) and optional horizontal flips, per example.

    Args:
        images: ``[n, h, w, c]`` float images.
        key: PRNG key.
        crop_padding: pixels of zero padding on each side before cropping back to
            ``h x w``; 0 disables cropping.
        flip: flip each image left-right with probability 1/2.

    Returns:
        ``[n, h, w, c]`` augmented images.
    """
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    return images


def _as_float(images: jax.Array) -> jax.Array:
    # Loaders hand out uint8; models want float32 in [0, 1].
    if images.dtype == jnp.uint8:
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


# ------------------------------------------------------------------- compiled programs

_TRACES: dict[str, int] = {"train_step": 0, "apply": 0, "batch_moments": 0}
_COMPILED: OrderedDict[Any, Any] = OrderedDict()
_MAX_COMPILED = 64


def trace_count(name: str = "train_step") -> int:
    """How many times the named program was traced.

    Programs: ``"train_step"``, ``"apply"`` (evaluation, features) and
    ``"batch_moments"`` (BatchNorm recalibration).

    Each trace is followed by one compilation; tests use this to check that training
    compiles once per shape.
    """
    return _TRACES[name]


def _compiled(name: str, fn: Callable[..., Any], static: Any, *args: Any) -> tuple[Any, float]:
    """The compiled ``fn(*args)`` for these static values and argument shapes.

    Returns:
        ``(executable, seconds spent compiling now)``; 0 seconds on a cache hit.
    """
    leaves, treedef = jax.tree_util.tree_flatten(args)
    # Placement is part of the key: an executable is bound to its input shardings.
    avals = tuple(
        (np.shape(x), str(x.dtype), bool(getattr(x, "weak_type", False)),
         getattr(x, "sharding", None))
        for x in leaves
    )  # fmt: skip
    key = (name, static, treedef, avals)
    if key in _COMPILED:
        _COMPILED.move_to_end(key)
        return _COMPILED[key], 0.0
    start = time.perf_counter()
    executable = jax.jit(fn).lower(*args).compile()
    seconds = time.perf_counter() - start
    _COMPILED[key] = executable
    if len(_COMPILED) > _MAX_COMPILED:
        _COMPILED.popitem(last=False)
    return executable, seconds


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
    _TRACES["train_step"] += 1
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
    _TRACES["apply"] += 1
    model = nnx.merge(graphdef, state)
    x = _as_float(images)
    if with_features:
        features = model.features(x)
        return model.head(features), features
    return model(x)


def _batch_moments(
    graphdef: nnx.GraphDef, params: nnx.State, stats: nnx.State, other: nnx.State, images: jax.Array
) -> dict[str, Any]:
    _TRACES["batch_moments"] += 1
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
    executable, compile_s = None, 0.0
    for batch in batches:
        args = (params, stats, other, images[chosen[batch]])
        if executable is None:
            executable, compile_s = _compiled(
                "batch_moments", functools.partial(_batch_moments, graphdef), graphdef, *args
            )
        moments = executable(*args)
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
    executable = None
    for start in range(0, n, batch_size):
        batch = images[start : start + batch_size]
        rows = batch.shape[0]
        if rows < batch_size:
            # Pad to the fixed shape (no recompile); eval-mode BatchNorm keeps rows
            # independent, and the padding rows are sliced off below.
            pad = np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)
            batch = np.concatenate([batch, pad])
        if executable is None:
            executable, compile_s = _compiled(
                "apply",
                functools.partial(_apply, graphdef, with_features),
                (graphdef, with_features),
                state,
                batch,
            )
        out = executable(state, batch)
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
        eval_images: optional evaluation inputs, scored exactly after every epoch.
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
    total_steps = steps_per_epoch * config.epochs
    schedule = learning_rate_schedule(config, total_steps)
    learning_rates = np.asarray(jax.vmap(schedule)(jnp.arange(total_steps)), np.float32)

    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    options = _StepOptions.of(config)
    opt_state = options.unit_recipe().init(params)
    base_key = jax.random.key(config.seed)
    rng = np.random.default_rng(config.seed)

    train_losses, accuracies = [], []
    compile_s = 0.0
    step_fn = None
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    step = 0
    try:
        for epoch in range(config.epochs):
            epoch_losses = []
            for batch_index in _epoch_order(rng, n, config.batch_size):
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
                if step_fn is None:
                    step_fn, seconds = _compiled(
                        "train_step",
                        functools.partial(_train_step, graphdef, options),
                        (graphdef, options),
                        *args,
                    )
                    compile_s += seconds
                params, rest, opt_state, loss = step_fn(*args)
                if epoch_losses:
                    # One step stays in flight; the bar tracks finished steps.
                    epoch_losses[-1].block_until_ready()
                epoch_losses.append(loss)
                step += 1
                bar.update(1)
            train_losses.append(float(jnp.mean(jnp.stack(epoch_losses))))
            last_epoch = epoch == config.epochs - 1
            if eval_images is not None or last_epoch:
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
