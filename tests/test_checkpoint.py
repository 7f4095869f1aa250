"""Checkpoints: exact round trips, metadata, mismatches, interrupted saves, the cache dir."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from leep_jax.models import (
    ResNet20,
    SmallCNN,
    cache_dir,
    forward,
    load_metadata,
    load_model,
    model_checkpoint_path,
    restore_model,
    save_model,
)

# Compiling dominates these tests on CPU, so every model runs through one jitted function
# per mode and inputs come from NumPy (eager JAX ops compile one program each).
jit_forward = nnx.jit(forward)
jit_call = nnx.jit(lambda model, x: model(x))


def images(shape, seed=0):
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def pure_state(model):
    return {
        jax.tree_util.keystr(path): np.asarray(leaf)
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model)))
    }


def assert_same_state(a, b):
    state_a, state_b = pure_state(a), pure_state(b)
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        np.testing.assert_array_equal(state_a[key], state_b[key], err_msg=key)


def set_params(model, make):
    """Replaces every parameter with ``make(current_value_as_numpy)``."""
    state = nnx.state(model, nnx.Param)
    new = jax.tree.map(lambda leaf: jnp.asarray(make(leaf), leaf.dtype), nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, new)
    nnx.update(model, state)


def trained(model, seed):
    """Moves parameters and BatchNorm statistics away from any initial value."""
    rng = np.random.default_rng(seed)
    set_params(model, lambda leaf: np.asarray(leaf) + 0.01 * rng.standard_normal(leaf.shape))
    model.train()
    jit_call(model, images((8, 8, 8, model.in_channels), seed=seed))  # updates statistics
    model.eval()
    return model


@pytest.fixture(scope="module")
def small_cnn():
    return trained(SmallCNN(6, in_channels=1, width=4, rngs=nnx.Rngs(0)), seed=1)


@pytest.fixture(scope="module")
def resnet20():
    # Abstract build plus NumPy-filled weights: real initialisation of a ResNet compiles a
    # random-number program per weight shape, which is slow on CPU and not under test here.
    model = nnx.eval_shape(
        lambda: ResNet20(4, in_channels=1, projection_shortcut=True, rngs=nnx.Rngs(0))
    )
    rng = np.random.default_rng(0)
    set_params(
        model,
        lambda leaf: (
            rng.uniform(0.5, 1.5, leaf.shape)
            if leaf.ndim == 1
            else rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        ),
    )
    stats = nnx.state(model, nnx.BatchStat)
    nnx.replace_by_pure_dict(
        stats, jax.tree.map(lambda leaf: jnp.ones(leaf.shape, leaf.dtype), nnx.to_pure_dict(stats))
    )
    nnx.update(model, stats)
    return trained(model, seed=2)


@pytest.mark.parametrize("fixture", ["small_cnn", "resnet20"])
def test_round_trip_is_bitwise_exact(request, tmp_path, fixture):
    model = request.getfixturevalue(fixture)
    metadata = {"dataset": "fashion_mnist", "source_classes": [0, 2, 5], "epochs": 3}
    path = save_model(model, tmp_path / "ckpt", metadata=metadata)
    assert path == (tmp_path / "ckpt").resolve() and path.is_dir()

    loaded = load_model(path)
    assert type(loaded) is type(model)
    assert loaded.config() == model.config()
    # Every variable, BatchNorm running statistics included, comes back bit for bit.
    assert_same_state(loaded, model)
    assert all(isinstance(leaf, jax.Array) for leaf in jax.tree.leaves(nnx.state(loaded)))
    # Loaded models are ready for scoring: BatchNorm uses its running statistics.
    assert all(
        module.use_running_average
        for _, module in nnx.iter_modules(loaded)
        if isinstance(module, nnx.BatchNorm)
    )
    x = images((3, 8, 8, 1), seed=5)
    for a, b in zip(jit_forward(loaded, x), jit_forward(model, x), strict=True):
        np.testing.assert_array_equal(a, b)
    assert load_metadata(path)["metadata"] == metadata


def test_metadata_records_architecture_and_normalises_numpy(small_cnn, tmp_path):
    metadata = {
        "source_classes": np.arange(3),
        "learning_rate": np.float64(0.05),
        "steps": np.int64(100),
        "data_dir": Path("/data"),
        "nested": {"seed": 0, "augment": False},
    }
    path = save_model(small_cnn, tmp_path / "ckpt", metadata=metadata)
    record = load_metadata(path)
    assert record["architecture"] == "small_cnn"
    assert record["config"] == {"num_classes": 6, "in_channels": 1, "width": 4}
    assert record["metadata"] == {
        "source_classes": [0, 1, 2],
        "learning_rate": 0.05,
        "steps": 100,
        "data_dir": "/data",
        "nested": {"seed": 0, "augment": False},
    }
    assert record["format_version"] == 1
    assert load_metadata(save_model(small_cnn, tmp_path / "bare"))["metadata"] == {}


def test_restore_into_existing_model(small_cnn, tmp_path):
    path = save_model(small_cnn, tmp_path / "ckpt")
    other = SmallCNN(6, in_channels=1, width=4, rngs=nnx.Rngs(7))
    other.train()
    assert not np.array_equal(other.conv1.kernel[...], small_cnn.conv1.kernel[...])
    assert restore_model(other, path) is other
    assert_same_state(other, small_cnn)
    # The caller's mode is kept (here: training, for fine-tuning).
    assert other.bn1.use_running_average is False


def test_restore_keeps_the_models_sharding(small_cnn, tmp_path):
    path = save_model(small_cnn, tmp_path / "ckpt")
    mesh = jax.make_mesh((8,), ("data",))
    replicated = jax.NamedSharding(mesh, jax.P())
    other = SmallCNN(6, in_channels=1, width=4, rngs=nnx.Rngs(3))
    state = nnx.state(other)
    nnx.update(other, jax.device_put(state, replicated))
    restore_model(other, path)
    for leaf in jax.tree.leaves(nnx.state(other)):
        assert leaf.sharding == replicated
    assert_same_state(other, small_cnn)


def test_mismatched_architecture_or_classes_name_both(small_cnn, tmp_path):
    path = save_model(small_cnn, tmp_path / "ckpt")
    resnet = nnx.eval_shape(lambda: ResNet20(6, in_channels=1, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"holds small_cnn\(.*\) but the model is resnet20\("):
        restore_model(resnet, path)
    fewer_classes = nnx.eval_shape(lambda: SmallCNN(3, in_channels=1, width=4, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"num_classes=6.*but the model.*num_classes=3"):
        restore_model(fewer_classes, path)
    wider = nnx.eval_shape(lambda: SmallCNN(6, in_channels=1, width=8, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match=r"width=4.*width=8"):
        restore_model(wider, path)


def test_existing_checkpoint_needs_overwrite(small_cnn, tmp_path):
    path = save_model(small_cnn, tmp_path / "ckpt", metadata={"version": 1})
    with pytest.raises(ValueError, match="already exists.*overwrite=True"):
        save_model(small_cnn, path, metadata={"version": 2})
    assert load_metadata(path)["metadata"] == {"version": 1}
    replacement = SmallCNN(6, in_channels=1, width=4, rngs=nnx.Rngs(11))
    save_model(replacement, path, metadata={"version": 2}, overwrite=True)
    assert load_metadata(path)["metadata"] == {"version": 2}
    assert_same_state(load_model(path), replacement)


def test_bad_paths_models_and_metadata(small_cnn, tmp_path):
    with pytest.raises(FileNotFoundError, match="no model checkpoint"):
        load_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a leep_jax model checkpoint"):
        load_model(tmp_path / "empty")
    with pytest.raises(ValueError, match="JSON-serialisable"):
        save_model(small_cnn, tmp_path / "a", metadata={"model": small_cnn})
    with pytest.raises(ValueError, match="must be a dict"):
        save_model(small_cnn, tmp_path / "b", metadata=[1, 2])
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    with pytest.raises(ValueError, match="not a registered leep_jax source model"):
        save_model(nnx.Linear(2, 3, rngs=nnx.Rngs(0)), tmp_path / "c")


class SimulatedCrash(Exception):
    pass


def test_interrupted_save_leaves_nothing_loadable(small_cnn, tmp_path, monkeypatch):
    async def crash_before_commit(*args, **kwargs):
        raise SimulatedCrash

    # Everything is written, then the process "dies" before the atomic rename.
    monkeypatch.setattr(ocp.path.atomicity, "on_commit_callback", crash_before_commit)
    path = tmp_path / "ckpt"
    with pytest.raises(SimulatedCrash):
        save_model(small_cnn, path)
    assert not path.exists()
    with pytest.raises(FileNotFoundError):
        load_model(path)
    leftovers = [p for p in tmp_path.iterdir() if p.name.startswith("ckpt.")]
    assert leftovers, "orbax should have left its temporary directory behind"
    for leftover in leftovers:
        with pytest.raises(ValueError, match="unfinished"):
            load_model(leftover)

    monkeypatch.undo()
    save_model(small_cnn, path)  # a later save to the same path succeeds
    assert_same_state(load_model(path), small_cnn)


def test_cache_dir_honours_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    assert model_checkpoint_path("resnet20-cifar10") == tmp_path / "cache" / "models" / (
        "resnet20-cifar10"
    )
    monkeypatch.delenv("LEEP_JAX_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "leep_jax"
    for bad in ["", ".", "..", "a/b"]:
        with pytest.raises(ValueError, match="single, non-empty path component"):
            model_checkpoint_path(bad)


def test_save_under_cache_creates_parents(small_cnn, tmp_path, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    path = save_model(small_cnn, model_checkpoint_path("cnn"), metadata={"source": "test"})
    assert path == (tmp_path / "cache" / "models" / "cnn").resolve()
    assert_same_state(load_model(path), small_cnn)
