"""The target sets of a sweep: ``NAME[:CLASSES]`` parsed, loaded, and preprocessed per model.

``NAME`` is ``fashion_mnist``, ``digits``, ``tfds:NAME`` (with the ``tfds`` extra) or an
``.npz`` file holding ``images`` ``[n, h, w(, c)]`` and integer ``labels`` ``[n]``;
``CLASSES`` is a comma-separated subset of the dataset's class ids (label j stands for
the j-th listed class). Without it, a named dataset draws ``num_classes`` classes with
``seed`` (as ``leep-jax rank`` does) and an ``.npz`` keeps every class it holds.
``train_per_class`` caps the examples per class (drawn with ``seed``).
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from leep_jax.data import load_target_task, match_channels, to_float
from leep_jax.models.adapters import Preprocess

__all__ = ["Target", "TargetOptions", "load_target", "parse_target", "preprocess_images"]

_CLASSES = re.compile(r"^\d+(,\d+)*$")
_NAMED = ("fashion_mnist", "digits")


@dataclasses.dataclass(frozen=True)
class TargetOptions:
    """How a target set is drawn from its dataset (the options of ``leep-jax rank``)."""

    num_classes: int = 5
    train_per_class: int | None = 50
    seed: int = 0


@dataclasses.dataclass(frozen=True, eq=False)
class Target:
    """A loaded target set: the examples a sweep scores every model on.

    Attributes:
      name: the ``--target`` text, the key of its rows in the results.
      dataset: the dataset part of ``name``.
      classes: the dataset's class ids; label j stands for ``classes[j]``.
      images: ``[n, h, w, c]`` uint8, or float in [0, 1].
      labels: ``int32[n]`` in ``[0, len(classes))``.
      rows: ``int64[n]`` rows of the dataset's training split (for precomputed outputs).
      options: the options it was drawn with.
    """

    name: str
    dataset: str
    classes: tuple[int, ...]
    images: np.ndarray
    labels: np.ndarray
    rows: np.ndarray
    options: TargetOptions

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def describe(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "classes": list(self.classes),
            "num_examples": int(self.labels.shape[0]),
            "image_shape": list(self.images.shape[1:]),
            **dataclasses.asdict(self.options),
        }


def parse_target(text: str) -> tuple[str, tuple[int, ...] | None]:
    """``(dataset, classes or None)`` of ``NAME[:CLASSES]``.

    Raises:
      ValueError: an unknown dataset name, an ``.npz`` that does not exist, or a class
        list that is not comma-separated integers.
    """
    name, classes = text, None
    head, sep, tail = text.rpartition(":")
    if sep and _CLASSES.match(tail) and head not in ("", "tfds"):
        name, classes = head, tuple(int(c) for c in tail.split(","))
    elif sep and head in _NAMED:
        raise ValueError(f"target {text!r}: classes must be comma-separated integers")
    if name in _NAMED or (name.startswith("tfds:") and len(name) > len("tfds:")):
        return name, classes
    if name.endswith(".npz"):
        if not Path(name).expanduser().is_file():
            raise ValueError(f"target {text!r}: no such .npz file")
        return name, classes
    raise ValueError(
        f"unknown target {text!r}: expected fashion_mnist, digits, tfds:NAME or an .npz "
        "file, optionally followed by :CLASSES (e.g. digits:0,2,4)"
    )


def _npz_target(text: str, path: str, classes, options: TargetOptions) -> Target:
    try:
        with np.load(Path(path).expanduser(), allow_pickle=False) as data:
            images, labels = np.asarray(data["images"]), np.asarray(data["labels"])
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"target {text!r}: cannot read images and labels: {error}") from None
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or labels.shape != images.shape[:1]:
        raise ValueError(
            f"target {text!r}: need images [n, h, w(, c)] and labels [n], got "
            f"{images.shape} and {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"target {text!r}: labels must be integers, got {labels.dtype}")
    present = tuple(int(c) for c in np.unique(labels))
    classes = present if classes is None else classes
    absent = [c for c in classes if c not in present]
    if absent or len(set(classes)) != len(classes) or len(classes) < 2:
        problem = f"class {absent[0]} has no examples" if absent else "need >= 2 distinct classes"
        raise ValueError(f"target {text!r}: {problem}")
    rng = np.random.default_rng(options.seed)
    rows = []
    for c in classes:
        members = np.flatnonzero(labels == c)
        if options.train_per_class is not None and members.size > options.train_per_class:
            members = np.sort(rng.choice(members, options.train_per_class, replace=False))
        rows.append(members)
    rows = np.sort(np.concatenate(rows))
    lookup = {c: j for j, c in enumerate(classes)}
    relabelled = np.asarray([lookup[int(c)] for c in labels[rows]], np.int32)
    to_float(images[:1])  # checks the dtype and range of the first image early
    return Target(text, path, classes, images[rows], relabelled, rows, options)


def load_target(text: str, options: TargetOptions = TargetOptions()) -> Target:
    """Loads the target set named by ``text`` (see :func:`parse_target`).

    Raises:
      ValueError: a bad name, classes out of range, unreadable data.
      FileNotFoundError: the dataset is not available (the message says how to get it).
      ImportError: a TFDS dataset without the ``tfds`` extra.
    """
    dataset, classes = parse_target(text)
    if dataset.endswith(".npz"):
        return _npz_target(text, dataset, classes, options)
    task = load_target_task(
        dataset,
        classes=classes,
        num_classes=options.num_classes,
        train_per_class=options.train_per_class,
        test_per_class=1,
        seed=options.seed,
    )
    return Target(
        text,
        dataset,
        tuple(int(c) for c in task.classes),
        np.asarray(task.train_images),
        np.asarray(task.train_labels, np.int32),
        np.asarray(task.train_indices, np.int64),
        options,
    )


def preprocess_images(images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """``images`` as float32 NHWC, converted as ``preprocess`` declares.

    Raises:
      ValueError: images a preprocessing step cannot take (e.g. 2 channels).
    """
    images = to_float(images)
    if preprocess.channels is not None:
        images = match_channels(images, preprocess.channels)
    if preprocess.size is not None and images.shape[1:3] != (preprocess.size,) * 2:
        shape = (images.shape[0], preprocess.size, preprocess.size, images.shape[3])
        images = np.asarray(jax.image.resize(images, shape, "linear"), np.float32)
    if preprocess.mean is not None:
        images = images - np.asarray(preprocess.mean, np.float32)
    if preprocess.std is not None:
        images = images / np.asarray(preprocess.std, np.float32)
    return images
