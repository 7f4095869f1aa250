"""What every source model shares: input checks, layer defaults, forward(), the registry.

Every model in :mod:`leep_jax.models` follows one contract:

* ``model.features(x)`` maps NHWC images ``[n, h, w, c]`` to penultimate features
  ``[n, feature_dim]`` (global average pooling, so any image of at least 8x8 works);
* ``model.head`` is an ``nnx.Linear`` from ``feature_dim`` to ``num_classes``;
* ``model(x) == model.head(model.features(x))`` gives logits ``[n, num_classes]``;
* ``model.name`` (registry name) and ``model.config()`` (constructor keyword arguments
  except ``rngs``) are enough to rebuild the architecture, which is what checkpoints store.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import jax
import jax.numpy as jnp
from flax import nnx

MIN_IMAGE_SIZE = 8
SUPPORTED_CHANNELS = (1, 3)


# Why the initialisers below draw flat vectors and reshape: with JAX's default
# (partitionable) threefry, XLA:CPU took 3-17 s to compile a random draw of a small
# multi-dimensional shape such as [3, 3, 8, 16], against about 1 s for the same number of
# values drawn as a vector (jax 0.10.2, a busy 2-core machine); building a ResNet20 took
# tens of seconds. Partitionable threefry numbers elements by their flat index, so the
# flat draws give the same values as jax.nn.initializers.variance_scaling with the same
# key (tests/test_models.py checks this).


def conv_kernel_init(
    key: jax.Array, shape: tuple[int, ...], dtype: jax.typing.DTypeLike = jnp.float32
) -> jax.Array:
    """He normal with fan-out, torchvision's ResNet initialisation for conv kernels.

    Equals ``jax.nn.initializers.variance_scaling(2.0, "fan_out", "normal")``: kernels
    ``[*window, in_features, out_features]`` get standard deviation
    ``sqrt(2 / (prod(window) * out_features))``.
    """
    fan_out = math.prod(shape[:-2]) * shape[-1]
    std = jnp.sqrt(jnp.array(2.0 / fan_out, dtype))
    return (jax.random.normal(key, (math.prod(shape),), dtype) * std).reshape(shape)


def dense_kernel_init(
    key: jax.Array, shape: tuple[int, ...], dtype: jax.typing.DTypeLike = jnp.float32
) -> jax.Array:
    """LeCun normal, flax's default for ``nnx.Linear`` kernels ``[in_features, out_features]``.

    Equals ``jax.nn.initializers.lecun_normal()``: a normal truncated to two standard
    deviations, rescaled to standard deviation ``sqrt(1 / in_features)``.
    """
    in_features = shape[0]
    # 0.8796... is the standard deviation of a standard normal truncated to (-2, 2).
    std = jnp.sqrt(jnp.array(1.0 / in_features, dtype)) / jnp.array(0.87962566103423978, dtype)
    draws = jax.random.truncated_normal(key, -2, 2, (math.prod(shape),), dtype)
    return (draws * std).reshape(shape)


# PyTorch's BatchNorm defaults (momentum 0.1 there is 0.9 here). Flax's 0.99 makes the
# running statistics lag far behind the weights in the short runs this project does.
BATCH_NORM_MOMENTUM = 0.9
BATCH_NORM_EPSILON = 1e-5


class SourceModel(Protocol):
    """The interface every source model implements (see the module docstring)."""

    name: str
    num_classes: int
    in_channels: int
    feature_dim: int
    head: nnx.Linear

    def features(self, x: jax.typing.ArrayLike) -> jax.Array: ...

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array: ...

    def config(self) -> dict[str, Any]: ...


def check_images(x: jax.typing.ArrayLike, in_channels: int) -> jax.Array:
    """Validates a batch of NHWC images and casts it to float32.

    Shapes are static under ``jax.jit``, so the checks also run (once, at trace time)
    inside jitted code.

    Args:
        x: images ``[n, h, w, c]`` of a floating dtype, ``h, w >= 8``.
        in_channels: the channel count the model was built for (1 or 3).

    Returns:
        ``x`` as float32 ``[n, h, w, c]``.

    Raises:
        ValueError: if ``x`` is not rank 4, not floating point, has another channel
            count than ``in_channels``, or is smaller than 8x8 pixels.
    """
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(
            f"images must be NHWC with rank 4 [n, h, w, c], got rank {x.ndim} "
            f"with shape {tuple(x.shape)}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(
            f"images must have a floating dtype (float32 in [0, 1]), got dtype {x.dtype}; "
            "convert uint8 images with x.astype(np.float32) / 255"
        )
    _, height, width, channels = x.shape
    if channels != in_channels:
        raise ValueError(
            f"images have {channels} channels (last axis of shape {tuple(x.shape)}) but "
            f"the model was built for in_channels={in_channels}"
        )
    if height < MIN_IMAGE_SIZE or width < MIN_IMAGE_SIZE:
        raise ValueError(
            f"images must be at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels, "
            f"got {height}x{width}"
        )
    return x.astype(jnp.float32)


def check_constructor_args(num_classes: int, in_channels: int) -> None:
    """Raises ValueError for class or channel counts no model supports."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if in_channels not in SUPPORTED_CHANNELS:
        raise ValueError(f"in_channels must be one of {SUPPORTED_CHANNELS}, got {in_channels!r}")


