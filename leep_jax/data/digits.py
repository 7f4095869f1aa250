"""scikit-learn's bundled handwritten digits as a second, offline image domain.

1,797 real 8x8 grey-level scans of the digits 0..9 (UCI "Optical Recognition of
Handwritten Digits", values 0..16), upsampled to FashionMNIST's 28x28 so models trained on
FashionMNIST can be transferred to them (cross-domain FashionMNIST -> digits).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(NUM_CLASSES))
_MAX_VALUE = 16.0  # sklearn's digits are counts of set pixels in 4x4 blocks: 0..16


def load_digits(
    split: str, *, size: int = 28, test_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Loads a split of the scikit-learn digits, resized and scaled to 0..255 (cached).

    The train/test split is stratified (each class keeps its share in both splits) and
    deterministic for a given ``(test_fraction, seed)``; the two splits partition the
    1,797 images.

    Args:
      split: ``"train"`` or ``"test"``.
      size: output height and width; bilinear resize (``jax.image.resize``, half-pixel
        centres) from 8x8. 8 keeps the originals.
      test_fraction: share of each class in the test split, in (0, 1).
      seed: seed of the split.

    Returns:
      Read-only ``(images, labels)``: uint8 ``[n, size, size, 1]`` in 0..255 and int32
      ``[n]`` in 0..9.

    Raises:
      ValueError: bad split, size or test_fraction.
    """
    if split not in ("train", "test"):
        raise ValueError(f"digits split must be 'train' or 'test', got {split!r}")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive int, got {size!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    train, test = _load_split(size, float(test_fraction), int(seed))
    return train if split == "train" else test


def _sklearn():
    """scikit-learn (the ``experiments`` extra), imported on first use of the digits."""
    try:
        import sklearn.datasets
        import sklearn.model_selection
    except ImportError:
        raise ImportError(
            "the digits dataset (scikit-learn) needs the 'experiments' extra: "
            "pip install 'leep-jax[experiments]'"
        ) from None
    return sklearn


@functools.lru_cache(maxsize=8)
def _load_split(
    size: int, test_fraction: float, seed: int
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    images, labels = _all_images(size)
    sklearn = _sklearn()
    indices = np.arange(labels.shape[0])
    train_idx, test_idx = sklearn.model_selection.train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=labels
    )
    # Keep dataset order within each split: the split is the only randomness.
    train_idx, test_idx = np.sort(train_idx), np.sort(test_idx)
    out = []
    for idx in (train_idx, test_idx):
        split_images, split_labels = images[idx], labels[idx]
        split_images.setflags(write=False)
        split_labels.setflags(write=False)
        out.append((split_images, split_labels))
    return out[0], out[1]


@functools.lru_cache(maxsize=4)
def _all_images(size: int) -> tuple[np.ndarray, np.ndarray]:
    bunch = _sklearn().datasets.load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # [1797, 8, 8] in 0..16
    if size != images.shape[1]:
        # Bilinear (and, when shrinking, antialiased triangle-filter) interpolation is a
        # convex combination of pixels: values stay in 0..16.
        resized = jax.image.resize(
            jnp.asarray(images), (images.shape[0], size, size), method="linear"
        )
        images = np.asarray(resized)
    scaled = np.clip(np.rint(images * (255.0 / _MAX_VALUE)), 0, 255).astype(np.uint8)
    return scaled[..., None], np.asarray(bunch.target, dtype=np.int32)
