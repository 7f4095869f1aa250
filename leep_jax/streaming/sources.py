"""Where the scoring engine's batches come from: user batches, arrays and ``.npy`` files.

Every source yields :class:`Batch` values of ONE shape (ragged batches are zero-padded
with a False mask, larger ones are cut), so the engine's jitted steps compile once.
Labels are checked on the host, before any cast: 64-bit labels would wrap when cast to
int32, and out-of-range labels would be silently dropped by the jitted scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np


class Batch(NamedTuple):
    """One fixed-size batch for the engine."""

    inputs: Any  # a pytree with leading axis b: images, or (predictions, features)
    labels: np.ndarray  # int32[b]
    mask: np.ndarray  # bool[b]: False for padding and masked rows
    first_row: int  # index of the batch's first row in the whole data


class BatchSource(Protocol):
    """``source(second_pass=False)``: a fresh iterator of fixed-size batches."""

    def __call__(self, second_pass: bool = False) -> Iterator[Batch]: ...


def _pad_rows(x, size: int):
    """Zero-pads the leading axis of a NumPy or JAX array to ``size`` rows."""
    if x.shape[0] == size:
        return x
    widths = [(0, size - x.shape[0])] + [(0, 0)] * (x.ndim - 1)
    return np.pad(x, widths) if isinstance(x, np.ndarray) else jnp.pad(x, widths)


def check_labels(labels: np.ndarray, num_target_classes: int, first_row: int) -> None:
    """Raises ValueError naming the first host label outside ``[0, num_target_classes)``."""
    bad = (labels < 0) | (labels >= num_target_classes)
    if bad.any():
        row = int(np.argmax(bad))
        raise ValueError(
            f"labels must lie in [0, num_target_classes={num_target_classes}), found "
            f"{labels[row]} (row {first_row + row})"
        )


def _checked(index: int, batch):
    """``(inputs, labels, mask)`` of one user batch, or ValueError naming the problem."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise ValueError(
            f"batch {index} must be a tuple (images, labels) or (images, labels, mask), "
            f"got {type(batch).__name__}"
        )
    inputs = batch[0]
    if not isinstance(inputs, (tuple, np.ndarray, jax.Array)):
        inputs = np.asarray(inputs)
    labels = np.asarray(batch[1])
    rows = {x.shape[:1] for x in jax.tree.leaves(inputs)}
    if len(rows) != 1 or labels.shape != rows.pop():
        raise ValueError(
            f"batch {index}: labels must have shape [n] matching the inputs' rows, got "
            f"{labels.shape} for inputs {jax.tree.map(np.shape, inputs)}"
        )
    if labels.shape[0] == 0:
        raise ValueError(f"batch {index} is empty")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"batch {index}: labels must be integers, got dtype {labels.dtype}")
    mask = np.ones(labels.shape, bool) if len(batch) == 2 else np.asarray(batch[2])
    if mask.shape != labels.shape or mask.dtype != np.bool_:
        raise ValueError(
            f"batch {index}: mask must be bool with shape {labels.shape}, got "
            f"{mask.dtype} {mask.shape}"
        )
    return inputs, labels, mask


def fixed_size(
    batches: Iterable, num_target_classes: int, batch_size: int | None = None
) -> Iterator[Batch]:
    """User batches ``(inputs, labels[, mask])`` as :class:`Batch` es of one size.

    The size is ``batch_size``, or the first batch's size if None. Smaller batches are
    zero-padded and masked, larger ones cut into chunks.

    Raises:
      ValueError: a malformed batch, or a counted label out of range (with its row).
    """
    first_row = 0
    for index, batch in enumerate(batches):
        inputs, labels, mask = _checked(index, batch)
        check_labels(np.where(mask, labels, 0), num_target_classes, first_row)
        labels = labels.astype(np.int32)  # in range, so exact
        batch_size = batch_size or labels.shape[0]
        for start in range(0, labels.shape[0], batch_size):
            chunk = slice(start, start + batch_size)
            yield Batch(
                jax.tree.map(lambda x, c=chunk, b=batch_size: _pad_rows(x[c], b), inputs),
                _pad_rows(labels[chunk], batch_size),
                _pad_rows(mask[chunk], batch_size),
                first_row + start,
            )
        first_row += labels.shape[0]


