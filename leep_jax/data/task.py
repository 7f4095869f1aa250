"""What a target task is to the code that reads one: the `Task` protocol and its arrays.

`leep_jax.data.TargetTask` satisfies `Task`; so does any object with the same five
attributes (tests use a small frozen dataclass). `TaskArrays` reads a task's arrays
once (a `TargetTask` gathers its images on every attribute access), and
`match_channels` converts images between grey and RGB so that any task can be shown to
a model of either channel count.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import numpy as np

__all__ = ["Task", "TaskArrays", "match_channels"]


class Task(Protocol):
    """A target task: ``num_classes`` and labelled train and test images.

    Images are ``[n, h, w, c]`` (uint8 or float), labels int ``[n]`` in
    ``[0, num_classes)``.
    """

    @property
    def num_classes(self) -> int: ...

    @property
    def train_images(self) -> np.ndarray: ...

    @property
    def train_labels(self) -> np.ndarray: ...

    @property
    def test_images(self) -> np.ndarray: ...

    @property
    def test_labels(self) -> np.ndarray: ...


@dataclasses.dataclass(frozen=True)
class TaskArrays:
    """A task's arrays, read once (itself a `Task`).

    Attributes:
      num_classes: Y, the number of target classes.
      train_images: ``[n, h, w, c]`` training images.
      train_labels: int32 ``[n]``.
      test_images: ``[m, h, w, c]`` test images.
      test_labels: int32 ``[m]``.
    """

    num_classes: int
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray

    @classmethod
    def of(cls, task: Task) -> TaskArrays:
        """Reads each of the task's splits once."""
        return cls(
            int(task.num_classes),
            np.asarray(task.train_images),
            np.asarray(task.train_labels, np.int32),
            np.asarray(task.test_images),
            np.asarray(task.test_labels, np.int32),
        )

    def check(self) -> TaskArrays:
        """Itself, after checking that it can be trained and evaluated on.

        Raises:
          ValueError: fewer than 2 classes, an empty split, or labels outside
            ``[0, num_classes)``.
        """
        if self.num_classes < 2:
            raise ValueError(f"a target task needs at least 2 classes, got {self.num_classes}")
        for split, labels in (("train", self.train_labels), ("test", self.test_labels)):
            if labels.size == 0:
                raise ValueError(f"the task's {split} split is empty")
            if labels.min() < 0 or labels.max() >= self.num_classes:
                raise ValueError(
                    f"{split} labels must lie in [0, {self.num_classes}), got "
                    f"[{labels.min()}, {labels.max()}]"
                )
        return self

    def with_channels(self, in_channels: int) -> TaskArrays:
        """The same task with images of ``in_channels`` channels (`match_channels`)."""
        return dataclasses.replace(
            self,
            train_images=match_channels(self.train_images, in_channels),
            test_images=match_channels(self.test_images, in_channels),
        )


def match_channels(images: np.ndarray, in_channels: int) -> np.ndarray:
    """Converts NHWC images between grey (1 channel) and RGB (3 channels).

    RGB becomes grey by the ITU-R BT.601 luma weights (what PIL's ``convert("L")``
    uses); grey becomes RGB by repeating the channel.

    Args:
      images: ``[n, h, w, c]`` uint8 or float images, ``c`` in {1, 3}.
      in_channels: the channel count wanted, 1 or 3.

    Returns:
      ``[n, h, w, in_channels]`` images of the input dtype (``images`` itself when the
      channel count already matches).

    Raises:
      ValueError: for other channel counts.
    """
    channels = images.shape[-1]
    if channels == in_channels:
        return images
    if (channels, in_channels) == (3, 1):
        weights = np.asarray([0.299, 0.587, 0.114], np.float32)
        grey = images.astype(np.float32) @ weights
        if images.dtype == np.uint8:
            grey = np.clip(np.rint(grey), 0, 255)
        return grey.astype(images.dtype)[..., None]
    if (channels, in_channels) == (1, 3):
        return np.repeat(images, 3, axis=-1)
    raise ValueError(f"cannot convert images with {channels} channels to {in_channels} channels")
