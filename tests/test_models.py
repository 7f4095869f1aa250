"""Source models: parameter counts, shapes, the forward() contract, modes, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from leep_jax.models import (
    ResNet18,
    ResNet20,
    SmallCNN,
    build_model,
    forward,
    model_names,
)
from leep_jax.models.common import conv_kernel_init, dense_kernel_init


def count_params(model) -> int:
    """Trainable parameters: BatchNorm scale/bias count, running statistics do not."""
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def abstract(build):
    """Builds a model with shapes only (no initialisation compute)."""
    return nnx.eval_shape(build)


def images(shape, seed=0):
    # NumPy, not jax.random: each new shape of a jax.random draw compiles a program.
    return np.random.default_rng(seed).uniform(size=shape).astype(np.float32)


def materialize(model, seed=0):
    """Fills an abstract model with NumPy random weights and running statistics, in place.

    Real initialisation compiles one random-number program per weight shape, which
    takes tens of seconds for the ResNets on a busy 2-core CPU; the forward pass is what
    these tests are about, and NumPy fills cost no compilation. He-scaled kernels keep
    activations in a sensible range; non-trivial statistics make eval mode matter.
    """
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith("['mean']"):
            value = 0.1 * rng.standard_normal(leaf.shape)
        elif name.endswith("['var']"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif name.endswith("['scale']"):
            value = 1.0 + 0.1 * rng.standard_normal(leaf.shape)
        elif name.endswith("['bias']"):
            value = 0.1 * rng.standard_normal(leaf.shape)
        else:  # conv or dense kernel, fan-in along all axes but the last
            value = rng.standard_normal(leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    state = nnx.state(model)
    filled = jax.tree_util.tree_map_with_path(fill, nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, filled)
    nnx.update(model, state)
    return model


# Module-scoped, in eval mode: each distinct model compiles its forward pass once.
@pytest.fixture(scope="module")
def small_cnn():
    model = SmallCNN(5, in_channels=1, width=4, rngs=nnx.Rngs(0))  # real initialisation
    model.eval()
    return model


@pytest.fixture(scope="module")
def resnet20():
    model = materialize(abstract(lambda: ResNet20(5, in_channels=3, rngs=nnx.Rngs(0))), seed=1)
    model.eval()
    return model


@pytest.fixture(scope="module")
def resnet18():
    model = materialize(abstract(lambda: ResNet18(5, in_channels=1, rngs=nnx.Rngs(0))), seed=2)
    model.eval()
    return model


# One compiled program per model and shape gives all three outputs; each is traced
# separately, so they agree only if __call__ really is head(features(x)).
all_outputs = nnx.jit(lambda model, x: (forward(model, x), model(x), model.features(x)))


# --- parameter counts -------------------------------------------------------------


def test_resnet20_parameter_count():
    # Paper's option A shortcuts (parameter-free): 269,722; 1x1 projections: 272,474,
    # the count usually quoted. Both are "0.27M" (He et al. 2016, Table 6).
    option_a = count_params(abstract(lambda: ResNet20(10, rngs=nnx.Rngs(0))))
    option_b = count_params(
        abstract(lambda: ResNet20(10, projection_shortcut=True, rngs=nnx.Rngs(0)))
    )
    assert option_a == 269_722
    assert option_b == 272_474
    assert abs(option_a - 272_474) / 272_474 < 0.02
    # Projections add 1x1 convs 16->32 and 32->64 with their BatchNorms.
    assert option_b - option_a == (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)


def test_resnet18_parameter_count_matches_torchvision():
    model = abstract(lambda: ResNet18(1000, rngs=nnx.Rngs(0)))
    assert count_params(model) == 11_689_512  # torchvision.models.resnet18()
    small = abstract(lambda: ResNet18(1000, small_inputs=True, rngs=nnx.Rngs(0)))
    # The small-input stem swaps the 7x7 conv for a 3x3 one; nothing else changes.
    assert count_params(small) == 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64


def test_running_statistics_are_not_params():
    model = abstract(lambda: ResNet18(1000, rngs=nnx.Rngs(0)))
    batch_norm_scales = [
        leaf.size
        for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
        if "scale" in jax.tree_util.keystr(path)
    ]
    num_stats = sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat)))
    assert num_stats == 2 * sum(batch_norm_scales)  # a mean and a variance per scale


@pytest.mark.parametrize("width", [1, 2])
def test_resnet20_width(width):
    model = abstract(lambda: ResNet20(10, width=width, rngs=nnx.Rngs(0)))
    assert model.feature_dim == 64 * width
    assert model.head.kernel.shape == (64 * width, 10)


@pytest.mark.parametrize("width", [4, 16])
def test_small_cnn_parameter_count(width):
    model = abstract(lambda: SmallCNN(10, in_channels=1, width=width, rngs=nnx.Rngs(0)))
    convs = 9 * (1 * width + width * 2 * width + 2 * width * 4 * width)
    batch_norms = 2 * (width + 2 * width + 4 * width)
    head = 4 * width * 10 + 10
    assert count_params(model) == convs + batch_norms + head
    assert model.feature_dim == 4 * width


# --- shapes (abstract evaluation: traces every layer and check, compiles nothing) ---

ARCHITECTURES = {
    "resnet20": lambda c: ResNet20(7, in_channels=c, rngs=nnx.Rngs(0)),
    "resnet20_projection": lambda c: ResNet20(
        7, in_channels=c, projection_shortcut=True, rngs=nnx.Rngs(0)
    ),
    "resnet18": lambda c: ResNet18(7, in_channels=c, rngs=nnx.Rngs(0)),
    "resnet18_small": lambda c: ResNet18(7, in_channels=c, small_inputs=True, rngs=nnx.Rngs(0)),
    "small_cnn": lambda c: SmallCNN(7, in_channels=c, rngs=nnx.Rngs(0)),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(8, 8), (28, 28), (32, 32), (9, 13)])
def test_output_shapes(arch, channels, size):
    model = abstract(lambda: ARCHITECTURES[arch](channels))
    model.eval()
    x = jax.ShapeDtypeStruct((3, *size, channels), jnp.float32)
    logits, features = nnx.eval_shape(forward, model, x)
    assert logits.shape == (3, 7) and logits.dtype == jnp.float32
    assert features.shape == (3, model.feature_dim) and features.dtype == jnp.float32
    assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (3, 7)


def test_low_precision_input_is_cast_to_float32(small_cnn):
    x = images((2, 8, 8, 1)).astype(jnp.bfloat16)
    logits, features = nnx.jit(forward)(small_cnn, x)
    expected, _ = nnx.jit(forward)(small_cnn, x.astype(jnp.float32))
    assert logits.dtype == features.dtype == jnp.float32
    np.testing.assert_array_equal(logits, expected)


# --- the forward() contract ---------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "shape"),
    [("small_cnn", (4, 28, 28, 1)), ("resnet20", (4, 32, 32, 3)), ("resnet18", (4, 8, 8, 1))],
)
def test_forward_gives_logits_and_features_in_one_pass(request, fixture, shape):
    model = request.getfixturevalue(fixture)
    x = images(shape)
    (logits, features), called, features_only = all_outputs(model, x)
    assert logits.shape == (shape[0], model.num_classes)
    assert features.shape == (shape[0], model.feature_dim)
    np.testing.assert_array_equal(logits, called)
    np.testing.assert_array_equal(features, features_only)
    np.testing.assert_allclose(model.head(features), logits, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(features))
    # Features follow ReLUs and an average pool, so they are non-negative.
    assert np.all(np.asarray(features) >= 0)
    # Distinct images give distinct outputs (the network does not collapse them).
    assert np.unique(np.asarray(logits), axis=0).shape[0] == shape[0]


def test_forward_eager_equals_jit_and_call(small_cnn):
    x = images((3, 12, 12, 1))
    eager = forward(small_cnn, x)
    jitted = nnx.jit(forward)(small_cnn, x)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(eager[0], small_cnn(x))
    np.testing.assert_array_equal(eager[1], small_cnn.features(x))


# --- BatchNorm modes ----------------------------------------------------------------


def batch_stats(model):
    return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


def test_eval_mode_is_deterministic_and_per_example(resnet20, small_cnn):
    x = images((4, 32, 32, 3), seed=1)
    before = batch_stats(resnet20)
    first = all_outputs(resnet20, x)
    second = all_outputs(resnet20, x)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(before, batch_stats(resnet20), strict=True):
        np.testing.assert_array_equal(a, b)  # scoring leaves the running statistics alone
    # With running statistics an example's output does not depend on its batch mates.
    x = images((6, 8, 8, 1), seed=3)
    together, _ = nnx.jit(forward)(small_cnn, x)
    apart = np.concatenate([nnx.jit(forward)(small_cnn, x[i : i + 3])[0] for i in (0, 3)])
    np.testing.assert_allclose(apart, together, rtol=1e-5, atol=1e-5)


def test_real_initialisation_is_he_normal(small_cnn):
    kernel = np.asarray(small_cnn.conv3.kernel[...])  # [3, 3, 8, 16]
    fan_out = 3 * 3 * kernel.shape[-1]
    assert abs(kernel.std() / np.sqrt(2.0 / fan_out) - 1) < 0.1
    assert abs(kernel.mean()) < 0.02
    np.testing.assert_array_equal(small_cnn.bn3.scale[...], 1.0)
    np.testing.assert_array_equal(small_cnn.bn3.mean[...], 0.0)
    np.testing.assert_array_equal(small_cnn.bn3.var[...], 1.0)


def test_train_mode_updates_running_statistics(small_cnn):
    model = nnx.clone(small_cnn)
    model.train()
    before = batch_stats(model)
    x = images((8, 8, 8, 1), seed=2)
    train_logits = model(x)
    after = batch_stats(model)
    assert all(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))
    model.eval()
    # Batch statistics (train) and running statistics (eval) normalise differently.
    assert not np.allclose(train_logits, model(x))
    # The clone is independent: the shared fixture still has its initial statistics.
    for a, b in zip(before, batch_stats(small_cnn), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_initialisers_equal_jax_variance_scaling():
    # The flat-draw initialisers exist only to compile faster; values must not change.
    # (Slow: the reference draws with a multi-dimensional shape, the slow-compiling case.)
    key = jax.random.key(3)
    for shape in [(3, 3, 8, 16), (7, 7, 3, 64)]:
        expected = jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")(key, shape)
        np.testing.assert_array_equal(conv_kernel_init(key, shape), expected)
    expected = jax.nn.initializers.lecun_normal()(key, (64, 10))
    np.testing.assert_array_equal(dense_kernel_init(key, (64, 10)), expected)


@pytest.mark.slow
def test_real_resnets_initialise_and_run():
    # Concrete initialisation of both ResNets (slow on CPU: one compile per weight shape).
    for model in (
        ResNet20(10, in_channels=3, rngs=nnx.Rngs(0)),
        ResNet18(10, in_channels=1, small_inputs=True, rngs=nnx.Rngs(0)),
    ):
        model.eval()
        x = images((2, 8, 8, model.in_channels))
        (logits, features), called, _ = all_outputs(model, x)
        np.testing.assert_array_equal(logits, called)
        assert np.all(np.isfinite(logits)) and features.shape == (2, model.feature_dim)
        rebuilt = abstract(lambda m=model: build_model(m.name, **m.config()))
        assert count_params(model) == count_params(rebuilt)


# --- registry -------------------------------------------------------------------------


def test_registry_builds_each_architecture():
    assert model_names() == ("resnet18", "resnet20", "small_cnn")
    expected = {"resnet18": ResNet18, "resnet20": ResNet20, "small_cnn": SmallCNN}
    for name in model_names():
        model = abstract(lambda name=name: build_model(name, num_classes=4, in_channels=1))
        assert type(model) is expected[name]
        assert model.name == name
        assert model.num_classes == 4 and model.in_channels == 1
        # config() is exactly what rebuilds the architecture.
        rebuilt = abstract(lambda name=name, model=model: build_model(name, **model.config()))
        assert rebuilt.config() == model.config()
        assert count_params(rebuilt) == count_params(model)


def test_registry_errors():
    with pytest.raises(ValueError, match="unknown model 'vgg16'.*resnet20"):
        build_model("vgg16", num_classes=10)
    with pytest.raises(ValueError, match="bad arguments.*small_cnn"):
        build_model("small_cnn", num_classes=10, depth=3)
    with pytest.raises(ValueError, match="bad arguments"):
        build_model("resnet20")  # num_classes missing


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((28, 28, 1), np.float32), "rank 4"),
        (np.zeros((1, 2, 28, 28, 1), np.float32), "rank 4"),
        (np.zeros((2, 28, 28, 1), np.uint8), "floating dtype.*uint8"),
        (np.zeros((2, 28, 28, 1), np.int32), "floating dtype.*int32"),
        (np.zeros((2, 28, 28, 3), np.float32), "3 channels.*in_channels=1"),
        (np.zeros((2, 1, 28, 28), np.float32), "28 channels.*in_channels=1"),
        (np.zeros((2, 7, 28, 1), np.float32), "at least 8x8.*7x28"),
        (np.zeros((2, 28, 4, 1), np.float32), "at least 8x8.*28x4"),
    ],
)
def test_bad_images_raise(small_cnn, x, match):
    with pytest.raises(ValueError, match=match):
        forward(small_cnn, x)
    with pytest.raises(ValueError, match=match):
        small_cnn(x)
    with pytest.raises(ValueError, match=match):
        nnx.jit(forward)(small_cnn, x)


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: ResNet20(10, in_channels=2, rngs=nnx.Rngs(0)), "in_channels"),
        (lambda: ResNet18(10, in_channels=4, rngs=nnx.Rngs(0)), "in_channels"),
        (lambda: SmallCNN(10, in_channels=0, rngs=nnx.Rngs(0)), "in_channels"),
        (lambda: SmallCNN(0, rngs=nnx.Rngs(0)), "num_classes"),
        (lambda: ResNet20(2.5, rngs=nnx.Rngs(0)), "num_classes"),
        (lambda: ResNet20(10, width=0, rngs=nnx.Rngs(0)), "width"),
        (lambda: SmallCNN(10, width=1.5, rngs=nnx.Rngs(0)), "width"),
    ],
)
def test_bad_constructor_arguments_raise(build, match):
    with pytest.raises(ValueError, match=match):
        abstract(build)
