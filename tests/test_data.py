"""IDX reader, FashionMNIST loader, digits loader, load_dataset and to_float."""

import gzip
import struct

import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import sklearn.datasets

from leep_jax import data
from leep_jax.data import digits as digits_module
from leep_jax.data import fashion_mnist
from leep_jax.data.idx import parse_idx, read_idx

# ---------------------------------------------------------------------------- helpers

_TYPE_CODES = {np.dtype("uint8"): 0x08, np.dtype("int16"): 0x0B, np.dtype("int32"): 0x0C}


def idx_bytes(array, type_code=None):
    """Encodes an array as IDX (written independently of the reader under test)."""
    array = np.asarray(array)
    code = _TYPE_CODES[array.dtype] if type_code is None else type_code
    header = struct.pack(">BBBB", 0, 0, code, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(folder, split, images, labels, *, gz=True, image_bytes=None, label_bytes=None):
    stems = {
        "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    }[split]
    folder.mkdir(parents=True, exist_ok=True)
    blobs = (
        idx_bytes(images) if image_bytes is None else image_bytes,
        idx_bytes(labels) if label_bytes is None else label_bytes,
    )
    for stem, blob in zip(stems, blobs, strict=True):
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(blob))
        else:
            (folder / stem).write_bytes(blob)


def small_fashion(n=12, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    return images, labels


@pytest.fixture
def only_data_dir(tmp_path, monkeypatch):
    """Searches only $LEEP_JAX_DATA_DIR = tmp_path/data (no system dir, no TFDS data)."""
    folder = tmp_path / "data"
    folder.mkdir()
    monkeypatch.setenv("LEEP_JAX_DATA_DIR", str(folder))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DATA_DIRS", ())
    empty_tfds = tmp_path / "tfds"
    empty_tfds.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(empty_tfds))
    return folder


# ------------------------------------------------------------------------ IDX reader


@pytest.mark.parametrize("dtype", ["uint8", "int16", "int32"])
@pytest.mark.parametrize("shape", [(0,), (7,), (3, 4, 5)])
def test_parse_idx_roundtrip(dtype, shape):
    array = np.arange(np.prod(shape), dtype=dtype).reshape(shape) * (-1 if dtype != "uint8" else 1)
    parsed = parse_idx(idx_bytes(array))
    np.testing.assert_array_equal(parsed, array)
    assert parsed.dtype == np.dtype(dtype) and parsed.dtype.isnative
    assert not parsed.flags.writeable


def test_read_idx_gzip_detected_from_content(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "misnamed.gz").write_bytes(idx_bytes(array))  # .gz name, raw content
    (tmp_path / "plain").write_bytes(gzip.compress(idx_bytes(array)))  # raw name, gz content
    for name in ("misnamed.gz", "plain"):
        np.testing.assert_array_equal(read_idx(tmp_path / name, dtype="uint8", ndim=3), array)


@pytest.mark.parametrize(
    "blob, match",
    [
        (b"\x00\x00", "too short"),
        (b"\x01\x02\x08\x01" + struct.pack(">I", 1) + b"\x00", "bad IDX magic"),
        (b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00", "unknown IDX data type"),
        (b"\x00\x00\x08\x03" + struct.pack(">I", 2), "truncated IDX header"),
        (idx_bytes(np.zeros((3, 2), np.uint8))[:-1], "truncated"),
        (idx_bytes(np.zeros((3, 2), np.uint8)) + b"\x00", "trailing bytes"),
    ],
)
def test_parse_idx_rejects_corrupt(blob, match):
    with pytest.raises(ValueError, match=match):
        parse_idx(blob)


def test_read_idx_checks_dtype_and_rank(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(idx_bytes(np.zeros((2, 3), np.int32)))
    with pytest.raises(ValueError, match="expected uint8"):
        read_idx(path, dtype="uint8")
    with pytest.raises(ValueError, match="expected 3"):
        read_idx(path, ndim=3)


def test_read_idx_truncated_gzip(tmp_path):
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 28, 28), np.uint8)))[:-20])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(path)


# --------------------------------------------------------------------- FashionMNIST


