"""Target pools and the tasks drawn from them, with their deterministic ids.

A pool holds at most ``large_per_class`` training and ``test_per_class`` test examples
per class of a pair's target; every task of the pair is an index subset of it
(`leep_jax.data.sample_tasks`), so a source model's outputs over the pool, computed
once (`pool_outputs`), serve every task.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from flax import nnx

from leep_jax.data import dataset_num_classes, load_dataset, sample_tasks
from leep_jax.data.task import match_channels
from leep_jax.data.tasks import TargetTask, num_class_sets
from leep_jax.experiments.config import ExperimentConfig, derive_seed
from leep_jax.experiments.pairs import DatasetSlice
from leep_jax.transfer.train import predict

__all__ = [
    "Pool",
    "PoolOutputs",
    "load_pool",
    "lr_run_id",
    "pair_tasks",
    "pool_outputs",
    "rq4_row_id",
    "rq4_task_count",
    "rq4_tasks",
    "task_count",
    "task_id",
    "validation_tasks",
]


@dataclasses.dataclass
class Pool:
    """A target pool: capped per-class subsets of a dataset's splits.

    Attributes:
      target: the dataset (or class set) the pool is drawn from.
      train: ``(images [n, h, w, c], labels [n])`` of the training split.
      test: ``(images [m, h, w, c], labels [m])`` of the test split.
    """

    target: DatasetSlice
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]

    def with_channels(self, channels: int) -> Pool:
        if self.train[0].shape[-1] == channels:
            return self
        return Pool(
            self.target,
            (match_channels(self.train[0], channels), self.train[1]),
            (match_channels(self.test[0], channels), self.test[1]),
        )


def _capped_rows(
    labels: np.ndarray, classes: Sequence[int], cap: int | None, rng: np.random.Generator
) -> np.ndarray:
    rows = []
    for c in classes:
        pool = np.flatnonzero(labels == c)
        if pool.size == 0:
            raise ValueError(f"class {c} has no examples")
        if cap is not None and pool.size > cap:
            pool = np.sort(rng.choice(pool, size=cap, replace=False))
        rows.append(pool)
    return np.sort(np.concatenate(rows))


def load_pool(target: DatasetSlice, config: ExperimentConfig) -> Pool:
    """The target pool of ``target``: per class at most ``config.large_per_class`` training
    and ``config.test_per_class`` test examples, drawn with the config's seed.

    Raises:
      ValueError: a class out of range or without examples.
      FileNotFoundError, ImportError: the dataset is not available.
    """
    classes = target.class_ids()
    total = dataset_num_classes(target.dataset)
    if classes[-1] >= total:
        raise ValueError(f"class {classes[-1]} out of range for {target.dataset} (0..{total - 1})")
    rng = np.random.default_rng(derive_seed(config.seed, "pool", target))
    splits = []
    for split, cap in (("train", config.large_per_class), ("test", config.test_per_class)):
        images, labels = load_dataset(target.dataset, split)
        rows = _capped_rows(np.asarray(labels), classes, cap, rng)
        splits.append((np.asarray(images)[rows], np.asarray(labels)[rows]))
    return Pool(target, splits[0], splits[1])


def _regime_kwargs(regime: str, config: ExperimentConfig) -> dict[str, Any]:
    if regime == "large_balanced":
        return {"regime": "large"}
    kwargs: dict[str, Any] = {"regime": "small", "max_per_class": config.small_per_class}
    if regime == "small_imbalanced":
        kwargs["imbalance_ratio"] = config.imbalance_ratio
    elif regime == "small_noisy":
        kwargs["noise_rate"] = config.noise_rate
    return kwargs


def _max_classes(pool: Pool, cap: int | None) -> int:
    classes = pool.target.class_ids()
    return len(classes) if cap is None else min(cap, len(classes))


def task_count(
    target: DatasetSlice, requested: int, max_classes: int | None, min_classes: int = 2
) -> int:
    """How many tasks a pool gives: ``requested``, or fewer when the pool has fewer
    distinct class sets of ``min_classes..max_classes`` classes (tasks never share
    one)."""
    size = len(target.class_ids())
    top = size if max_classes is None else min(max_classes, size)
    return min(requested, num_class_sets(size, min(min_classes, top), top))


def pair_tasks(pool: Pool, pair: str, regime: str, config: ExperimentConfig) -> list[TargetTask]:
    """The RQ1-RQ3 tasks of a pair in one regime: 2..``max_classes`` classes each, no
    two with the same class set (`task_count` of them)."""
    return sample_tasks(
        pool.train,
        pool.test,
        class_pool=pool.target.class_ids(),
        num_tasks=task_count(pool.target, config.tasks_per_regime[regime], config.max_classes),
        seed=derive_seed(config.seed, pair, regime),
        min_classes=2,
        max_classes=_max_classes(pool, config.max_classes),
        dataset=pool.target.dataset,
        distinct=True,
        **_regime_kwargs(regime, config),
    )


def rq4_tasks(pool: Pool, config: ExperimentConfig) -> list[TargetTask]:
    """The RQ4 tasks of a target pool: large regime, ``rq4_num_classes`` classes each
    (`rq4_task_count` of them, distinct class sets)."""
    k = _max_classes(pool, config.rq4_num_classes)
    return sample_tasks(
        pool.train,
        pool.test,
        class_pool=pool.target.class_ids(),
        num_tasks=rq4_task_count(pool.target, config),
        seed=derive_seed(config.seed, "rq4", pool.target),
        min_classes=k,
        max_classes=k,
        dataset=pool.target.dataset,
        distinct=True,
        regime="large",
    )


def rq4_task_count(target: DatasetSlice, config: ExperimentConfig) -> int:
    """How many RQ4 tasks a target pool gives (`task_count` at one class count)."""
    return task_count(target, config.rq4_tasks, config.rq4_num_classes, config.rq4_num_classes)


def validation_tasks(pool: Pool, scope: str, config: ExperimentConfig) -> list[TargetTask]:
    """Tasks that choose learning rates: built from the pool's TRAINING split only.

    Each class's pool training examples are split (seeded) into a part the validation
    tasks train on and a ``validation_fraction`` they are evaluated on; the test split,
    on which the experiment's accuracies are measured, is never used.
    """
    labels = pool.train[1]
    rng = np.random.default_rng(derive_seed(config.seed, "validation", scope))
    fit_rows, val_rows = [], []
    for c in pool.target.class_ids():
        rows = rng.permutation(np.flatnonzero(labels == c))
        held_out = max(1, round(config.validation_fraction * rows.size))
        val_rows.append(rows[:held_out])
        fit_rows.append(rows[held_out:])
    fit, val = np.sort(np.concatenate(fit_rows)), np.sort(np.concatenate(val_rows))
    images = pool.train[0]
    return sample_tasks(
        (images[fit], labels[fit]),
        (images[val], labels[val]),
        class_pool=pool.target.class_ids(),
        num_tasks=task_count(pool.target, config.validation_tasks, config.max_classes),
        seed=derive_seed(config.seed, "validation-tasks", scope),
        min_classes=2,
        max_classes=_max_classes(pool, config.max_classes),
        dataset=pool.target.dataset,
        distinct=True,
        regime="large",
    )


def task_id(pair: str, regime: str, index: int) -> str:
    """The deterministic id of target task ``index`` of a pair and regime."""
    return f"{pair}|{regime}|{index:03d}"


def lr_run_id(scope: str, method: str, learning_rate: float, index: int) -> str:
    """The deterministic id of one learning-rate validation run."""
    return f"lr|{scope}|{method}|{learning_rate:g}|{index:03d}"


def rq4_row_id(target: str, index: int, model: str) -> str:
    """The deterministic id of one (RQ4 target task, zoo model) row."""
    return f"rq4|{target}|{index:03d}|{model}"


@dataclasses.dataclass(frozen=True)
class PoolOutputs:
    """A source model's outputs over a whole pool (every task indexes into them).

    Attributes:
      train_logits: ``[n, num_source_classes]`` logits of the pool's training images.
      train_features: ``[n, feature_dim]`` their penultimate features.
      test_features: ``[m, feature_dim]`` features of the pool's test images.
      num_pool_classes: classes in the pool (tasks use some of them).
      forward_s: wall-clock seconds of the forward passes.
      num_images: ``n + m``.
    """

    train_logits: np.ndarray
    train_features: np.ndarray
    test_features: np.ndarray
    num_pool_classes: int
    forward_s: float
    num_images: int


def pool_outputs(model: nnx.Module, pool: Pool, batch_size: int) -> PoolOutputs:
    """The model's logits and features over the whole pool: ONE forward pass per image."""
    start = time.perf_counter()
    train_logits, train_features = predict(model, pool.train[0], batch_size=batch_size)
    _, test_features = predict(model, pool.test[0], batch_size=batch_size)
    return PoolOutputs(
        train_logits=np.asarray(train_logits),
        train_features=np.asarray(train_features),
        test_features=np.asarray(test_features),
        num_pool_classes=len(pool.target.class_ids()),
        forward_s=time.perf_counter() - start,
        num_images=int(pool.train[0].shape[0] + pool.test[0].shape[0]),
    )
