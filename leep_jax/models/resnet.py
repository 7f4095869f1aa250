"""Residual networks: the CIFAR ResNet20 and the ImageNet ResNet18 (He et al. 2016).

References:
    He, Zhang, Ren, Sun. Deep Residual Learning for Image Recognition. CVPR 2016.
    arXiv 1512.03385 (Section 4.2 for the CIFAR networks).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from leep_jax.models.common import (
    ImageClassifier,
    batch_norm,
    check_constructor_args,
    check_images,
    check_width,
    conv3x3,
    conv_kernel_init,
    global_average_pool,
    linear_head,
    register,
)


def _conv1x1(in_features: int, out_features: int, *, strides: int, rngs: nnx.Rngs) -> nnx.Conv:
    return nnx.Conv(
        in_features,
        out_features,
        kernel_size=(1, 1),
        strides=strides,
        padding="VALID",
        use_bias=False,
        kernel_init=conv_kernel_init,
        rngs=rngs,
    )


class BasicBlock(nnx.Module):
    """Two 3x3 conv-BN layers with a residual connection.

    The shortcut is the identity when the shape is kept. When the block downsamples
    (stride 2, more channels) it is either a 1x1 conv + BN projection (``"projection"``,
    the ImageNet ResNets' option B) or the parameter-free subsample-and-zero-pad of the
    CIFAR ResNets (``"pad"``, the paper's option A).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        strides: int,
        shortcut: str,
        rngs: nnx.Rngs,
    ):
        self.conv1 = conv3x3(in_features, out_features, strides=strides, rngs=rngs)
        self.bn1 = batch_norm(out_features, rngs=rngs)
        self.conv2 = conv3x3(out_features, out_features, rngs=rngs)
        self.bn2 = batch_norm(out_features, rngs=rngs)
        self.strides = strides
        self.extra_channels = out_features - in_features
        self.downsample = in_features != out_features or strides != 1
        self.projection = self.downsample and shortcut == "projection"
        if self.projection:
            self.shortcut_conv = _conv1x1(in_features, out_features, strides=strides, rngs=rngs)
            self.shortcut_bn = batch_norm(out_features, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.projection:
            residual = self.shortcut_bn(self.shortcut_conv(x))
        elif self.downsample:
            # Option A: take every strides-th pixel (ceil(h / 2) rows, like the padded
            # stride-2 conv) and pad the new channels with zeros.
            residual = x[:, :: self.strides, :: self.strides, :]
            residual = jnp.pad(residual, ((0, 0), (0, 0), (0, 0), (0, self.extra_channels)))
        else:
            residual = x
        return nnx.relu(y + residual)


def _stage(
    in_features: int,
    out_features: int,
    num_blocks: int,
    *,
    strides: int,
    shortcut: str,
    rngs: nnx.Rngs,
) -> nnx.List:
    blocks = [BasicBlock(in_features, out_features, strides=strides, shortcut=shortcut, rngs=rngs)]
    for _ in range(num_blocks - 1):
        blocks.append(
            BasicBlock(out_features, out_features, strides=1, shortcut=shortcut, rngs=rngs)
        )
    return nnx.List(blocks)


@register("resnet20")
class ResNet20(ImageClassifier):
    """The CIFAR ResNet20: a 3x3 stem, 3 stages of 3 basic blocks, global pooling, linear.

    Stages have ``16, 32, 64`` channels (times ``width``); the second and third start
    with a stride-2 block. With the paper's parameter-free shortcuts (option A, the
    default) it has 269,722 parameters at 10 classes (BatchNorm scale and bias counted,
    running statistics not); with 1x1 projection shortcuts (``projection_shortcut=True``)
    272,474. It is the LEEP paper's CIFAR10 source model.

    Args:
        num_classes: size of the classification head.
        in_channels: image channels, 1 or 3.
        width: channel multiplier (positive int); ``feature_dim = 64 * width``.
        projection_shortcut: use 1x1 conv + BN shortcuts where blocks downsample.
        rngs: parameter initialisation keys.
    """

    CONFIG_KEYS = ("num_classes", "in_channels", "width", "projection_shortcut")

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        width: int = 1,
        projection_shortcut: bool = False,
        rngs: nnx.Rngs,
    ):
        check_constructor_args(num_classes, in_channels)
        check_width(width)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.width = width
        self.projection_shortcut = bool(projection_shortcut)
        shortcut = "projection" if projection_shortcut else "pad"
        channels = [16 * width, 32 * width, 64 * width]
        self.feature_dim = channels[-1]

        self.stem_conv = conv3x3(in_channels, channels[0], rngs=rngs)
        self.stem_bn = batch_norm(channels[0], rngs=rngs)
        self.stage1 = _stage(channels[0], channels[0], 3, strides=1, shortcut=shortcut, rngs=rngs)
        self.stage2 = _stage(channels[0], channels[1], 3, strides=2, shortcut=shortcut, rngs=rngs)
        self.stage3 = _stage(channels[1], channels[2], 3, strides=2, shortcut=shortcut, rngs=rngs)
        self.head = linear_head(self.feature_dim, num_classes, rngs=rngs)

    def features(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Penultimate features ``[n, feature_dim]`` of NHWC images ``[n, h, w, c]``."""
        x = check_images(x, self.in_channels)
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        for stage in (self.stage1, self.stage2, self.stage3):
            for block in stage:
                x = block(x)
        return global_average_pool(x)


@register("resnet18")
class ResNet18(ImageClassifier):
    """The ImageNet ResNet18, laid out like torchvision's ``resnet18``.

    A 7x7 stride-2 stem and a 3x3 stride-2 max-pool, then 4 stages of 2 basic blocks
    (64, 128, 256, 512 channels; 1x1 projection shortcuts where blocks downsample),
    global average pooling and a linear head: 11,689,512 parameters at 1000 classes,
    exactly torchvision's count. ``small_inputs=True`` swaps the stem for a 3x3 stride-1
    conv without max-pool (the usual CIFAR variant), which keeps resolution on 32x32
    images.

    Args:
        num_classes: size of the classification head.
        in_channels: image channels, 1 or 3.
        small_inputs: use the 3x3 stem without max-pool.
        rngs: parameter initialisation keys.
    """

    CONFIG_KEYS = ("num_classes", "in_channels", "small_inputs")

    def __init__(
        self,
        num_classes: int,
        *,
        in_channels: int = 3,
        small_inputs: bool = False,
        rngs: nnx.Rngs,
    ):
        check_constructor_args(num_classes, in_channels)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.small_inputs = bool(small_inputs)
        channels = [64, 128, 256, 512]
        self.feature_dim = channels[-1]

        if small_inputs:
            self.stem_conv = conv3x3(in_channels, channels[0], rngs=rngs)
        else:
            self.stem_conv = nnx.Conv(
                in_channels,
                channels[0],
                kernel_size=(7, 7),
                strides=2,
                padding=((3, 3), (3, 3)),
                use_bias=False,
                kernel_init=conv_kernel_init,
                rngs=rngs,
            )
        self.stem_bn = batch_norm(channels[0], rngs=rngs)
        stages = []
        in_features = channels[0]
        for index, out_features in enumerate(channels):
            strides = 1 if index == 0 else 2
            stages.append(
                _stage(
                    in_features, out_features, 2, strides=strides, shortcut="projection", rngs=rngs
                )
            )
            in_features = out_features
        self.stages = nnx.List(stages)
        self.head = linear_head(self.feature_dim, num_classes, rngs=rngs)

    def features(self, x: jax.typing.ArrayLike) -> jax.Array:
        """Penultimate features ``[n, 512]`` of NHWC images ``[n, h, w, c]``."""
        x = check_images(x, self.in_channels)
        x = nnx.relu(self.stem_bn(self.stem_conv(x)))
        if not self.small_inputs:
            x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for stage in self.stages:
            for block in stage:
                x = block(x)
        return global_average_pool(x)