@pytest.mark.parametrize("split, n", [("train", 60000), ("test", 10000)])
def test_real_fashion_mnist(split, n):
    images, labels = data.load_fashion_mnist(split)
    assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), np.full(10, n // 10))
    assert images.max() == 255 and images.min() == 0
    # Independent reference: the Debian package's mnist_reader.py (fixed header offsets).
    stem = {"train": "train", "test": "t10k"}[split]
    folder = fashion_mnist.SYSTEM_DATA_DIRS[0]
    with gzip.open(folder / f"{stem}-labels-idx1-ubyte.gz") as f:
        ref_labels = np.frombuffer(f.read(), np.uint8, offset=8)
    with gzip.open(folder / f"{stem}-images-idx3-ubyte.gz") as f:
        ref_images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(n, 28, 28, 1)
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_array_equal(images, ref_images)


def test_fashion_mnist_cached_and_read_only():
    first = data.load_fashion_mnist("test")
    second = data.load_fashion_mnist("test")
    assert first[0] is second[0] and first[1] is second[1]
    for array in first:
        assert not array.flags.writeable
        with pytest.raises(ValueError):
            array[0] = 0


@pytest.mark.parametrize("subfolder", ["", "fashion-mnist", "fashion_mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_env_dir(only_data_dir, subfolder, gz):
    images, labels = small_fashion()
    write_split(only_data_dir / subfolder, "test", images, labels, gz=gz)
    loaded_images, loaded_labels = data.load_fashion_mnist("test")
    np.testing.assert_array_equal(loaded_images, images[..., None])
    np.testing.assert_array_equal(loaded_labels, labels)
    assert loaded_labels.dtype == np.int32


def test_env_dir_takes_precedence_over_system_dir(tmp_path, monkeypatch):
    images, labels = small_fashion(n=5)
    write_split(tmp_path, "train", images, labels)
    monkeypatch.setenv("LEEP_JAX_DATA_DIR", str(tmp_path))
    loaded_images, _ = data.load_fashion_mnist("train")
    assert loaded_images.shape == (5, 28, 28, 1)  # the system copy has 60000


def test_fashion_mnist_replaced_file_is_reread(only_data_dir):
    write_split(only_data_dir, "train", *small_fashion(n=4, seed=1))
    assert data.load_fashion_mnist("train")[0].shape[0] == 4
    images, labels = small_fashion(n=9, seed=2)
    write_split(only_data_dir, "train", images, labels)
    np.testing.assert_array_equal(data.load_fashion_mnist("train")[1], labels)


def test_fashion_mnist_not_found_message(only_data_dir):
    with pytest.raises(FileNotFoundError) as info:
        data.load_fashion_mnist("train")
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "LEEP_JAX_DATA_DIR" in message
    assert str(only_data_dir) in message


def test_fashion_mnist_half_pair_is_not_found(only_data_dir):
    images, labels = small_fashion()
    write_split(only_data_dir, "train", images, labels)
    (only_data_dir / "train-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError):
        data.load_fashion_mnist("train")


def _corrupt_cases():
    images, labels = small_fashion(n=6)
    good_images, good_labels = idx_bytes(images), idx_bytes(labels)
    bad_magic = b"\x08\x03" + good_images[2:]
    return {
        "bad magic": dict(image_bytes=bad_magic, match="magic"),
        "wrong dtype code": dict(
            label_bytes=idx_bytes(labels.astype(np.int32)), match="expected uint8"
        ),
        "unknown dtype code": dict(image_bytes=idx_bytes(images, type_code=0x01), match="type"),
        "truncated images": dict(image_bytes=good_images[:-100], match="truncated"),
        "truncated labels": dict(label_bytes=good_labels[:-1], match="truncated"),
        "count mismatch": dict(label_bytes=idx_bytes(labels[:5]), match="6 images but"),
        "wrong rank": dict(image_bytes=idx_bytes(images.reshape(6, 784)), match="dimensions"),
        "label out of range": dict(
            label_bytes=idx_bytes(np.full(6, 10, np.uint8)), match="outside 0..9"
        ),
    }


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("case", sorted(_corrupt_cases()))
def test_fashion_mnist_corrupt_files(only_data_dir, case, gz):
    spec = dict(_corrupt_cases()[case])
    match = spec.pop("match")
    images, labels = small_fashion(n=6)
    write_split(only_data_dir, "train", images, labels, gz=gz, **spec)
    with pytest.raises(ValueError, match=match):
        data.load_fashion_mnist("train")


def test_fashion_mnist_bad_split():
    with pytest.raises(ValueError, match="split"):
        data.load_fashion_mnist("validation")


# --------------------------------------------------------------------------- digits


def test_digits_shapes_and_partition():
    train_images, train_labels = data.load_digits("train")
    test_images, test_labels = data.load_digits("test")
    assert train_images.shape[1:] == (28, 28, 1) and train_images.dtype == np.uint8
    assert train_labels.dtype == np.int32
    assert train_images.shape[0] + test_images.shape[0] == 1797
    assert train_images.shape[0] == train_labels.shape[0]
    assert test_images.shape[0] == test_labels.shape[0]
    assert train_images.max() == 255 and train_images.min() == 0
    for array in (train_images, train_labels, test_images, test_labels):
        assert not array.flags.writeable


def test_digits_size_8_is_the_original_scaled():
    bunch = sklearn.datasets.load_digits()
    expected = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[..., None]
    train_images, train_labels = data.load_digits("train", size=8)
    test_images, test_labels = data.load_digits("test", size=8)
    images = np.concatenate([train_images, test_images])
    labels = np.concatenate([train_labels, test_labels])

    # The splits partition the dataset: same multiset of (image, label) rows.
    def keys(imgs, labs):
        return sorted(im.tobytes() + bytes([lab]) for im, lab in zip(imgs, labs, strict=True))

    assert keys(images, labels) == keys(expected, bunch.target)


def test_digits_resize_matches_scipy_bilinear():
    train_small, _ = data.load_digits("train", size=8)
    train_big, _ = data.load_digits("train", size=28)
    originals = train_small[:40, :, :, 0].astype(np.float64) * (16 / 255)
    # Half-pixel centres with clamped edges == scipy's grid_mode zoom with mode="nearest".
    zoomed = np.stack(
        [scipy.ndimage.zoom(im, 3.5, order=1, grid_mode=True, mode="nearest") for im in originals]
    )
    reference = np.rint(np.clip(zoomed * (255 / 16), 0, 255))
    # The 8x8 originals went through one uint8 rounding, hence a 1-level tolerance.
    assert np.abs(train_big[:40, :, :, 0].astype(int) - reference).max() <= 1


@pytest.mark.parametrize("test_fraction", [0.2, 0.5])
def test_digits_split_is_stratified(test_fraction):
    all_counts = np.bincount(sklearn.datasets.load_digits().target, minlength=10)
    _, test_labels = data.load_digits("test", test_fraction=test_fraction)
    test_counts = np.bincount(test_labels, minlength=10)
    assert np.all(np.abs(test_counts - test_fraction * all_counts) <= 1)


def test_digits_split_deterministic_and_seeded():
    a = data.load_digits("test", size=8, seed=3)
    digits_module._load_split.cache_clear()  # force a recomputation, not a cache hit
    b = data.load_digits("test", size=8, seed=3)
    c = data.load_digits("test", size=8, seed=4)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == c[0].shape and not np.array_equal(a[0], c[0])


@pytest.mark.parametrize(
    "kwargs", [dict(split="val"), dict(size=0), dict(test_fraction=1.0), dict(test_fraction=0)]
)
def test_digits_bad_arguments(kwargs):
    kwargs = {"split": "train", **kwargs}
    with pytest.raises(ValueError):
        data.load_digits(kwargs.pop("split"), **kwargs)


# ----------------------------------------------------------- load_dataset, to_float


def test_load_dataset_dispatch():
    assert data.load_dataset("fashion_mnist", "test")[0] is data.load_fashion_mnist("test")[0]
    images, _ = data.load_dataset("digits", "train", image_size=16)
    assert images.shape[1:] == (16, 16, 1)
    assert data.dataset_num_classes("fashion_mnist") == 10
    assert data.dataset_num_classes("digits") == 10


@pytest.mark.parametrize("name", ["mnist", "tfds:", "Fashion_MNIST"])
def test_load_dataset_unknown(name):
    with pytest.raises(ValueError):
        data.load_dataset(name, "train")


def test_load_dataset_fashion_mnist_fixed_size():
    with pytest.raises(ValueError, match="28x28"):
        data.load_dataset("fashion_mnist", "train", image_size=32)


def test_to_float_uint8():
    images = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    out = data.to_float(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out, images.astype(np.float64) / 255, rtol=1e-7, atol=0)
    assert out.min() == 0.0 and out.max() == 1.0


@pytest.mark.parametrize("dtype", [np.float16, np.float64, jnp.bfloat16])
def test_to_float_floating(dtype):
    images = np.linspace(0, 1, 2 * 4 * 4 * 3).reshape(2, 4, 4, 3).astype(dtype)
    out = data.to_float(images)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, images.astype(np.float32))


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((4, 4, 1), np.uint8),  # rank 3
        np.zeros((1, 2, 4, 4, 1), np.uint8),  # rank 5
        np.zeros((1, 4, 4, 1), np.int32),
        np.zeros((1, 4, 4, 1), bool),
        np.full((1, 4, 4, 1), 255.0, np.float32),  # float but not in [0, 1]
        np.full((1, 4, 4, 1), np.nan, np.float32),
    ],
)
def test_to_float_rejects(images):
    with pytest.raises(ValueError):
        data.to_float(images)
