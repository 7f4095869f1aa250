"""Target tasks by dataset name: `load_target_task` (what ``leep-jax rank`` ranks for).

A seed names a task: without explicit classes, the task generator draws them
(`leep_jax.data.sample_tasks`), so ``load_target_task("digits", num_classes=5, seed=0)``
is the same task on every machine.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from leep_jax.data.datasets import dataset_num_classes, load_dataset
from leep_jax.data.tasks import TargetTask, make_task, sample_tasks

__all__ = ["load_target_task"]


def load_target_task(
    dataset: str = "digits",
    *,
    classes: Sequence[int] | None = None,
    num_classes: int = 5,
    train_per_class: int | None = None,
    test_per_class: int | None = None,
    seed: int = 0,
    image_size: int | None = None,
) -> TargetTask:
    """Builds a target task from a dataset by name.

    Without ``classes``, the task generator (`leep_jax.data.sample_tasks`) draws
    ``num_classes`` classes of the dataset with ``seed``, so a seed names a task.

    Args:
      dataset: ``"digits"``, ``"fashion_mnist"`` or ``"tfds:<name>"``.
      classes: original class ids of the task (label j stands for ``classes[j]``).
      num_classes: how many classes to draw when ``classes`` is not given.
      train_per_class: at most this many training examples per class (drawn with
        ``seed``); None keeps them all.
      test_per_class: at most this many test examples per class; None keeps them all.
      seed: seeds the class draw and the example draws.
      image_size: image height and width to load at (see `leep_jax.data.load_dataset`).

    Returns:
      The `TargetTask`.

    Raises:
      ValueError: unknown dataset, fewer than 2 classes, repeated classes or classes
        out of range, bad per-class counts.
      FileNotFoundError: the dataset is not available (the message says how to get it).
      ImportError: a TFDS dataset without the ``tfds`` extra.
    """
    total = dataset_num_classes(dataset)  # checks the name before any loading
    if classes is not None:
        classes = tuple(int(c) for c in classes)
        if len(classes) < 2:
            raise ValueError(f"a target task needs at least 2 classes, got {len(classes)}")
        bad = [c for c in classes if not 0 <= c < total]
        if bad:
            raise ValueError(
                f"class {bad[0]} is out of range for {dataset} (classes 0..{total - 1})"
            )
        if len(set(classes)) != len(classes):
            raise ValueError(f"classes must be distinct, got {','.join(map(str, classes))}")
    elif not 2 <= num_classes <= total:
        raise ValueError(
            f"num_classes must be between 2 and {total} for {dataset}, got {num_classes}"
        )
    for what, value in (("train_per_class", train_per_class), ("test_per_class", test_per_class)):
        if value is not None and value < 1:
            raise ValueError(f"{what} must be a positive int, got {value}")

    splits = [load_dataset(dataset, split, image_size=image_size) for split in ("train", "test")]
    common = {
        "regime": "large" if train_per_class is None else "small",
        "max_per_class": train_per_class or 1,
        "max_test_per_class": test_per_class,
        "dataset": dataset,
    }
    if classes is None:
        (task,) = sample_tasks(
            *splits,
            class_pool=range(total),
            num_tasks=1,
            seed=seed,
            min_classes=num_classes,
            max_classes=num_classes,
            **common,
        )
        # The generator seeds each task from a child of `seed`; record the seed that
        # reproduces this one.
        return dataclasses.replace(task, seed=seed)
    return make_task(*splits, classes, seed=seed, **common)
