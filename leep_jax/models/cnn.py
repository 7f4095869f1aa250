"""A small, fast convolutional network for tests and quick runs."""

from __future__ import annotations

import jax
from flax import nnx

from leep_jax.models.common import (
    ImageClassifier,
    batch_norm,
    check_constructor_args,
    check_images,
    check_width,
    conv3x3,
    global_average_pool,
    linear_head,
    register,
)


@register("small_cnn")
class SmallCNN(ImageClassifier):
    """Three 3x3 conv-BN-ReLU layers (``width``, ``2 * width``, ``4 * width`` channels; the
    last two with stride 2), global average pooling and a linear head.

    About 24k parameters at ``width=16`` and 10 classes: a few seconds of CPU training
    reach well above chance on FashionMNIST, and it exercises the same BatchNorm and
    checkpoint code paths as the ResNets.

    Args:
        num_classes: size of the classification head.
        in_channels: image channels, 1 or 3.
        width: channels of the first layer (positive int); ``feature_dim = 4 * width``.
        rngs: parameter initialisation keys.
    """

    CONFIG_KEYS = ("num_classes", "in_channels", "width")

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 1,
        width: int = 16,
        rngs: nnx.Rngs,
    ):
        check_constructor_args(num_classes, in_channels)
        check_width(width)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.feature_dim = 4 * width

        self.conv1 = conv3x3(in_channels, width, rngs=rngs)
        self.bn1 = batch_norm(width, rngs=rngs)
        self.conv2 = conv3x3(width, 2 * width, strides=2, rngs=rngs)
        self.bn2 = batch_norm(2 * width, rngs=rngs)
        self.conv3 = conv3x3(2 * width, 4 * width, strides=2, rngs=rngs)
        self.bn3 = batch_norm(4 * width, rngs=rngs)
        self.head = linear_head(self.feature_dim, num_classes, rngs=rngs)

    def features(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Penultimate features ``[n, 4 * width]`` of NHWC images ``[n, h, w, c]``."""
        x = check_images(x, self.in_channels)
        x = nnx.relu(self.bn1(self.conv1(x)))
        x = nnx.relu(self.bn2(self.conv2(x)))
        x = nnx.relu(self.bn3(self.conv3(x)))
        return global_average_pool(x)
