"""Adapter for TFDS image-classification datasets (cifar10, cifar100, imagenet2012, ...).

Needs the optional extra ``pip install 'leep-jax[tfds]'``. TensorFlow and
tensorflow-datasets are imported on first use only, so the rest of leep_jax works without
them. Batches come out as NumPy arrays: images NHWC (uint8, or float32 in [0, 1]) and
int32 labels, ready for ``jax.device_put``.

TFDS reads ``$TFDS_DATA_DIR`` once, when it is imported; here it is read on every call,
so the variable can be changed inside a running process (and in tests).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

_INSTALL_HINT = "pip install 'leep-jax[tfds]'"


def import_tfds() -> ModuleType:
    """Imports tensorflow_datasets (and TensorFlow) on first use.

    TensorFlow is kept off any GPU: JAX owns the accelerators, and TensorFlow would
    otherwise reserve most of their memory for its input pipeline.

    Returns:
      The ``tensorflow_datasets`` module.

    Raises:
      ImportError: tensorflow-datasets or TensorFlow is not installed; the message says
        how to install them.
    """
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise ImportError(
            "TFDS datasets need tensorflow and tensorflow-datasets, which are not "
            f"installed ({err}). Install the optional extra: {_INSTALL_HINT}"
        ) from err
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:
        pass  # TensorFlow already initialised its devices; nothing left to change.
    return tfds


def _resolve_data_dir(data_dir: str | os.PathLike | None) -> str | None:
    if data_dir is not None:
        return os.fspath(data_dir)
    return os.environ.get("TFDS_DATA_DIR") or None


def _builder(name: str, data_dir: str | os.PathLike | None) -> Any:
    tfds = import_tfds()
    try:
        return tfds.builder(name, data_dir=_resolve_data_dir(data_dir))
    except tfds.core.registered.DatasetNotFoundError as err:
        # TFDS's own message lists every registered dataset (hundreds of lines).
        raise ValueError(f"unknown TFDS dataset {name!r}") from err


def _check_features(builder: Any, image_key: str, label_key: str) -> tuple[Any, Any]:
    tfds = import_tfds()
    features = builder.info.features
    keys = sorted(features.keys())
    if image_key not in features or not isinstance(features[image_key], tfds.features.Image):
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no image feature {image_key!r} "
            f"(features: {keys}); pass image_key="
        )
    if label_key not in features or not isinstance(features[label_key], tfds.features.ClassLabel):
        raise ValueError(
            f"TFDS dataset {builder.name!r} has no class-label feature {label_key!r} "
            f"(features: {keys}); pass label_key="
        )
    return features[image_key], features[label_key]


def _image_size(image_size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if image_size is None:
        return None
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s >= 1 for s in size):
        raise ValueError(f"image_size must be a positive int or (height, width), got {image_size}")
    return size


def tfds_num_classes(
    name: str, *, label_key: str = "label", data_dir: str | os.PathLike | None = None
) -> int:
    """Number of classes of a TFDS dataset's label feature (from its metadata).

    Args:
      name: a TFDS name, e.g. ``"cifar100"``.
      label_key: the ClassLabel feature.
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or TFDS's default).

    Returns:
      The class count.

    Raises:
      ValueError: unknown dataset, or no ClassLabel feature ``label_key``.
      ImportError: the ``tfds`` extra is not installed.
    """
    builder = _builder(name, data_dir)
    features = builder.info.features
    if label_key not in features or not hasattr(features[label_key], "num_classes"):
        raise ValueError(f"TFDS dataset {name!r} has no class-label feature {label_key!r}")
    return int(features[label_key].num_classes)


def tfds_batches(
    name: str,
    split: str,
    *,
    batch_size: int = 256,
    image_size: int | tuple[int, int] | None = None,
    as_float: bool = False,
    image_key: str = "image",
    label_key: str = "label",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    shuffle: bool = False,
    seed: int = 0,
    drop_remainder: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Streams a TFDS image-classification split as NumPy batches.

    Args:
      name: a TFDS name, e.g. ``"cifar10"`` or ``"imagenet2012"``.
      split: a TFDS split string, e.g. ``"train"`` or ``"test[:10%]"``.
      batch_size: examples per batch (the last one may be smaller unless
        ``drop_remainder``).
      image_size: resize every image to this size (int for square, or (height, width));
        bilinear with antialiasing. Needed for datasets whose images differ in size.
      as_float: return float32 images in [0, 1] instead of uint8.
      image_key: the Image feature.
      label_key: the ClassLabel feature.
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or TFDS's default).
      download: let TFDS download and prepare the dataset if missing.
      shuffle: shuffle files and examples (deterministically from ``seed``).
      seed: shuffling seed.
      drop_remainder: drop the last batch when it is smaller than ``batch_size``.

    Returns:
      An iterator of ``(images, labels)``: images ``[b, h, w, c]`` uint8 (float32 if ``as_float``),
      labels ``[b]`` int32.

    Raises:
      ImportError: the ``tfds`` extra is not installed.
      ValueError: unknown dataset, missing features, images of varying size without
        ``image_size``, or a bad argument.
      FileNotFoundError: the dataset is not prepared and ``download`` is False.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size}")
    size = _image_size(image_size)
    tfds = import_tfds()
    import tensorflow as tf

    builder = _builder(name, data_dir)
    image_feature, _ = _check_features(builder, image_key, label_key)
    if size is None and None in tuple(image_feature.shape[:2]):
        raise ValueError(
            f"TFDS dataset {name!r} has images of varying size {image_feature.shape}; "
            "pass image_size= to resize them"
        )
    if download:
        builder.download_and_prepare()
    try:
        ds = builder.as_dataset(
            split=split,
            shuffle_files=shuffle,
            read_config=tfds.ReadConfig(shuffle_seed=seed),
        )
    except AssertionError as err:
        # TFDS signals "not downloaded and prepared" with an AssertionError.
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}: run "
            f"`tfds build {name}` (or pass download=True where the data can be reached), "
            "or set TFDS_DATA_DIR / data_dir to where it is prepared"
        ) from err

    def convert(example: dict[str, Any]) -> tuple[Any, Any]:
        image = example[image_key]
        if size is not None:
            # float32 out; the bilinear/triangle weights are convex, the clip guards rounding.
            image = tf.clip_by_value(
                tf.image.resize(image, size, method="bilinear", antialias=True), 0.0, 255.0
            )
        if as_float:
            image = tf.cast(image, tf.float32) / 255.0
        else:
            image = tf.cast(tf.round(image) if size is not None else image, tf.uint8)
        return image, tf.cast(example[label_key], tf.int32)

    ds = ds.map(convert, num_parallel_calls=tf.data.AUTOTUNE)
    if shuffle:
        ds = ds.shuffle(10_000, seed=seed, reshuffle_each_iteration=False)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    # A plain function returning an iterator (not a generator) so that bad arguments and
    # missing data raise here, at the call, rather than at the first next().
    return iter(tfds.as_numpy(ds))


def load_tfds(
    name: str,
    split: str,
    *,
    image_size: int | tuple[int, int] | None = None,
    image_key: str = "image",
    label_key: str = "label",
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    batch_size: int = 1024,
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a whole TFDS image-classification split into memory, in dataset order.

    Meant for datasets that fit in memory (CIFAR, FashionMNIST); stream large ones
    (ImageNet) with :func:`tfds_batches`. Not cached: each call reads the split again.

    Args:
      name: a TFDS name, e.g. ``"cifar100"``.
      split: a TFDS split string.
      image_size: resize every image to this size (see :func:`tfds_batches`).
      image_key: the Image feature.
      label_key: the ClassLabel feature.
      data_dir: TFDS data directory (default: ``$TFDS_DATA_DIR`` or TFDS's default).
      download: let TFDS download and prepare the dataset if missing.
      batch_size: read batch size (memory/speed only; no effect on the result).

    Returns:
      ``(images, labels)``: uint8 ``[n, h, w, c]`` and int32 ``[n]``.

    Raises:
      ImportError, ValueError, FileNotFoundError: as :func:`tfds_batches`; ValueError
        also for an empty split.
    """
    batches = list(
        tfds_batches(
            name,
            split,
            batch_size=batch_size,
            image_size=image_size,
            image_key=image_key,
            label_key=label_key,
            data_dir=data_dir,
            download=download,
        )
    )
    if not batches:
        raise ValueError(f"TFDS dataset {name!r} split {split!r} is empty")
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    return images, labels
