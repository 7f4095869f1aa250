"""score_zoo: a zoo scored looped or vmapped over stacked weights, equal to the in-memory scores."""

import jax
import numpy as np
import pytest
from flax import nnx

from leep_jax.models import SmallCNN, forward, score_zoo, zoo_strategy
from leep_jax.models import zoo_scores as zoo_module
from leep_jax.scores import h_score, leep, nce

Y = 4


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(45, 12, 12, 1), dtype=np.uint8)
    labels = rng.integers(0, Y, size=45).astype(np.int32)
    # Three models of one architecture (stackable) and one of another width.
    models = {f"w4-s{seed}": SmallCNN(7, width=4, rngs=nnx.Rngs(seed)) for seed in range(3)}
    models["w6"] = SmallCNN(7, width=6, rngs=nnx.Rngs(9))
    return images, labels, models


def expected_scores(model, images, labels):
    model.eval()
    logits, features = forward(model, images.astype(np.float32) / 255.0)
    return {
        "leep": float(leep(logits, labels, Y, from_logits=True)),
        "nce": float(nce(logits, labels, Y, from_logits=True)),
        "h_score": float(h_score(features, labels, Y)),
    }


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_scores_equal_the_in_memory_scores(problem, strategy):
    images, labels, models = problem
    got = score_zoo(models, images, labels, Y, batch_size=16, strategy=strategy)
    assert list(got) == list(models)
    for name, model in models.items():
        want = expected_scores(model, images, labels)
        for metric, value in want.items():
            np.testing.assert_allclose(got[name][metric], value, rtol=2e-5, atol=1e-6)
        assert got[name]["seconds"] > 0


def test_vmap_stacks_models_of_one_architecture(problem, monkeypatch):
    images, labels, models = problem
    calls = []
    stacked = zoo_module._forward_stacked

    def counting(graphdef, states, batch):
        calls.append(jax.tree.leaves(states)[0].shape[0])
        return stacked(graphdef, states, batch)

    monkeypatch.setattr(zoo_module, "_forward_stacked", counting)
    score_zoo(models, images, labels, Y, batch_size=16, strategy="vmap")
    # The three width-4 models run together, in ceil(45 / 16) = 3 stacked calls; the
    # width-6 model alone, unstacked.
    assert calls == [3, 3, 3]


def test_auto_takes_the_measured_faster_path():
    assert zoo_strategy("cpu") == "loop"  # benchmarks/results/cpu-2core/zoo.md
    assert zoo_strategy() in ("loop", "vmap")


def test_bad_input_is_refused(problem):
    images, labels, models = problem
    with pytest.raises(ValueError, match="unknown strategy"):
        score_zoo(models, images, labels, Y, strategy="threads")
    with pytest.raises(ValueError, match="no models"):
        score_zoo({}, images, labels, Y)
    with pytest.raises(ValueError, match="as many images"):
        score_zoo(models, images[:10], labels, Y)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_target_classes=2\)"):
        score_zoo(models, images, labels, 2)
    rgb = {"rgb-model": SmallCNN(7, in_channels=3, width=4, rngs=nnx.Rngs(0))}
    with pytest.raises(ValueError, match="'rgb-model'"):
        score_zoo(rgb, images, labels, Y)
