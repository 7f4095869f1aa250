"""Ground-truth transfer: head re-training, fine-tuning, training from scratch.

LEEP predicts the accuracy these methods reach on a target task; the experiments
compare the prediction with the real thing. All three share the recipe of
`leep_jax.transfer.train` (SGD + Nesterov, cosine schedule, kernel-only weight decay)
and return a `TransferResult`.

* `retrain_head` (the paper's "re-train head", Sec. 5.1): the source body is frozen
  and a new linear head is trained. The frozen features are computed once, in one
  eval-mode pass over the train and test images, and the head is trained on them. This
  is exactly equivalent to training through a frozen body without augmentation, and
  orders of magnitude faster; it is the standard way to fit linear probes. (Random-crop
  augmentation does not apply here, since each image's features are computed once.)
* `fine_tune`: a copy of the source model with a new head; every layer trains.
  Its defaults equal `train_from_scratch`'s, so that the two compare like for like.
* `train_from_scratch`: the same architecture from random weights, the paper's
  reference for how much the source helps.

The source model is never modified: `retrain_head` only reads it and `fine_tune`
trains a copy (`nnx.clone`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol

import numpy as np
from flax import nnx

from leep_jax.models import build_model
from leep_jax.transfer.train import FitHistory, TrainConfig, _apply_batched, fit

__all__ = ["TransferResult", "fine_tune", "retrain_head", "train_from_scratch"]

Method = Literal["retrain_head", "fine_tune", "train_from_scratch"]


class Task(Protocol):
    """What the methods read from a target task (`leep_jax.data.TargetTask` fits)."""

    @property
    def num_classes(self) -> int: ...

    @property
    def train_images(self) -> np.ndarray: ...

    @property
    def train_labels(self) -> np.ndarray: ...

    @property
    def test_images(self) -> np.ndarray: ...

    @property
    def test_labels(self) -> np.ndarray: ...


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


def _task_arrays(task: Task) -> tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    num_classes = int(task.num_classes)
    if num_classes < 2:
        raise ValueError(f"a target task needs at least 2 classes, got {num_classes}")
    # TargetTask gathers images on every attribute access: read each split once.
    train_images, test_images = task.train_images, task.test_images
    train_labels = np.asarray(task.train_labels)
    test_labels = np.asarray(task.test_labels)
    for split, labels in (("train", train_labels), ("test", test_labels)):
        if labels.size == 0:
            raise ValueError(f"the task's {split} split is empty")
        if labels.min() < 0 or labels.max() >= num_classes:
            raise ValueError(
                f"{split} labels must lie in [0, {num_classes}), got "
                f"[{labels.min()}, {labels.max()}]"
            )
    return num_classes, train_images, train_labels, test_images, test_labels


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


def _with_new_head(source_model: nnx.Module, num_classes: int, seed: int) -> nnx.Module:
    """A copy of ``source_model`` whose head is a fresh ``feature_dim -> num_classes`` Linear."""
    model = nnx.clone(source_model)
    model.head = nnx.Linear(model.feature_dim, num_classes, rngs=nnx.Rngs(seed))
    model.num_classes = num_classes  # keeps model.config() (and checkpoints) truthful
    return model


def retrain_head(
    source_model: nnx.Module,
    task: Task,
    *,
    epochs: int = 30,
    batch_size: int = 64,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    seed: int = 0,
    eval_batch_size: int = 512,
    progress: bool = False,
) -> TransferResult:
    """Freezes the source body and trains a new linear head on the target task.

    The body's features are computed once (one eval-mode pass over the train and test
    images) and the head is trained on them with the shared recipe (cosine schedule, no
    augmentation).

    Args:
        source_model: a source model (``features``, ``head``, ``feature_dim``); not
            modified.
        task: the target task (``num_classes``, train/test images and labels).
        epochs: passes over the target training set.
        batch_size: examples per step.
        lr: peak learning rate.
        weight_decay: L2 coefficient on the head's kernel.
        seed: seeds the head's initialisation and the data order.
        eval_batch_size: batch size of the feature extraction.
        progress: show a progress bar.

    Returns:
        The result; ``result.model`` is a copy of the source body with the trained head.

    Raises:
        ValueError: on an empty task, labels outside ``[0, num_classes)`` or bad
            hyper-parameters.
    """
    start = time.perf_counter()
    num_classes, train_images, train_labels, test_images, test_labels = _task_arrays(task)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        schedule="cosine",
        crop_padding=0,
        flip=False,
        seed=seed,
        eval_batch_size=eval_batch_size,
    )
    # Eval mode on a copy: the caller's model keeps its mode (and is never written).
    body = nnx.clone(source_model)
    (_, train_features), compile_train_s = _apply_batched(body, train_images, eval_batch_size, True)
    (_, test_features), compile_test_s = _apply_batched(body, test_images, eval_batch_size, True)
    head = nnx.Linear(body.feature_dim, num_classes, rngs=nnx.Rngs(seed))
    history = fit(
        head,
        train_features,
        train_labels,
        config,
        eval_images=test_features,
        eval_labels=test_labels,
        progress=progress,
        desc="retrain head",
    )
    body.head = head
    body.num_classes = num_classes
    body.eval()
    return _result("retrain_head", history, body, start, compile_train_s + compile_test_s)


def fine_tune(
    source_model: nnx.Module,
    task: Task,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    crop_padding: int = 2,
    flip: bool = False,
    seed: int = 0,
    eval_batch_size: int = 512,
    progress: bool = False,
) -> TransferResult:
    """Fine-tunes all layers of a copy of the source model with a new linear head.

    Args:
        source_model: a source model (``features``, ``head``, ``feature_dim``); not
            modified (a copy is trained).
        task: the target task.
        epochs: passes over the target training set.
        batch_size: examples per step.
        lr: peak learning rate (cosine schedule).
        weight_decay: L2 coefficient on kernels.
        crop_padding: random-crop padding in pixels (0: no crops).
        flip: random horizontal flips (leave off for digits).
        seed: seeds the head's initialisation, data order and augmentation.
        eval_batch_size: batch size of the per-epoch evaluation.
        progress: show a progress bar.

    Returns:
        The result; ``result.model`` is the fine-tuned copy.

    Raises:
        ValueError: on an empty task, bad labels or bad hyper-parameters.
    """
    start = time.perf_counter()
    num_classes, train_images, train_labels, test_images, test_labels = _task_arrays(task)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        schedule="cosine",
        crop_padding=crop_padding,
        flip=flip,
        seed=seed,
        eval_batch_size=eval_batch_size,
    )
    model = _with_new_head(source_model, num_classes, seed)
    history = fit(
        model,
        train_images,
        train_labels,
        config,
        eval_images=test_images,
        eval_labels=test_labels,
        progress=progress,
        desc="fine-tune",
    )
    return _result("fine_tune", history, model, start)


ModelFactory = Callable[[int, nnx.Rngs], nnx.Module]


def train_from_scratch(
    architecture: str | ModelFactory,
    task: Task,
    *,
    model_kwargs: Mapping[str, Any] | None = None,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 5e-4,
    crop_padding: int = 2,
    flip: bool = False,
    seed: int = 0,
    eval_batch_size: int = 512,
    progress: bool = False,
) -> TransferResult:
    """Trains the architecture from random weights on the target task.

    Args:
        architecture: a `leep_jax.models.build_model` name (``"resnet20"``,
            ``"small_cnn"``, ...) or a factory ``(num_classes, rngs) -> model``.
        task: the target task.
        model_kwargs: extra constructor arguments for a named architecture
            (``in_channels``, ``width``, ...); ``in_channels`` defaults to the task's.
        epochs: passes over the target training set.
        batch_size: examples per step.
        lr: peak learning rate (cosine schedule).
        weight_decay: L2 coefficient on kernels.
        crop_padding: random-crop padding in pixels (0: no crops).
        flip: random horizontal flips.
        seed: seeds the initialisation, data order and augmentation.
        eval_batch_size: batch size of the per-epoch evaluation.
        progress: show a progress bar.

    Returns:
        The result; ``result.model`` is the trained model.

    Raises:
        ValueError: on an unknown architecture, an empty task, bad labels or bad
            hyper-parameters.
    """
    start = time.perf_counter()
    num_classes, train_images, train_labels, test_images, test_labels = _task_arrays(task)
    config = TrainConfig(
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=lr,
        weight_decay=weight_decay,
        schedule="cosine",
        crop_padding=crop_padding,
        flip=flip,
        seed=seed,
        eval_batch_size=eval_batch_size,
    )
    rngs = nnx.Rngs(seed)
    if isinstance(architecture, str):
        kwargs = {"in_channels": int(np.shape(train_images)[-1]), **(model_kwargs or {})}
        model = build_model(architecture, num_classes=num_classes, rngs=rngs, **kwargs)
    else:
        if model_kwargs:
            raise ValueError("model_kwargs only apply to a named architecture")
        model = architecture(num_classes, rngs)
    history = fit(
        model,
        train_images,
        train_labels,
        config,
        eval_images=test_images,
        eval_labels=test_labels,
        progress=progress,
        desc="from scratch",
    )
    return _result("train_from_scratch", history, model, start)
