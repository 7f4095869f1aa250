"""FashionMNIST (Xiao et al. 2017) from its original IDX files.

Where the files are looked up, in order:

1. ``$LEEP_JAX_DATA_DIR``, or its ``fashion-mnist`` / ``fashion_mnist`` subfolder;
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``);
3. TFDS's prepared ``fashion_mnist`` (when the ``tfds`` extra is installed and the
   dataset is prepared in ``$TFDS_DATA_DIR`` or TFDS's default directory).

File names are the original ones (``train-images-idx3-ubyte.gz``,
``t10k-labels-idx1-ubyte`` ...), gzip-compressed or not.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from leep_jax.data.idx import read_idx

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
NUM_CLASSES = len(CLASS_NAMES)

ENV_VAR = "LEEP_JAX_DATA_DIR"
# Searched after $LEEP_JAX_DATA_DIR; a module attribute so tests can replace it.
SYSTEM_DATA_DIRS: tuple[Path, ...] = (Path("/usr/share/datasets/fashion-mnist"),)

_FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_HOW_TO_GET = (
    "Install the Debian package (`apt-get install dataset-fashion-mnist`, files in "
    "/usr/share/datasets/fashion-mnist), or put the original IDX files "
    "(train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, "
    f"t10k-labels-idx1-ubyte.gz) in a folder and set {ENV_VAR} to it."
)


def search_dirs() -> list[Path]:
    """The folders searched for the IDX files, in order (see the module docstring)."""
    dirs = []
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env).expanduser()
        dirs += [root, root / "fashion-mnist", root / "fashion_mnist"]
    dirs += list(SYSTEM_DATA_DIRS)
    return dirs


def _find_file(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def find_idx_files(split: str) -> tuple[Path, Path] | None:
    """Finds the images and labels IDX files of a split.

    Args:
      split: ``"train"`` or ``"test"``.

    Returns:
      ``(images_path, labels_path)`` from the first folder of :func:`search_dirs` that
      holds both, or None.
    """
    image_stem, label_stem = _FILE_STEMS[_check_split(split)]
    for folder in search_dirs():
        images, labels = _find_file(folder, image_stem), _find_file(folder, label_stem)
        if images is not None and labels is not None:
            return images, labels
    return None


def _check_split(split: str) -> str:
    if split not in _FILE_STEMS:
        raise ValueError(f"FashionMNIST split must be 'train' or 'test', got {split!r}")
    return split


def _file_key(path: Path) -> tuple[str, int, int]:
    # Modification time and size in the cache key: a replaced file is read again.
    stat = path.stat()
    return str(path.resolve()), stat.st_mtime_ns, stat.st_size


@functools.lru_cache(maxsize=4)
def _parse_cached(
    images_key: tuple[str, int, int], labels_key: tuple[str, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    return parse_idx_pair(Path(images_key[0]), Path(labels_key[0]))


def parse_idx_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Reads and cross-checks an images/labels pair of (Fashion-)MNIST IDX files.

    Args:
      images_path: IDX file of uint8 images ``[n, rows, cols]``.
      labels_path: IDX file of uint8 labels ``[n]`` in 0..9.

    Returns:
      Read-only ``(images, labels)``: uint8 ``[n, rows, cols, 1]`` and int32 ``[n]``.

    Raises:
      ValueError: a corrupt file, wrong dtype or rank, count mismatch, or a label
        outside 0..9.
    """
    images = read_idx(images_path, dtype="uint8", ndim=3)
    labels = read_idx(labels_path, dtype="uint8", ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
            f"{labels.shape[0]} labels"
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise ValueError(f"{labels_path}: label {labels.max()} outside 0..{NUM_CLASSES - 1}")
    images = images[..., None]  # a view of a read-only buffer: stays read-only
    labels = labels.astype(np.int32)
    labels.setflags(write=False)
    return images, labels


def load_fashion_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Loads a FashionMNIST split (cached in-process).

    Args:
      split: ``"train"`` (60,000 examples) or ``"test"`` (10,000).

    Returns:
      Read-only ``(images, labels)``: uint8 ``[n, 28, 28, 1]`` and int32 ``[n]`` in 0..9.
      IDX files are parsed once per process; the TFDS fallback is read on every call.

    Raises:
      ValueError: a bad split, or corrupt IDX files.
      FileNotFoundError: the data is nowhere to be found; the message says how to get it.
    """
    paths = find_idx_files(split)
    if paths is not None:
        return _parse_cached(_file_key(paths[0]), _file_key(paths[1]))
    tfds_arrays, tfds_note = _try_tfds(split)
    if tfds_arrays is not None:
        return tfds_arrays
    searched = ", ".join(str(d) for d in search_dirs()) or "(no folders)"
    raise FileNotFoundError(
        f"FashionMNIST {split!r} IDX files not found (searched: {searched}; "
        f"{ENV_VAR} is {'set' if os.environ.get(ENV_VAR) else 'not set'}; {tfds_note}). "
        + _HOW_TO_GET
    )


def _try_tfds(split: str) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """The TFDS fallback: arrays or None, and a note for the not-found message."""
    from leep_jax.data import tfds as tfds_adapter

    try:
        images, labels = tfds_adapter.load_tfds("fashion_mnist", split)
    except ImportError:
        return None, "TFDS fallback: tensorflow-datasets not installed"
    except FileNotFoundError:
        return None, "TFDS fallback: fashion_mnist not prepared"
    images.setflags(write=False)
    labels.setflags(write=False)
    return (images, labels), ""