def reiterable(batches, *, passes: int) -> Callable[[], Iterator]:
    """A zero-argument function returning a fresh iterator over ``batches``.

    Raises:
      ValueError: ``batches`` is a one-shot iterator but ``passes`` is 2, or it is
        neither iterable nor a zero-argument callable.
    """
    if isinstance(batches, Iterable):
        if passes > 1 and iter(batches) is batches:
            raise ValueError(
                "keep_predictions=False reads the batches twice, but `batches` is a one-shot "
                "iterator; pass a sequence, a re-iterable dataset, or a zero-argument "
                "callable returning a fresh iterator (or use keep_predictions=True)"
            )
        return lambda: iter(batches)
    if callable(batches):
        return lambda: iter(batches())
    raise ValueError(
        "batches must be an iterable of (images, labels[, mask]) or a zero-argument "
        f"callable returning one, got {type(batches).__name__}"
    )


class NpyRows:
    """Row ranges of a ``.npy`` file, read through a memory map of just those rows.

    A map of the whole file kept open for a pass keeps every page it touched resident
    (RSS grew to 195 MB over a 200 MB file); mapping only a batch's rows, and dropping
    the map once they are copied out, keeps memory bounded by the batch. Slicing
    (``rows[start:stop]``) returns an in-memory NumPy copy.
    """

    def __init__(self, path: str):
        header = np.load(path, mmap_mode="r", allow_pickle=False)  # maps, reads nothing
        self.path, self.dtype, self.shape = path, header.dtype, header.shape
        self.offset = header.offset
        self.row_bytes = header.dtype.itemsize * int(np.prod(header.shape[1:]))
        self.rows_contiguous = header.flags.c_contiguous  # False for Fortran-order files

    def read(self, start: int, stop: int) -> np.ndarray:
        try:
            if not self.rows_contiguous:  # rows are strided: map the file, copy the slice
                mapped = np.load(self.path, mmap_mode="r")
                if mapped.shape != self.shape:  # a short slice would pass silently
                    raise ValueError(f"its shape is now {mapped.shape}, not {self.shape}")
                return np.array(mapped[start:stop])
            mapped = np.memmap(
                self.path,
                self.dtype,
                mode="r",
                offset=self.offset + start * self.row_bytes,
                shape=(stop - start, *self.shape[1:]),
            )
            return np.array(mapped)
        except (OSError, ValueError) as e:  # the file changed under us
            raise ValueError(f"cannot read rows {start}:{stop} of {self.path}: {e}") from None

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(self.shape[0])
        return self.read(start, stop)


def array_batches(
    arrays: Mapping[str, Any],
    labels: Any,
    num_target_classes: int,
    batch_size: int,
    *,
    mask: Any | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> Iterator[Batch]:
    """Batches of row-sliceable arrays (NumPy, JAX, memory maps, :class:`NpyRows`).

    ``inputs`` of each batch is ``(predictions, features)``, each None when absent from
    ``arrays``. Only one batch of rows is read at a time.
    """
    n = labels.shape[0]
    starts = range(0, n, batch_size)
    for start in progress(starts) if progress else starts:
        stop = min(start + batch_size, n)
        batch_labels = np.asarray(labels[start:stop])
        batch_mask = np.ones(stop - start, bool) if mask is None else np.asarray(mask[start:stop])
        check_labels(np.where(batch_mask, batch_labels, 0), num_target_classes, start)
        inputs = tuple(
            None if arrays.get(name) is None else _pad_rows(arrays[name][start:stop], batch_size)
            for name in ("predictions", "features")
        )
        yield Batch(
            inputs,
            _pad_rows(batch_labels.astype(np.int32), batch_size),
            _pad_rows(batch_mask, batch_size),
            start,
        )
