"""Tests for leep_jax.transfer.zoo: specs, train-or-load through the cache, mismatches."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from leep_jax.data import load_fashion_mnist
from leep_jax.transfer.presets import default_zoo, tiny_zoo
from leep_jax.transfer.train import predict_logits
from leep_jax.transfer.zoo import (
    SourceSpec,
    load_zoo,
    source_checkpoint_path,
    source_metadata,
    train_source_model,
)

# Four steps of a width-4 CNN on 64 FashionMNIST images: seconds, plus one compile.
MICRO = SourceSpec(
    "micro-cnn4-fmnist-012",
    "small_cnn",
    (0, 1, 2),
    {"width": 4},
    train_examples=64,
    test_examples=64,
    epochs=1,
    batch_size=16,
)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path))
    return tmp_path


def test_train_once_then_load_from_the_cache(cache):
    model = train_source_model(MICRO)
    path = source_checkpoint_path(MICRO)
    assert path.is_dir() and path.is_relative_to(cache)
    metadata = source_metadata(MICRO)
    assert metadata["spec"] == MICRO.to_dict()
    assert metadata["num_steps"] == 4 and metadata["source_train_examples"] == 64
    assert 0.0 <= metadata["source_test_accuracy"] <= 1.0
    assert model.num_classes == 3

    again = train_source_model(MICRO)
    # No retraining: the checkpoint (and its training record) is the first one.
    assert source_metadata(MICRO) == metadata
    images = load_fashion_mnist("test")[0][:20]
    np.testing.assert_array_equal(predict_logits(again, images), predict_logits(model, images))


def test_a_changed_spec_is_refused_or_retrained(cache):
    train_source_model(MICRO)
    longer = dataclasses.replace(MICRO, epochs=2)
    with pytest.raises(ValueError, match="epochs: cached 1 vs wanted 2"):
        train_source_model(longer, on_mismatch="error")
    assert source_metadata(MICRO)["num_steps"] == 4  # untouched by the refusal
    train_source_model(longer, on_mismatch="retrain")
    assert source_metadata(longer)["num_steps"] == 8
    assert source_metadata(longer)["spec"]["epochs"] == 2


def test_a_foreign_directory_is_refused_or_replaced(cache):
    path = source_checkpoint_path(MICRO)
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="another spec"):
        train_source_model(MICRO, on_mismatch="error")
    train_source_model(MICRO)
    assert source_metadata(MICRO)["spec"] == MICRO.to_dict()


def test_load_zoo_keeps_order_and_rejects_duplicates(cache):
    other = dataclasses.replace(MICRO, name="micro-seed1", seed=1)
    models = load_zoo([other, MICRO])
    assert list(models) == ["micro-seed1", MICRO.name]
    with pytest.raises(ValueError, match="duplicate"):
        load_zoo([MICRO, MICRO])
    with pytest.raises(ValueError, match="on_mismatch"):
        load_zoo([MICRO], on_mismatch="ignore")


def test_default_zoo_differs_like_a_real_zoo():
    specs = default_zoo()
    assert len(specs) >= 5
    assert len({s.name for s in specs}) == len(specs)
    assert {s.architecture for s in specs} >= {"resnet20", "small_cnn"}
    assert len({s.classes for s in specs}) >= 3
    assert len({s.model_kwargs.get("width") for s in specs}) >= 3
    assert len({s.epochs * (s.train_examples or 0) for s in specs}) >= 3  # training length
    for spec in specs:
        assert set(spec.classes) <= set(range(10)) and spec.dataset == "fashion_mnist"


def test_tiny_zoo_is_tiny():
    for spec in tiny_zoo():
        steps = spec.epochs * -(-spec.train_examples // spec.batch_size)
        assert spec.architecture == "small_cnn" and steps <= 50


@pytest.mark.parametrize(
    "change, match",
    [({"name": "a/b"}, "path component"), ({"classes": (1,)}, "2 distinct"),
     ({"classes": (1, 1)}, "2 distinct"), ({"model_kwargs": {"num_classes": 3}}, "num_classes"),
     ({"train_examples": 0}, "train_examples"), ({"epochs": 0}, "epochs")],
)  # fmt: skip
def test_spec_validation(change, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(MICRO, **change)


def test_spec_metadata_is_json_normalised():
    record = MICRO.to_dict()
    assert record["classes"] == [0, 1, 2] and record["model_kwargs"] == {"width": 4}
    assert "zoo_format" in record


@pytest.mark.slow
def test_tiny_zoo_trains_and_reloads(cache):
    models = load_zoo(tiny_zoo())
    assert list(models) == [s.name for s in tiny_zoo()]
    for spec in tiny_zoo():
        assert models[spec.name].num_classes == len(spec.classes)
        assert source_metadata(spec)["num_steps"] == 24
    again = load_zoo(tiny_zoo())
    images = load_fashion_mnist("test")[0][:16]
    for name, model in models.items():
        np.testing.assert_array_equal(predict_logits(again[name], images),
                                      predict_logits(model, images))  # fmt: skip