def check_width(width: int) -> None:
    """Raises ValueError unless ``width`` (a channel multiplier) is a positive int."""
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive int, got {width!r}")


class ImageClassifier(nnx.Module):
    """The part of the :class:`SourceModel` contract every built-in model shares.

    A subclass builds ``head`` and defines ``features``; ``model(x)`` is
    ``head(features(x))``, and ``config()`` reads the attributes named in
    ``CONFIG_KEYS`` (its constructor's keyword arguments except ``rngs``).
    """

    name: str  # set by @register
    CONFIG_KEYS: tuple[str, ...] = ("num_classes", "in_channels")

    def config(self) -> dict[str, Any]:
        """Constructor keyword arguments (except ``rngs``) that rebuild this architecture."""
        return {key: getattr(self, key) for key in self.CONFIG_KEYS}

    def __call__(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Logits ``[n, num_classes]`` of NHWC images ``[n, h, w, c]``."""
        return self.head(self.features(x))


def conv3x3(in_features: int, out_features: int, *, strides: int = 1, rngs: nnx.Rngs) -> nnx.Conv:
    """3x3 convolution without bias (a BatchNorm follows) and PyTorch's padding of 1."""
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(3, 3),
        strides=strides,
        padding=((1, 1), (1, 1)),
        use_bias=False,
        kernel_init=conv_kernel_init,
        rngs=rngs,
    )


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with the project's momentum and epsilon (starts in training mode)."""
    return nnx.BatchNorm(
        num_features, momentum=BATCH_NORM_MOMENTUM, epsilon=BATCH_NORM_EPSILON, rngs=rngs
    )


def linear_head(in_features: int, num_classes: int, *, rngs: nnx.Rngs) -> nnx.Linear:
    """The classification head ``[n, in_features] -> [n, num_classes]``, with bias."""
    return nnx.Linear(in_features, num_classes, kernel_init=dense_kernel_init, rngs=rngs)


def global_average_pool(x: jax.Array) -> jax.Array:
    """``[n, h, w, c] -> [n, c]``."""
    return jnp.mean(x, axis=(1, 2))


def forward(model: SourceModel, x: jax.typing.ArrayLike) -> tuple[jax.Array, jax.Array]:
    """Logits and penultimate features from one pass through ``model``.

    The features are computed once and fed to the head, so the logits are exactly
    ``model(x)`` at the cost of a single forward pass. Call ``model.eval()`` first when
    scoring, so that BatchNorm uses its running statistics.

    Args:
        model: a source model following the contract of :mod:`leep_jax.models`.
        x: NHWC float images ``[n, h, w, in_channels]``, ``h, w >= 8``.

    Returns:
        ``(logits, features)``: ``[n, num_classes]`` and ``[n, feature_dim]`` float32.

    Raises:
        ValueError: for images of the wrong rank, dtype, channel count or size.

    Examples:
        >>> from flax import nnx
        >>> import jax.numpy as jnp
        >>> from leep_jax.models import SmallCNN, forward
        >>> model = SmallCNN(10, rngs=nnx.Rngs(0))
        >>> model.eval()
        >>> logits, features = forward(model, jnp.zeros((2, 28, 28, 1)))
        >>> logits.shape, features.shape
        ((2, 10), (2, 64))
    """
    features = model.features(x)
    return model.head(features), features


_REGISTRY: dict[str, Callable[..., SourceModel]] = {}

M = TypeVar("M")


def register(name: str) -> Callable[[M], M]:
    """Class decorator adding a model class to the registry under ``name``."""

    def add(cls: M) -> M:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = cls
        cls.name = name
        return cls

    return add


def model_names() -> tuple[str, ...]:
    """The registered architecture names, sorted."""
    return tuple(sorted(_REGISTRY))


def build_model(name: str, *, rngs: nnx.Rngs | None = None, **kwargs: Any) -> SourceModel:
    """Builds a registered architecture by name.

    Args:
        name: one of :func:`model_names` (``"resnet18"``, ``"resnet20"``, ``"small_cnn"``).
        rngs: parameter initialisation keys; ``nnx.Rngs(0)`` if omitted.
        **kwargs: the constructor's arguments (``num_classes``, ``in_channels``, ...).

    Returns:
        A freshly initialised model, in training mode (BatchNorm updates its statistics).

    Raises:
        ValueError: for an unknown name or invalid constructor arguments.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(model_names())}")
    try:
        return _REGISTRY[name](rngs=nnx.Rngs(0) if rngs is None else rngs, **kwargs)
    except TypeError as error:  # unexpected or missing keyword arguments
        raise ValueError(f"bad arguments {kwargs} for model {name!r}: {error}") from error


def count_params(model: nnx.Module) -> int:
    """The number of trainable parameters (`nnx.Param` leaves) of ``model``."""
    return sum(int(math.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
