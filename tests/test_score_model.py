"""score_model: one jitted forward+accumulate step per batch, equal to the in-memory scores."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import leep_jax
from leep_jax.models import SmallCNN, forward
from leep_jax.streaming.score_model import score_model

N, Y, BATCH = 100, 4, 16  # 6 full batches and a ragged one of 4


@functools.cache
def model():
    cnn = SmallCNN(10, width=4, rngs=nnx.Rngs(0))
    cnn.eval()
    return cnn


@functools.cache
def data():
    rng = np.random.default_rng(0)
    images = rng.random((N, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, Y, N).astype(np.int32)
    mask = rng.random(N) < 0.8
    return images, labels, mask


def in_memory(logits, features, labels, mask=None):
    return {
        "leep": float(leep_jax.leep(logits, labels, Y, from_logits=True, mask=mask)),
        "nce": float(leep_jax.nce(logits, labels, Y, from_logits=True, mask=mask)),
        "h_score": float(leep_jax.h_score(features, labels, Y, mask=mask)),
    }


@functools.cache
def expected(masked=False):
    """The in-memory scores of the concatenated outputs of one forward pass."""
    images, labels, mask = data()
    return in_memory(*forward(model(), images), labels, mask if masked else None)


def batches(size=BATCH, masked=False):
    images, labels, mask = data()
    return [
        (images[i : i + size], labels[i : i + size], *((mask[i : i + size],) if masked else ()))
        for i in range(0, N, size)
    ]


def counting_apply():
    """forward(model) that records the batch shape of every trace (= every compile)."""
    traced, cnn = [], model()

    def apply(images):
        traced.append(images.shape)
        return forward(cnn, images)

    return apply, traced


def assert_scores(got, want):
    for name, value in want.items():
        assert isinstance(got[name], float)
        rtol = 1e-5 if name == "h_score" else 1e-6
        np.testing.assert_allclose(got[name], value, rtol=rtol, err_msg=name)


@pytest.mark.parametrize("keep_predictions", [True, False])
def test_matches_in_memory_scores_with_a_ragged_last_batch(keep_predictions):
    apply, traced = counting_apply()
    got = score_model(apply, batches(), Y, keep_predictions=keep_predictions)
    assert_scores(got, expected())
    assert got["n"] == N and isinstance(got["n"], int)
    assert got["forward_passes"] == (1 if keep_predictions else 2)
    assert got["seconds"] > 0
    # One trace for the output shapes, then one compile per pass: the ragged last
    # batch was padded to the batch size instead of compiling a second shape.
    assert traced == [(BATCH, 8, 8, 1)] * (1 + got["forward_passes"])


def test_masks_and_uneven_batch_sizes():
    """A mask per batch; later batches larger than the first are split, smaller padded."""
    images, labels, mask = data()
    cuts = [0, 10, 35, 38, 70, N]  # sizes 10, 25, 3, 32, 30
    stream = [(images[a:b], labels[a:b], mask[a:b]) for a, b in zip(cuts, cuts[1:], strict=False)]
    apply, traced = counting_apply()
    got = score_model(apply, stream, Y, keep_predictions=False)
    assert_scores(got, expected(masked=True))
    assert got["n"] == int(mask.sum())
    assert set(traced) == {(10, 8, 8, 1)}


def test_batches_as_jax_arrays_from_a_callable():
    def stream():
        for images, labels, mask in batches(masked=True):
            yield jnp.asarray(images), jnp.asarray(labels), jnp.asarray(mask)

    got = score_model(
        functools.partial(forward, model()), stream, Y, keep_predictions=False, metrics="leep"
    )
    assert set(got) == {"leep", "n", "forward_passes", "seconds"}
    assert_scores(got, {"leep": expected(masked=True)["leep"]})


def _linear_apply(images):
    """A cheap stand-in source model: logits and features from a fixed linear map."""
    flat = images.reshape(images.shape[0], -1)
    return flat[:, :10] * 5.0, flat[:, 10:16]


def test_a_one_shot_iterator_is_read_once_or_refused():
    one_shot = iter(batches())
    got = score_model(_linear_apply, one_shot, Y, metrics=("nce",), keep_predictions=False)
    assert got["forward_passes"] == 1  # NCE alone needs no second pass
    images, labels, _ = data()
    logits, _ = _linear_apply(images)
    np.testing.assert_allclose(
        got["nce"], leep_jax.nce(logits, labels, Y, from_logits=True), rtol=1e-6
    )
    with pytest.raises(ValueError, match="one-shot iterator"):
        score_model(_linear_apply, iter(batches()), Y, keep_predictions=False)
    with pytest.raises(ValueError, match="one-shot iterator"):
        score_model(_linear_apply, (b for b in batches()), Y, keep_predictions=False)


def test_probabilities_from_apply_fn():
    def apply(images):
        logits, features = _linear_apply(images)
        return jax.nn.softmax(logits), features

    images, labels, _ = data()
    probs, _ = apply(images)
    got = score_model(apply, batches(), Y, metrics=("leep",), from_logits=False)
    np.testing.assert_allclose(got["leep"], leep_jax.leep(probs, labels, Y), rtol=1e-6)


class _PairModule(nnx.Module):
    """No ``head``: ``__call__`` returns ``(logits, features)`` itself. Its bias makes
    the logits change with the scale of the images, not only in size."""

    def __init__(self):
        self.linear = nnx.Linear(64, 10, bias_init=nnx.initializers.ones, rngs=nnx.Rngs(1))

    def features(self, images):
        return images.reshape(images.shape[0], -1)

    def __call__(self, images):
        return self.linear(self.features(images)) * 3.0, self.features(images)


def test_an_nnx_module_without_a_head_and_uint8_images():
    images, labels, _ = data()
    pixels = np.round(images * 255).astype(np.uint8)
    stream = [(pixels[i : i + BATCH], labels[i : i + BATCH]) for i in range(0, N, BATCH)]
    pair = _PairModule()
    # uint8 images are scaled to [0, 1] before the forward pass.
    got = score_model(pair, stream, Y)
    assert got["forward_passes"] == 1  # keep_predictions=True by default
    assert_scores(got, in_memory(*pair(pixels.astype(np.float32) / 255), labels))


def test_invalid_inputs_raise_value_error():
    with pytest.raises(ValueError, match="metrics"):
        score_model(_linear_apply, batches(), Y, metrics=("leep", "bogus"))
    with pytest.raises(ValueError, match="empty"):
        score_model(_linear_apply, [], Y)
    images, labels, _ = data()
    with pytest.raises(ValueError, match="labels must lie"):
        score_model(_linear_apply, [(images[:8], labels[:8] + Y)], Y, metrics="nce")
    with pytest.raises(ValueError, match="labels must have shape"):
        score_model(_linear_apply, [(images[:8], labels[:7])], Y, metrics="nce")
    with pytest.raises(ValueError, match="pair"):
        score_model(lambda x: x, batches(), Y, metrics="nce")
    with pytest.raises(ValueError, match="every example"):
        score_model(_linear_apply, [(images[:8], labels[:8], np.zeros(8, bool))], Y, metrics="nce")

    calls = []

    def shrinking():  # a dataset that yields less the second time
        calls.append(1)
        return iter(batches()[: 7 - len(calls)])

    with pytest.raises(ValueError, match="same data"):
        score_model(_linear_apply, shrinking, Y, metrics="leep", keep_predictions=False)
