"""Ground-truth transfer: head re-training, fine-tuning, training from scratch.

LEEP predicts the accuracy these methods reach on a target task; the experiments
compare the prediction with the real thing. All three train with the recipe of
`leep_jax.transfer.train` (one `TrainConfig` value each: `HEAD_RECIPE`,
`FINE_TUNE_RECIPE`, `SCRATCH_RECIPE`) and return a `TransferResult`. `METHODS` names
them, once for the whole package.

* `retrain_head` (the paper's "re-train head", Sec. 5.1): the source body is frozen
  and a new linear head is trained: `extract_features` (one eval-mode pass over the
  train and test images), then `train_head` on the features. This is exactly
  equivalent to training through a frozen body without augmentation, and orders of
  magnitude faster; it is the standard way to fit linear probes. The experiments call
  the two halves themselves, on features they computed once for a whole task pool.
* `fine_tune`: a copy of the source model with a new head; every layer trains.
  Its recipe equals `train_from_scratch`'s, so that the two compare like for like.
* `train_from_scratch`: the same architecture from random weights, the paper's
  reference for how much the source helps.

The source model is never modified: `retrain_head` only reads it and `fine_tune`
trains a copy (`nnx.clone`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from leep_jax.data.task import Task, TaskArrays
from leep_jax.models import build_model
from leep_jax.transfer.train import FitHistory, TrainConfig, extract_features, fit

__all__ = [
    "FINE_TUNE_RECIPE",
    "HEAD_RECIPE",
    "METHODS",
    "SCRATCH_RECIPE",
    "Method",
    "TransferResult",
    "extract_features",
    "fine_tune",
    "retrain_head",
    "train_from_scratch",
    "train_head",
]

Method = Literal["retrain_head", "fine_tune", "train_from_scratch"]
METHODS: tuple[Method, ...] = ("retrain_head", "fine_tune", "train_from_scratch")

# A linear head on frozen features: no augmentation applies (features are not images).
HEAD_RECIPE = TrainConfig(
    epochs=30, batch_size=64, learning_rate=0.1, schedule="cosine", crop_padding=0, flip=False
)
FINE_TUNE_RECIPE = TrainConfig(
    epochs=10, batch_size=64, learning_rate=0.05, schedule="cosine", crop_padding=2, flip=False
)
SCRATCH_RECIPE = FINE_TUNE_RECIPE  # like for like: the gain of fine-tuning is the source's


@dataclasses.dataclass(frozen=True)
class TransferResult:
    """The outcome of one transfer run.

    Attributes:
        method: ``"retrain_head"``, ``"fine_tune"`` or ``"train_from_scratch"``.
        test_accuracy: final accuracy over all target test examples.
        test_accuracy_curve: test accuracy after each epoch, ``[epochs]``.
        train_loss_curve: mean training cross-entropy of each epoch, ``[epochs]``.
        num_steps: optimisation steps taken.
        wall_time_s: wall-clock seconds of the whole call (feature extraction,
            compilation and per-epoch evaluation included).
        compile_time_s: the part of ``wall_time_s`` spent compiling.
        model: the trained target model (source body + new head for the transfer
            methods), in eval mode.
    """

    method: Method
    test_accuracy: float
    test_accuracy_curve: tuple[float, ...]
    train_loss_curve: tuple[float, ...]
    num_steps: int
    wall_time_s: float
    compile_time_s: float
    model: nnx.Module = dataclasses.field(repr=False, compare=False)


def _recipe(config: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig:
    return dataclasses.replace(config, **changes) if changes else config


def _result(
    method: Method,
    history: FitHistory,
    model: nnx.Module,
    start: float,
    extra_compile_s: float = 0.0,
) -> TransferResult:
    return TransferResult(
        method=method,
        test_accuracy=history.test_accuracy[-1],
        test_accuracy_curve=history.test_accuracy,
        train_loss_curve=history.train_loss,
        num_steps=history.num_steps,
        wall_time_s=time.perf_counter() - start,
        compile_time_s=history.compile_time_s + extra_compile_s,
        model=model,
    )


def train_head(
    features: ArrayLike,
    labels: ArrayLike,
    num_classes: int,
    config: TrainConfig = HEAD_RECIPE,
    *,
    eval_features: ArrayLike | None = None,
    eval_labels: ArrayLike | None = None,
    progress: bool = False,
) -> tuple[nnx.Linear, FitHistory]:
    """Trains a new linear head ``feature_dim -> num_classes`` on fixed features.

    Args:
        features: ``[n, feature_dim]`` training features.
        labels: ``[n]`` int labels in ``[0, num_classes)``.
        num_classes: Y, the head's width.
        config: the recipe (``config.seed`` also seeds the head's initialisation).
        eval_features: optional ``[m, feature_dim]`` features scored after every epoch.
        eval_labels: their ``[m]`` labels.
        progress: show a progress bar.

    Returns:
        ``(head, history)``: the trained ``nnx.Linear`` (eval mode) and what `fit`
        measured.
    """
    head = nnx.Linear(np.shape(features)[-1], num_classes, rngs=nnx.Rngs(config.seed))
    history = fit(
        head,
        features,
        labels,
        config,
        eval_images=eval_features,
        eval_labels=eval_labels,
        progress=progress,
        desc="retrain head",
    )
    return head, history


def retrain_head(
    source_model: nnx.Module,
    task: Task,
    config: TrainConfig = HEAD_RECIPE,
    *,
    progress: bool = False,
    **changes: Any,
) -> TransferResult:
    """Freezes the source body and trains a new linear head on the target task.

    The body's features are computed once (`extract_features` over the train and test
    images, batch ``config.eval_batch_size``) and the head is trained on them
    (`train_head`).

    Args:
        source_model: a source model (``features``, ``head``, ``feature_dim``); not
            modified.
        task: the target task (``num_classes``, train/test images and labels).
        config: the recipe; ``config.seed`` also seeds the head's initialisation.
        progress: show a progress bar.
        **changes: `TrainConfig` fields to change in ``config`` (`dataclasses.replace`),
            e.g. ``epochs=5``.

    Returns:
        The result; ``result.model`` is a copy of the source body with the trained head.

    Raises:
        ValueError: on an empty task, labels outside ``[0, num_classes)`` or bad
            hyper-parameters.
    """
    start = time.perf_counter()
    arrays = TaskArrays.of(task).check()
    config = _recipe(config, changes)
    train_features, compile_train_s = extract_features(
        source_model, arrays.train_images, config.eval_batch_size
    )
    test_features, compile_test_s = extract_features(
        source_model, arrays.test_images, config.eval_batch_size
    )
    head, history = train_head(
        train_features,
        arrays.train_labels,
        arrays.num_classes,
        config,
        eval_features=test_features,
        eval_labels=arrays.test_labels,
        progress=progress,
    )
    model = nnx.clone(source_model)
    model.head = head
    model.num_classes = arrays.num_classes  # keeps model.config() (and checkpoints) truthful
    model.eval()
    return _result("retrain_head", history, model, start, compile_train_s + compile_test_s)


def _with_new_head(source_model: nnx.Module, num_classes: int, seed: int) -> nnx.Module:
    """A copy of ``source_model`` whose head is a fresh ``feature_dim -> num_classes`` Linear."""
    model = nnx.clone(source_model)
    model.head = nnx.Linear(model.feature_dim, num_classes, rngs=nnx.Rngs(seed))
    model.num_classes = num_classes  # keeps model.config() (and checkpoints) truthful
    return model


def _fit_task(
    method: Method,
    model: nnx.Module,
    arrays: TaskArrays,
    config: TrainConfig,
    progress: bool,
    start: float,
    desc: str,
) -> TransferResult:
    history = fit(
        model,
        arrays.train_images,
        arrays.train_labels,
        config,
        eval_images=arrays.test_images,
        eval_labels=arrays.test_labels,
        progress=progress,
        desc=desc,
    )
    return _result(method, history, model, start)


def fine_tune(
    source_model: nnx.Module,
    task: Task,
    config: TrainConfig = FINE_TUNE_RECIPE,
    *,
    progress: bool = False,
    **changes: Any,
) -> TransferResult:
    """Fine-tunes all layers of a copy of the source model with a new linear head.

    Args:
        source_model: a source model (``features``, ``head``, ``feature_dim``); not
            modified (a copy is trained).
        task: the target task.
        config: the recipe; ``config.seed`` also seeds the new head.
        progress: show a progress bar.
        **changes: `TrainConfig` fields to change in ``config`` (`dataclasses.replace`).

    Returns:
        The result; ``result.model`` is the fine-tuned copy.

    Raises:
        ValueError: on an empty task, bad labels or bad hyper-parameters.
    """
    start = time.perf_counter()
    arrays = TaskArrays.of(task).check()
    config = _recipe(config, changes)
    model = _with_new_head(source_model, arrays.num_classes, config.seed)
    return _fit_task("fine_tune", model, arrays, config, progress, start, "fine-tune")


ModelFactory = Callable[[int, nnx.Rngs], nnx.Module]


def train_from_scratch(
    architecture: str | ModelFactory,
    task: Task,
    config: TrainConfig = SCRATCH_RECIPE,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    progress: bool = False,
    **changes: Any,
) -> TransferResult:
    """Trains the architecture from random weights on the target task.

    Args:
        architecture: a `leep_jax.models.build_model` name (``"resnet20"``,
            ``"small_cnn"``, ...) or a factory ``(num_classes, rngs) -> model``.
        task: the target task.
        config: the recipe; ``config.seed`` also seeds the initialisation.
        model_kwargs: extra constructor arguments for a named architecture
            (``in_channels``, ``width``, ...); ``in_channels`` defaults to the task's.
        progress: show a progress bar.
        **changes: `TrainConfig` fields to change in ``config`` (`dataclasses.replace`).

    Returns:
        The result; ``result.model`` is the trained model.

    Raises:
        ValueError: on an unknown architecture, an empty task, bad labels or bad
            hyper-parameters.
    """
    start = time.perf_counter()
    arrays = TaskArrays.of(task).check()
    config = _recipe(config, changes)
    rngs = nnx.Rngs(config.seed)
    if isinstance(architecture, str):
        kwargs = {"in_channels": int(arrays.train_images.shape[-1]), **(model_kwargs or {})}
        model = build_model(architecture, num_classes=arrays.num_classes, rngs=rngs, **kwargs)
    else:
        if model_kwargs:
            raise ValueError("model_kwargs only apply to a named architecture")
        model = architecture(arrays.num_classes, rngs)
    return _fit_task("train_from_scratch", model, arrays, config, progress, start, "from scratch")
