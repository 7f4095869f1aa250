"""Datasets by name: `load_dataset`, `dataset_num_classes`, and `to_float` for batches.

Names: ``"fashion_mnist"``, ``"fashion_mnist_rot4"``, ``"digits"`` and ``"tfds:<name>"``
(see `leep_jax.data`).
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from leep_jax.data.digits import load_digits
from leep_jax.data.fashion_mnist import load_fashion_mnist
from leep_jax.data.tfds import load_tfds, tfds_num_classes

__all__ = ["dataset_num_classes", "load_dataset", "to_float"]

_TFDS_PREFIX = "tfds:"
_BUILTIN_NUM_CLASSES = {"fashion_mnist": 10, "fashion_mnist_rot4": 40, "digits": 10}
BUILTIN_DATASETS = tuple(_BUILTIN_NUM_CLASSES)
_ROTATIONS = 4


@functools.cache
def load_fashion_mnist_rot4(split: str) -> tuple[np.ndarray, np.ndarray]:
    """FashionMNIST with a 40-class label space: each class crossed with four rotations.

    Every image is rotated by ``r * 90`` degrees (counter-clockwise), ``r`` drawn once
    per image from a fixed seed (per split), and labelled ``4 * c + r`` for its
    FashionMNIST class ``c``: classes ``4c .. 4c + 3`` are class ``c`` in its four
    orientations. A source trained on it has a large label space (40 classes) over the
    same images as FashionMNIST, the construction the LEEP reproduction uses to test
    LEEP against NCE with a many-class source.

    Returns:
      Read-only ``(images, labels)``: uint8 ``[n, 28, 28, 1]`` and int32 ``[n]`` in
      0..39, ``n`` as in FashionMNIST's split.
    """
    images, labels = load_fashion_mnist(split)
    seed = {"train": 0, "test": 1}.get(split, 2)
    rotations = np.random.default_rng(seed).integers(0, _ROTATIONS, size=labels.shape[0])
    out = np.empty_like(images)
    for r in range(_ROTATIONS):
        rows = rotations == r
        out[rows] = np.rot90(images[rows], k=r, axes=(1, 2))
    new_labels = (np.asarray(labels) * _ROTATIONS + rotations).astype(np.int32)
    out.setflags(write=False)
    new_labels.setflags(write=False)
    return out, new_labels


def _tfds_name(name: str) -> str:
    tfds_name = name[len(_TFDS_PREFIX) :]
    if not tfds_name:
        raise ValueError(f"dataset {name!r}: give a TFDS name after 'tfds:', e.g. 'tfds:cifar10'")
    return tfds_name


def _unknown(name: str) -> ValueError:
    return ValueError(
        f"unknown dataset {name!r}: expected 'fashion_mnist', 'fashion_mnist_rot4', 'digits' "
        "or 'tfds:<name>'"
    )


def load_dataset(
    name: str, split: str, *, image_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a split of a dataset by name.

    Args:
      name: ``"fashion_mnist"``, ``"fashion_mnist_rot4"`` (`load_fashion_mnist_rot4`),
        ``"digits"`` or ``"tfds:<name>"``.
      split: ``"train"`` or ``"test"`` (for TFDS, any TFDS split string).
      image_size: output height and width. FashionMNIST (both forms) is 28x28 only (None or 28);
        digits default to 28; TFDS images keep their size unless given.

    Returns:
      ``(images, labels)``: uint8 ``[n, h, w, c]`` and int32 ``[n]`` (read-only for
      the cached fashion_mnist and digits loaders).

    Raises:
      ValueError: unknown name, bad split or size, corrupt files.
      FileNotFoundError: the data is not available (the message says how to get it).
      ImportError: a TFDS dataset without the ``tfds`` extra installed.
    """
    if name == "fashion_mnist":
        if image_size not in (None, 28):
            raise ValueError(f"fashion_mnist images are 28x28, got image_size={image_size}")
        return load_fashion_mnist(split)
    if name == "fashion_mnist_rot4":
        if image_size not in (None, 28):
            raise ValueError(f"fashion_mnist_rot4 images are 28x28, got image_size={image_size}")
        return load_fashion_mnist_rot4(split)
    if name == "digits":
        return load_digits(split, size=28 if image_size is None else image_size)
    if name.startswith(_TFDS_PREFIX):
        return load_tfds(_tfds_name(name), split, image_size=image_size)
    raise _unknown(name)


def dataset_num_classes(name: str) -> int:
    """Number of classes of a dataset accepted by :func:`load_dataset`.

    Raises:
      ValueError: unknown name.
      ImportError: a TFDS dataset without the ``tfds`` extra installed.
    """
    if name in _BUILTIN_NUM_CLASSES:
        return _BUILTIN_NUM_CLASSES[name]
    if name.startswith(_TFDS_PREFIX):
        return tfds_num_classes(_tfds_name(name))
    raise _unknown(name)


def to_float(images: ArrayLike) -> np.ndarray:
    """Converts a batch of images to float32 NHWC in [0, 1].

    Args:
      images: ``[n, h, w, c]``, uint8 (scaled by 1/255) or floating point already in
        [0, 1] (cast to float32).

    Returns:
      float32 ``[n, h, w, c]`` in [0, 1].

    Raises:
      ValueError: not rank 4, an unsupported dtype (e.g. int32, bool), or floating
        values outside [0, 1] or not finite.
    """
    array = np.asarray(images)
    if array.ndim != 4:
        raise ValueError(f"images must be NHWC [n, h, w, c], got shape {array.shape}")
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if jnp.issubdtype(array.dtype, jnp.floating):  # includes bfloat16
        out = array.astype(np.float32)
        if out.size and not (np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0):
            raise ValueError("floating-point images must be finite and in [0, 1]")
        return out
    raise ValueError(f"images must be uint8 or floating point in [0, 1], got {array.dtype}")
