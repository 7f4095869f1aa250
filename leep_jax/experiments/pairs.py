"""Source -> target pairs: `parse_pair` and the `Pair` / `DatasetSlice` values it returns.

Pairs are written ``SOURCE->TARGET`` (or ``SOURCE:TARGET``), each side a dataset name
with an optional class set: ``fashion_mnist[0-4]->fashion_mnist[5-9]``,
``fashion_mnist->digits``, ``tfds:cifar10->tfds:cifar100`` (also
``tfds:cifar10:tfds:cifar100``).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from leep_jax.data import BUILTIN_DATASETS, dataset_num_classes

__all__ = ["DatasetSlice", "Pair", "format_classes", "parse_pair", "parse_slice"]


@dataclasses.dataclass(frozen=True)
class DatasetSlice:
    """A dataset, or a set of its classes.

    Attributes:
      dataset: a `leep_jax.data.load_dataset` name (``fashion_mnist``, ``digits``,
        ``tfds:<name>``).
      classes: sorted class ids, or None for all classes of the dataset.
    """

    dataset: str
    classes: tuple[int, ...] | None = None

    def __str__(self) -> str:
        if self.classes is None:
            return self.dataset
        return f"{self.dataset}[{format_classes(self.classes)}]"

    def class_ids(self) -> tuple[int, ...]:
        """The class ids (all of the dataset's when ``classes`` is None)."""
        if self.classes is not None:
            return self.classes
        return tuple(range(dataset_num_classes(self.dataset)))


@dataclasses.dataclass(frozen=True)
class Pair:
    """A source -> target pair: the source model's training data and the target pool."""

    source: DatasetSlice
    target: DatasetSlice

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


def format_classes(classes: Sequence[int]) -> str:
    """``(0, 1, 2, 4)`` -> ``"0-2,4"`` (runs of consecutive ids become ranges)."""
    parts, start = [], None
    for i, c in enumerate(classes):
        if start is None:
            start = c
        if i + 1 == len(classes) or classes[i + 1] != c + 1:
            parts.append(str(c) if c == start else f"{start}-{c}")
            start = None
    return ",".join(parts)


_SLICE = re.compile(r"^(?P<dataset>[A-Za-z0-9_.:/-]+?)(?:\[(?P<classes>[^\]]*)\])?$")
_PAIR_HELP = (
    "expected SOURCE->TARGET (or SOURCE:TARGET), each a dataset (fashion_mnist, digits, "
    "tfds:NAME) with optional classes, e.g. 'fashion_mnist[0-4]->fashion_mnist[5-9]' "
    "or 'tfds:cifar10:tfds:cifar100'"
)


def _parse_classes(text: str, where: str) -> tuple[int, ...]:
    classes: list[int] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ValueError(
                f"bad pair {where!r}: bad class list {text!r} (use ids and ranges, e.g. 0-4,7)"
            )
        low, high = int(match[1]), int(match[2] or match[1])
        if high < low:
            raise ValueError(f"bad pair {where!r}: bad class range {part!r}")
        classes.extend(range(low, high + 1))
    if len(set(classes)) != len(classes):
        raise ValueError(f"bad pair {where!r}: repeated classes")
    return tuple(sorted(classes))


def _parse_slice(text: str, pair_text: str) -> DatasetSlice:
    match = _SLICE.match(text.strip())
    if not match or not match["dataset"]:
        raise ValueError(f"bad pair {pair_text!r}: {_PAIR_HELP}")
    dataset = match["dataset"]
    if dataset.startswith("tfds:"):
        if not dataset[len("tfds:") :]:
            raise ValueError(f"bad pair {pair_text!r}: give a TFDS name after 'tfds:'")
    elif dataset not in BUILTIN_DATASETS:
        raise ValueError(
            f"bad pair {pair_text!r}: unknown dataset {dataset!r} (expected one of "
            f"{', '.join(BUILTIN_DATASETS)} or tfds:NAME)"
        )
    classes = None
    if match["classes"] is not None:
        classes = _parse_classes(match["classes"], pair_text)
        if len(classes) < 2:
            raise ValueError(f"bad pair {pair_text!r}: {dataset} needs at least 2 classes")
        if not dataset.startswith("tfds:"):  # TFDS class counts need TensorFlow: checked later
            total = dataset_num_classes(dataset)
            if classes[-1] >= total:
                raise ValueError(
                    f"bad pair {pair_text!r}: class {classes[-1]} out of range for {dataset} "
                    f"(0..{total - 1})"
                )
    return DatasetSlice(dataset, classes)


def _split_pair(text: str) -> tuple[str, str]:
    if "->" in text:
        parts = text.split("->")
        if len(parts) != 2:
            raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
        return parts[0], parts[1]
    # SOURCE:TARGET, where a "tfds" token joins the name after it (tfds:cifar10).
    tokens = text.split(":")
    sides: list[str] = []
    i = 0
    while i < len(tokens):
        if tokens[i] == "tfds" and i + 1 < len(tokens):
            sides.append(f"tfds:{tokens[i + 1]}")
            i += 2
        else:
            sides.append(tokens[i])
            i += 1
    if len(sides) != 2:
        raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
    return sides[0], sides[1]


def parse_pair(text: str) -> Pair:
    """Parses ``SOURCE->TARGET`` (or ``SOURCE:TARGET``).

    Each side is ``DATASET`` or ``DATASET[CLASSES]``; DATASET is ``fashion_mnist``,
    ``digits`` or ``tfds:NAME``; CLASSES are ids and ranges (``0-4``, ``0,2,4``,
    ``0-2,7``). In the colon form a ``tfds`` token joins the name after it, so
    ``tfds:cifar10:tfds:cifar100`` is CIFAR10 -> CIFAR100.

    Raises:
      ValueError: a malformed pair, an unknown dataset or classes out of range (TFDS
        class ranges are checked when the data is loaded).

    Examples:
      >>> str(parse_pair("fashion_mnist[0,1,2,3,4]:fashion_mnist[5-9]"))
      'fashion_mnist[0-4]->fashion_mnist[5-9]'
      >>> str(parse_pair("tfds:cifar10:tfds:cifar100"))
      'tfds:cifar10->tfds:cifar100'
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"bad pair {text!r}: {_PAIR_HELP}")
    source, target = _split_pair(text.strip())
    return Pair(_parse_slice(source, text), _parse_slice(target, text))


def parse_slice(text: str) -> DatasetSlice:
    """Parses one side of a pair, ``DATASET`` or ``DATASET[CLASSES]`` (see `parse_pair`).

    Raises:
      ValueError: a malformed slice, an unknown dataset or classes out of range.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"bad dataset {text!r}: expected e.g. 'digits' or 'fashion_mnist[5-9]'")
    return _parse_slice(text, text)
