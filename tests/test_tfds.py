"""TFDS adapter, tested on TFDS's own mock data (tfds.testing.mock_data).

Needs the ``tfds`` extra (tensorflow, tensorflow-datasets): CI installs it. The
import-without-TensorFlow behaviour is tested in a subprocess that hides those packages.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from leep_jax import data
from leep_jax.data import fashion_mnist
from leep_jax.data import tfds as adapter

tfds = adapter.import_tfds()  # fails loudly (ImportError with the install hint) if missing


@pytest.fixture
def empty_tfds_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path))
    return tmp_path


def collect(batches):
    batches = list(batches)
    return batches, np.concatenate([b[0] for b in batches]), np.concatenate([b[1] for b in batches])


def test_batches_shapes_and_dtypes():
    with tfds.testing.mock_data(num_examples=10):
        batches, images, labels = collect(adapter.tfds_batches("cifar10", "train", batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (10,) and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
    assert all(isinstance(b[0], np.ndarray) for b in batches)


def test_batches_drop_remainder():
    with tfds.testing.mock_data(num_examples=10):
        batches = list(adapter.tfds_batches("cifar10", "train", batch_size=4, drop_remainder=True))
    assert [b[0].shape[0] for b in batches] == [4, 4]


@pytest.mark.parametrize("image_size", [16, (12, 20), (48, 40)])
def test_batches_resize_matches_jax_bilinear(image_size):
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    with tfds.testing.mock_data(num_examples=6):
        _, raw, raw_labels = collect(adapter.tfds_batches("cifar10", "train", batch_size=4))
        _, resized, labels = collect(
            adapter.tfds_batches("cifar10", "train", batch_size=4, image_size=image_size)
        )
    assert resized.shape == (6, *size, 3) and resized.dtype == np.uint8
    np.testing.assert_array_equal(labels, raw_labels)
    # Independent reference: JAX's antialiased bilinear resize of the original images.
    reference = jax.image.resize(
        jnp.asarray(raw, jnp.float32), (6, *size, 3), method="linear", antialias=True
    )
    reference = np.clip(np.rint(np.asarray(reference)), 0, 255)
    assert np.abs(resized.astype(np.int64) - reference).max() <= 1


def test_batches_as_float():
    with tfds.testing.mock_data(num_examples=5):
        _, raw, _ = collect(adapter.tfds_batches("cifar10", "test", batch_size=8))
        _, floats, _ = collect(adapter.tfds_batches("cifar10", "test", batch_size=8, as_float=True))
    assert floats.dtype == np.float32
    np.testing.assert_allclose(floats, raw / 255.0, rtol=1e-6)
    np.testing.assert_allclose(floats, data.to_float(raw), rtol=1e-6)


def test_varying_size_dataset_needs_image_size():
    with tfds.testing.mock_data(num_examples=3):
        with pytest.raises(ValueError, match="varying size"):
            adapter.tfds_batches("imagenet2012", "train")
        _, images, labels = collect(
            adapter.tfds_batches("imagenet2012", "train", batch_size=2, image_size=24)
        )
    assert images.shape == (3, 24, 24, 3) and labels.max() < 1000


def test_load_tfds_and_dispatch():
    with tfds.testing.mock_data(num_examples=7):
        images, labels = adapter.load_tfds("cifar100", "train", batch_size=3)
        again, _ = data.load_dataset("tfds:cifar100", "train")
        small, _ = data.load_dataset("tfds:cifar100", "train", image_size=8)
        assert data.dataset_num_classes("tfds:cifar100") == 100
        assert adapter.tfds_num_classes("cifar100", label_key="coarse_label") == 20
    assert images.shape == (7, 32, 32, 3) and labels.shape == (7,)
    np.testing.assert_array_equal(images, again)  # mock data is deterministic
    assert small.shape == (7, 8, 8, 3)


def test_other_label_key():
    with tfds.testing.mock_data(num_examples=6):
        _, _, labels = collect(
            adapter.tfds_batches("cifar100", "train", batch_size=6, label_key="coarse_label")
        )
    assert labels.dtype == np.int32 and labels.max() < 20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(name="no_such_dataset_xyz"), "unknown TFDS dataset"),
        (dict(label_key="fine"), "class-label feature 'fine'"),
        (dict(image_key="id"), "image feature 'id'"),
        (dict(batch_size=0), "batch_size"),
        (dict(image_size=0), "image_size"),
        (dict(image_size=(8, 8, 3)), "image_size"),
    ],
)
def test_bad_arguments(kwargs, match):
    kwargs = {"name": "cifar100", "split": "train", **kwargs}
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=match):
            adapter.tfds_batches(**kwargs)


def test_not_prepared(empty_tfds_dir):
    with pytest.raises(FileNotFoundError, match="tfds build cifar10"):
        adapter.load_tfds("cifar10", "train")


def test_fashion_mnist_falls_back_to_tfds(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DATA_DIRS", ())
    monkeypatch.setenv("LEEP_JAX_DATA_DIR", str(tmp_path))  # an empty folder
    with tfds.testing.mock_data(num_examples=9):
        images, labels = data.load_fashion_mnist("test")
    assert images.shape == (9, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32 and labels.max() < 10
    assert not images.flags.writeable


def test_missing_extra_gives_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'leep-jax\[tfds\]'"):
        adapter.tfds_batches("cifar10", "train")
    with pytest.raises(ImportError, match=r"leep-jax\[tfds\]"):
        data.load_dataset("tfds:cifar10", "train")


def test_package_imports_without_tensorflow():
    script = textwrap.dedent(
        """
        import sys
        sys.modules["tensorflow"] = None
        sys.modules["tensorflow_datasets"] = None
        import leep_jax.data as data
        images, labels = data.load_digits("test", size=8)
        assert images.shape[1:] == (8, 8, 1)
        try:
            data.load_dataset("tfds:cifar10", "train")
        except ImportError as err:
            assert "leep-jax[tfds]" in str(err)
        else:
            raise AssertionError("expected ImportError")
        assert "tensorflow" not in {m for m in sys.modules if sys.modules[m] is not None}
        print("ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],  # the repository root, to import leep_jax
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
