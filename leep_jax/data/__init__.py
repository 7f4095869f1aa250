"""Datasets and target tasks.

Loaders return NumPy arrays: uint8 images ``[n, h, w, c]`` (NHWC) and int32 labels
``[n]``; :func:`to_float` turns images into the float32 [0, 1] batches models take.

Dataset names understood by :func:`load_dataset` (and the CLI):

* ``"fashion_mnist"``: FashionMNIST from its IDX files (:mod:`.fashion_mnist`);
* ``"fashion_mnist_rot4"``: FashionMNIST's classes crossed with four rotations, 40
  classes (`load_fashion_mnist_rot4`);
* ``"digits"``: scikit-learn's 8x8 handwritten digits, resized (:mod:`.digits`);
* ``"tfds:<name>"``: any TFDS image-classification dataset, e.g. ``"tfds:cifar10"``
  (needs ``pip install 'leep-jax[tfds]'``; :mod:`.tfds`).

Target tasks: :mod:`.tasks` makes and samples them (`TargetTask`, `make_task`,
`sample_tasks`), :mod:`.target` loads one by dataset name (`load_target_task`), and
:mod:`.task` says what code that reads a task needs (`Task`, `TaskArrays`,
`match_channels`).
"""

from __future__ import annotations

from leep_jax.data.datasets import (
    BUILTIN_DATASETS,
    dataset_num_classes,
    load_dataset,
    load_fashion_mnist_rot4,
    to_float,
)
from leep_jax.data.digits import load_digits
from leep_jax.data.fashion_mnist import load_fashion_mnist
from leep_jax.data.idx import read_idx
from leep_jax.data.target import load_target_task
from leep_jax.data.task import Task, TaskArrays, match_channels
from leep_jax.data.tasks import TargetTask, imbalanced_class_sizes, make_task, sample_tasks
from leep_jax.data.tfds import load_tfds, tfds_batches, tfds_num_classes

__all__ = [
    "BUILTIN_DATASETS",
    "TargetTask",
    "Task",
    "TaskArrays",
    "dataset_num_classes",
    "imbalanced_class_sizes",
    "load_dataset",
    "load_digits",
    "load_fashion_mnist",
    "load_fashion_mnist_rot4",
    "load_target_task",
    "load_tfds",
    "make_task",
    "match_channels",
    "read_idx",
    "sample_tasks",
    "tfds_batches",
    "tfds_num_classes",
    "to_float",
]
