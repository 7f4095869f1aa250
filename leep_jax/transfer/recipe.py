"""The training recipe: one `TrainConfig` value, the optimiser, schedule and augmentation.

One recipe serves source training, fine-tuning, training from scratch and the linear
head of `retrain_head`: SGD with Nesterov momentum 0.9, a (warmup-)cosine learning-rate
schedule, L2 weight decay on kernels only (not on biases or BatchNorm scales), and light
augmentation (random crop with zero padding; horizontal flip optional, since flipping
is wrong for digits). A run is described by one frozen `TrainConfig`; variants are made
with `dataclasses.replace`, which validates them again. The loops that train with it
are in `leep_jax.transfer.train`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "Schedule",
    "TrainConfig",
    "augment",
    "kernel_mask",
    "learning_rate_schedule",
    "sgd_recipe",
]

Schedule = Literal["cosine", "warmup_cosine", "constant"]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run (all hashable, so they key compile caches).

    Attributes:
        epochs: passes over the training set; an epoch is ``ceil(n / batch_size)`` steps.
        steps: a fixed budget of optimisation steps instead (None: ``epochs`` epochs).
            Training then takes exactly ``steps`` steps whatever the training set's
            size, passing over the data again as often as needed (the last pass may
            stop part way); ``epochs`` is ignored.
        eval_every: with evaluation data, evaluate after every ``eval_every`` steps and
            at the end (None: after every epoch).
        batch_size: examples per step (fixed, see the module docstring).
        learning_rate: peak learning rate of the schedule.
        momentum: SGD momentum.
        nesterov: Nesterov momentum.
        weight_decay: L2 coefficient, applied to kernels only.
        schedule: ``"cosine"`` (decay to 0), ``"warmup_cosine"`` (linear warmup over
            ``warmup_fraction`` of the steps, then cosine to 0) or ``"constant"``.
        warmup_fraction: share of the steps spent warming up (``"warmup_cosine"`` only).
        crop_padding: zero padding (pixels) for random crops; 0 disables cropping.
        flip: random horizontal flips (leave off for digits and other chiral data).
        seed: seeds the data order and the augmentation.
        eval_batch_size: batch size of evaluation and feature extraction.
        bn_recalibration_examples: before each evaluation and at the end, BatchNorm
            running statistics are re-estimated from up to this many (un-augmented)
            training examples; 0 keeps the moving averages (see
            `recalibrate_batch_norm`).
    """

    epochs: int
    steps: int | None = None
    eval_every: int | None = None
    batch_size: int = 128
    learning_rate: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: Schedule = "warmup_cosine"
    warmup_fraction: float = 0.05
    crop_padding: int = 2
    flip: bool = False
    seed: int = 0
    eval_batch_size: int = 512
    bn_recalibration_examples: int = 2048

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        for name in ("steps", "eval_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be >= 1 or None, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay}")
        if self.schedule not in ("cosine", "warmup_cosine", "constant"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if self.crop_padding < 0:
            raise ValueError(f"crop_padding must be >= 0, got {self.crop_padding}")
        if self.bn_recalibration_examples < 0:
            raise ValueError(
                f"bn_recalibration_examples must be >= 0, got {self.bn_recalibration_examples}"
            )


# ---------------------------------------------------------------------------- recipe


def _is_kernel(path: tuple[Any, ...]) -> bool:
    names = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    return bool(names) and names[-1] == "kernel"


def kernel_mask(params: Any) -> Any:
    """A pytree of bools over ``params``: True for kernels (Linear, Conv), else False.

    Weight decay on biases and BatchNorm scales only hurts (it shrinks the
    normalisation), so the recipe decays kernels alone.
    """
    return jax.tree_util.tree_map_with_path(lambda path, _: _is_kernel(path), params)


def sgd_recipe(
    learning_rate: float | optax.Schedule,
    *,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 5e-4,
) -> optax.GradientTransformation:
    """SGD with (Nesterov) momentum and L2 weight decay on kernels only.

    Args:
        learning_rate: a constant or an optax schedule (see `learning_rate_schedule`).
        momentum: momentum coefficient.
        nesterov: use Nesterov momentum.
        weight_decay: L2 coefficient added to the gradient of each kernel.

    Returns:
        The optax transformation (coupled L2, as in the classic ResNet recipe).
    """
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=kernel_mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


def learning_rate_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    """The schedule named by ``config.schedule`` over ``total_steps`` steps."""
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    peak = config.learning_rate
    if config.schedule == "constant":
        return optax.constant_schedule(peak)
    if config.schedule == "cosine":
        return optax.cosine_decay_schedule(peak, total_steps)
    warmup = int(round(config.warmup_fraction * total_steps))
    if warmup == 0:
        return optax.cosine_decay_schedule(peak, total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, total_steps)


# ----------------------------------------------------------------------- augmentation


def augment(images: jax.Array, key: jax.Array, *, crop_padding: int, flip: bool) -> jax.Array:
    """Random crops (zero padding) and optional horizontal flips, per example.

    Args:
        images: ``[n, h, w, c]`` float images.
        key: PRNG key.
        crop_padding: pixels of zero padding on each side before cropping back to
            ``h x w``; 0 disables cropping.
        flip: flip each image left-right with probability 1/2.

    Returns:
        ``[n, h, w, c]`` augmented images.
    """
    n, h, w, c = images.shape
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        p = crop_padding
        padded = jnp.pad(images, ((0, 0), (p, p), (p, p), (0, 0)))
        offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * p + 1)

        def crop(image, offset):
            return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))

        images = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(flip_key, 0.5, (n, 1, 1, 1))
        images = jnp.where(do_flip, images[:, :, ::-1, :], images)
    return images
