"""TransRate (Huang et al., ICML 2022), as tllib computes it."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from leep_jax.scores import ops
from leep_jax.scores.feature_sums import (
    HIGHEST,
    class_sums,
    gram,
    shifted_rows,
    symmetric,
    valid_mean,
)
from leep_jax.scores.validation import is_concrete, validate_features


class TransRateSums(NamedTuple):
    """Mergeable sufficient statistics of TransRate, over ``x = f - shift``."""

    count: jax.Array  # f32[]
    feature_sum: jax.Array  # f32[D]
    class_count: jax.Array  # f32[C]
    class_sum: jax.Array  # f32[C, D]
    class_outer_sum: jax.Array  # f32[C, D, D]: sum_{i in c} x_i x_i^T


def _chunk_rows(num_rows: int, num_target_classes: int) -> int:
    """Rows per step of :func:`class_grams`: a power of two near the mean class size, in
    ``[8, 256]``, so that the ``C`` partly filled chunks cost at most about ``n`` rows."""
    rows = max(8, min(256, num_rows // num_target_classes))
    return min(1 << (rows.bit_length() - 1), 1 << max(0, num_rows - 1).bit_length())


def class_grams(
    rows: jax.Array, labels: jax.Array, valid: jax.Array, num_target_classes: int
) -> jax.Array:
    """``sum_{i in c} x_i x_i^T`` per class, ``[C, D, D]``, each from its own rows.

    The rows are sorted by class once; class ``c`` then sums ``[T, D]^T [T, D]``
    products over the chunks of ``T`` sorted rows that cover its own rows (a while loop
    with a traced trip count, rows of other classes in its first and last chunk masked
    out): ``(n + C T) D^2`` multiply-adds in all, where a class mask over all rows costs
    ``C n D^2``. Static shapes only, so it runs on traced labels (``jit``, ``vmap``,
    a streaming ``update``).

    Args:
      rows: ``[n, D]`` rows in the accumulation dtype, invalid ones 0.
      labels: ``int[n]``.
      valid: ``bool[n]``: rows that count.
      num_target_classes: static ``C``.
    """
    num_rows, dim = rows.shape
    chunk = _chunk_rows(num_rows, num_target_classes)
    keys = jnp.where(valid, labels, num_target_classes).astype(jnp.int32)
    order = jnp.argsort(keys, stable=True)
    # T padding rows of key C after the sorted rows: no chunk ever reads past the end.
    sorted_keys = jnp.concatenate([keys[order], jnp.full((chunk,), num_target_classes, jnp.int32)])
    sorted_rows = jnp.concatenate([rows[order], jnp.zeros((chunk, dim), rows.dtype)])
    classes = jnp.arange(num_target_classes, dtype=jnp.int32)
    starts = jnp.searchsorted(sorted_keys, classes, side="left")
    stops = jnp.searchsorted(sorted_keys, classes, side="right")

    def one_class(args):
        label, start, stop = args

        def step(carry):
            position, total = carry
            block = jax.lax.dynamic_slice_in_dim(sorted_rows, position, chunk)
            own = jax.lax.dynamic_slice_in_dim(sorted_keys, position, chunk) == label
            return position + chunk, total + gram(jnp.where(own[:, None], block, 0), block)

        _, total = jax.lax.while_loop(
            lambda carry: carry[0] < stop, step, (start, jnp.zeros((dim, dim), rows.dtype))
        )
        return total

    return jax.lax.map(one_class, (classes, starts, stops))


def transrate_sums(
    features: jax.Array,
    labels: jax.Array,
    num_target_classes: int,
    *,
    mask: jax.Array | None = None,
    shift: jax.Array | None = None,
) -> TransRateSums:
    """Sums of ``x = f - shift``, per class; sums over any split of the rows add up.

    The per-class Gram matrices come from :func:`class_grams`: ``(n + C T) D^2``
    multiply-adds (``T`` about ``n / C``), not ``C n D^2``.
    """
    valid = ops.valid_rows(labels, num_target_classes, mask)
    rows = shifted_rows(features, valid, shift)
    sums, counts = class_sums(rows, labels, valid, num_target_classes)
    return TransRateSums(
        count=jnp.sum(valid, dtype=rows.dtype),
        feature_sum=jnp.sum(rows, axis=0),
        class_count=counts,
        class_sum=sums,
        class_outer_sum=class_grams(rows, labels, valid, num_target_classes),
    )


def coding_rates(grams: jax.Array, counts: jax.Array, eps: float) -> jax.Array:
    """``R = 1/2 logdet(I + G / (n eps))`` for PSD Grams ``G`` of ``n`` rows each.

    ``grams`` is ``[K, m, m]`` (``Z^T Z`` or ``Z Z^T``: the same nonzero eigenvalues)
    and ``counts`` ``[K]``; 0 where ``n = 0``. By LU log-determinants: ``eigvalsh``
    takes ~1 s per ``D = 512`` matrix on a 2-core CPU, and LAPACK's Cholesky runs a
    multithreaded path above ~200 rows that stalls on a loaded machine (96 matrices of
    256 rows: 1.3-7.5 s, against 0.09 s for their LU; 2026-11-30, load average 8).
    ``I + G / (n eps)`` has every eigenvalue ``>= 1``, so a sign ``<= 0`` or a
    non-finite value means float32 rounding made a matrix indefinite (a Gram with a
    huge top eigenvalue); then all rates come from the eigenvalues of ``G`` clipped at
    0. (Two rounding-made negative eigenvalues would keep the sign: that takes errors
    above ``n eps`` in two directions, where float32 has no digits left; use float64.)
    """
    dim = grams.shape[-1]
    scales = 1 / (jnp.maximum(counts, 1) * eps)
    grams = symmetric(grams)
    signs, log_dets = ops.per_matrix(
        jnp.linalg.slogdet, jnp.eye(dim, dtype=grams.dtype)[None] + grams * scales[:, None, None]
    )

    def by_eigenvalues(_):
        eigenvalues = jnp.maximum(ops.per_matrix(jnp.linalg.eigvalsh, grams), 0)
        return jnp.sum(jnp.log1p(eigenvalues * scales[:, None]), axis=-1) / 2

    rates = jax.lax.cond(
        jnp.all((signs > 0) & jnp.isfinite(log_dets)), lambda _: log_dets / 2, by_eigenvalues, None
    )
    return jnp.where(counts > 0, rates, 0)


def transrate_from_sums(sums: TransRateSums, eps: float) -> jax.Array:
    """``R(F) - mean_c R(F_c)`` on features centred by the global mean.

    The per-class Gram of the globally centred rows is rebuilt as the within-class
    scatter ``sum x x^T - s_c s_c^T / n_c`` plus ``n_c (m_c - m)(m_c - m)^T``, which
    stays accurate in float32 whatever the shift.
    """
    present = sums.class_count > 0
    safe_counts = jnp.where(present, sums.class_count, 1)
    class_means = sums.class_sum / safe_counts[:, None]
    offsets = class_means - (sums.feature_sum / sums.count)[None, :]
    offsets = jnp.where(present[:, None], offsets, 0)
    # HIGHEST for these outer products too: a default-precision einsum may run in bfloat16
    # passes on TPUs (TF32 on GPUs), and the scatter is a difference of large terms.
    outer = functools.partial(jnp.einsum, "c,cd,ce->cde", precision=HIGHEST)
    within = (
        sums.class_outer_sum - outer(safe_counts, class_means, class_means) * present[:, None, None]
    )
    class_grams = within + outer(sums.class_count, offsets, offsets)
    grams = jnp.concatenate([jnp.sum(class_grams, axis=0)[None], class_grams])
    rates = coding_rates(grams, jnp.concatenate([sums.count[None], sums.class_count]), eps)
    total_rate, class_rates = rates[0], rates[1:]
    mean_class_rate = jnp.sum(class_rates) / jnp.sum(present, dtype=class_rates.dtype)
    return total_rate - mean_class_rate


class ClassBlocks(NamedTuple):
    """Row indices of ``K`` classes padded to ``P`` rows each, made on the host.

    Padding entries hold ``n`` (out of range: they read as zero rows); padding classes
    have count 0 and rate 0.
    """

    rows: jax.Array  # i32[K, P]
    counts: jax.Array  # i32[K]


def class_blocks(
    labels: np.ndarray, mask: np.ndarray | None, num_target_classes: int
) -> tuple[ClassBlocks, ...]:
    """The rows of every present class, grouped by :func:`ops.size_bucket` of its size.

    Host code (NumPy) for the eager path of :func:`transrate`: class sizes are data, so
    the static shapes ``[K, P]`` are fixed here. ``K`` is bucketed too: padding classes
    cost little and the same label counts up to a few percent give the same shapes.
    """
    labels = np.asarray(labels)
    valid = (labels >= 0) & (labels < num_target_classes)
    if mask is not None:
        valid &= np.asarray(mask, bool)
    keys = np.where(valid, labels, num_target_classes).astype(np.int64)
    order = np.argsort(keys, kind="stable").astype(np.int32)
    counts = np.bincount(keys, minlength=num_target_classes + 1)[:num_target_classes]
    starts = np.cumsum(counts) - counts
    by_size: dict[int, list[int]] = {}
    for label in np.flatnonzero(counts):
        by_size.setdefault(ops.size_bucket(int(counts[label])), []).append(int(label))
    blocks = []
    for size, members in sorted(by_size.items()):
        rows = np.full((ops.size_bucket(len(members)), size), len(labels), np.int32)
        sizes = np.zeros(rows.shape[0], np.int32)
        for j, label in enumerate(members):
            rows[j, : counts[label]] = order[starts[label] : starts[label] + counts[label]]
            sizes[j] = counts[label]
        blocks.append(ClassBlocks(jnp.asarray(rows), jnp.asarray(sizes)))
    return tuple(blocks)


def _smaller_gram(block: jax.Array) -> jax.Array:
    """``Z Z^T`` (``[K, P, P]``) if ``P <= D``, else ``Z^T Z`` (``[K, D, D]``), of
    ``[K, P, D]`` blocks: both have the same nonzero eigenvalues, so the same
    ``logdet(I + a G)``."""
    size, dim = block.shape[-2:]
    spec = "kpd,kqd->kpq" if size <= dim else "kpd,kpe->kde"
    return jnp.einsum(spec, block, block, precision=HIGHEST)


def _class_rates(rows: jax.Array, blocks: tuple[ClassBlocks, ...], eps: float):
    """Sum of the coding rates of the classes in ``blocks`` and how many there are."""
    total, present = jnp.zeros((), rows.dtype), jnp.zeros((), rows.dtype)
    out_sharding = ops.replicated_out_sharding(rows)
    for block in blocks:
        members = rows.at[block.rows].get(mode="fill", fill_value=0, out_sharding=out_sharding)
        counts = block.counts.astype(rows.dtype)
        total = total + jnp.sum(coding_rates(_smaller_gram(members), counts, eps))
        present = present + jnp.sum(counts > 0, dtype=rows.dtype)
    return total, present


@functools.partial(jax.jit, static_argnames=("num_target_classes", "eps"))
def _transrate(features, labels, mask, blocks, num_target_classes, eps):
    valid = ops.valid_rows(labels, num_target_classes, mask)
    shift = valid_mean(features, valid)
    if blocks is None:  # traced labels: per-class D x D Grams
        sums = transrate_sums(features, labels, num_target_classes, mask=mask, shift=shift)
        return transrate_from_sums(sums, eps)
    rows = shifted_rows(features, valid, shift)
    count = jnp.sum(valid, dtype=rows.dtype)
    total_rate = coding_rates(gram(rows)[None], count[None], eps)[0]
    class_rates, num_present = _class_rates(rows, blocks, eps)
    return total_rate - class_rates / num_present


def transrate(
    features: ArrayLike,
    labels: ArrayLike,
    num_target_classes: int,
    *,
    eps: float = 1e-4,
    mask: ArrayLike | None = None,
    validate_inputs: bool = True,
) -> jax.Array:
    """TransRate: coding rate of the features minus the mean per-class coding rate.

    ``TrR = R(F, eps) - (1/C) sum_c R(F_c, eps)`` with ``R(Z, eps) = 1/2 logdet(I +
    Z^T Z / (n_Z eps))``, ``n_Z`` the number of rows of ``Z``, on features centred once
    by their global mean (``F_c`` are the rows of class ``c`` of the centred ``F``, not
    re-centred), exactly as tllib (``tllib.ranking.transrate``) computes it; the paper
    (Huang et al., ICML 2022) writes ``R`` with ``d / (n eps^2)`` and weights classes
    by ``n_c / n``. Not scale invariant: ``eps`` is an absolute distortion. Classes in
    range but absent from the data are left out of the mean (tllib returns NaN there).

    Eager calls read the labels (and ``mask``) on the host, group each class's rows into
    blocks padded to :func:`ops.size_bucket` sizes (:func:`class_blocks`), and take each
    class's rate on the smaller side, ``logdet(I_D + a Z_c^T Z_c) = logdet(I_{n_c} + a
    Z_c Z_c^T)``: about ``n D^2`` (``F^T F``) plus ``sum_c n_c^2 D`` multiply-adds and
    one ``D x D`` log-determinant when classes have fewer rows than features (one
    compile per set of block shapes). Traced labels (inside ``jit`` or ``vmap``) take
    the path of the one-pass accumulator (:func:`leep_jax.streaming.transrate`):
    ``C`` per-class ``D x D`` Grams from rows sorted by class (:func:`class_grams`,
    ``(n + C T) D^2``) and ``C + 1`` log-determinants of size ``D``: the same value,
    slower.

    Precision: the log-determinants see directions of the features with variance down to
    about ``eps``, and float32 Gram matrices resolve variances only down to ~1e-7 of the
    largest; with (nearly) collinear features float32 can be off by far more than its
    usual 1e-5 relative (we measured 0.7 relative for two features equal up to noise of
    1e-3 times their scale, 100x the others). Use float64 (``jax_enable_x64``) there.

    Args:
      features: ``[n, feature_dim]`` penultimate features.
      labels: ``int[n]`` target labels in ``[0, num_target_classes)``.
      num_target_classes: ``C``, a static Python int.
      eps: the distortion ``eps > 0`` (static; tllib's default 1e-4).
      mask: optional ``bool[n]``; False rows are dropped as if absent.
      validate_inputs: value checks on eager calls, as in :func:`leep_jax.leep`.

    Returns:
      float32 scalar.

    Raises:
      ValueError: on invalid inputs, as :func:`leep_jax.leep`, or ``eps <= 0``.

    References:
      Huang, Huang, Liu, Tong. Frustratingly Easy Transferability Estimation. ICML 2022.

    Examples:
      >>> import jax.numpy as jnp, leep_jax
      >>> features = jnp.array([[1.0, 0.2], [0.8, 0.0], [0.0, 1.0], [0.2, 0.8]])
      >>> labels = jnp.array([0, 0, 1, 1])
      >>> round(float(leep_jax.transrate(features, labels, 2, eps=0.1)), 4)
      0.0022
    """
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    arrays = validate_features(features, labels, num_target_classes, mask, check=validate_inputs)
    features, labels, mask, num_target_classes = arrays
    blocks = None
    if is_concrete(labels, mask):
        blocks = class_blocks(labels, mask, num_target_classes)
    return _transrate(features, labels, mask, blocks, num_target_classes, float(eps))
