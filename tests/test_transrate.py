"""TransRate's two paths: per-class blocks fixed on the host (eager labels) and the
sorted chunk loop (traced labels, streaming), against float64 references."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_features as ref

import leep_jax

transrate_module = importlib.import_module("leep_jax.scores.transrate")
C = 5


def _imbalanced(seed, n=160, dims=24):
    """Class 0 holds ~60 % of the rows (more rows than features: Z^T Z side), class 3 one
    row, class 4 none; the others fewer rows than features (Z Z^T side)."""
    rng = np.random.default_rng(seed)
    labels = np.where(rng.random(n) < 0.6, 0, rng.integers(1, 3, n)).astype(np.int32)
    labels[rng.integers(n)] = 3
    centres = rng.normal(size=(C, dims))
    mixing = rng.normal(size=(dims, dims)) / np.sqrt(dims)
    features = rng.normal(size=(n, dims)) @ mixing + 0.8 * centres[labels] + 3.0
    return features, labels


def _traced(features, labels, mask):
    return jax.jit(lambda f, y, m: leep_jax.transrate(f, y, C, mask=m))(features, labels, mask)


@pytest.mark.parametrize("seed", [0, 1])
def test_both_paths_match_float64_reference_with_mask(seed):
    features, labels = _imbalanced(seed)
    mask = np.random.default_rng(seed + 10).random(len(labels)) < 0.85
    mask[labels == 3] = True  # keep the one-example class
    expected = ref.transrate(features[mask], labels[mask], C)
    blocks = transrate_module.class_blocks(labels, mask, C)
    sizes = sorted(int(s) for b in blocks for s in np.asarray(b.counts) if s > 0)
    assert sizes[0] == 1 and sizes[-1] > features.shape[1]  # both sides are exercised
    with jax.enable_x64(True):
        eager64 = float(leep_jax.transrate(features, labels, C, mask=mask))
        traced64 = float(_traced(features, labels, mask))
    np.testing.assert_allclose(eager64, expected, rtol=1e-9)
    np.testing.assert_allclose(traced64, expected, rtol=1e-9)
    f32 = features.astype(np.float32)
    eager32 = float(leep_jax.transrate(f32, labels, C, mask=mask))
    np.testing.assert_allclose(eager32, expected, rtol=5e-5)
    # float32: both within the tolerance of test_feature_scores.FLOAT32_RTOL; the traced
    # path rounds differently (D x D Grams rebuilt from shifted sums).
    np.testing.assert_allclose(float(_traced(f32, labels, mask)), expected, rtol=5e-5)


def test_vmap_over_traced_labels_matches_eager_loop():
    features, labels = _imbalanced(2)
    f32 = features.astype(np.float32)
    rng = np.random.default_rng(3)
    stacked = np.stack([labels, rng.permutation(labels), (labels + 1) % C])
    loop = [float(leep_jax.transrate(f32, y, C)) for y in stacked]
    vmapped = jax.vmap(lambda y: leep_jax.transrate(f32, y, C))(stacked)
    np.testing.assert_allclose(np.asarray(vmapped), loop, rtol=2e-5)


@pytest.mark.parametrize("n, num_classes", [(7, 3), (100, 2), (300, 9), (64, 40)])
def test_class_grams_equal_masked_sums(n, num_classes):
    """Every chunk boundary case: classes larger and smaller than a chunk, absent classes,
    invalid rows (NaN-free zeros here: the caller zeroes them) and out-of-range labels."""
    rng = np.random.default_rng(n)
    labels = rng.integers(-1, num_classes + 1, n).astype(np.int32)
    valid = (labels >= 0) & (labels < num_classes) & (rng.random(n) < 0.9)
    rows = np.where(valid[:, None], rng.normal(size=(n, 6)), 0)
    expected = np.stack(
        [rows[valid & (labels == c)].T @ rows[valid & (labels == c)] for c in range(num_classes)]
    )
    with jax.enable_x64(True):
        got = transrate_module.class_grams(
            jnp.asarray(rows),
            jnp.asarray(labels),
            jnp.asarray(valid),
            num_target_classes=num_classes,
        )
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-12, atol=1e-12)


def test_class_blocks_hold_each_valid_row_once():
    _, labels = _imbalanced(4, n=90)
    mask = np.arange(90) % 7 != 0
    blocks = transrate_module.class_blocks(labels, mask, C)
    seen = []
    for block in blocks:
        rows, counts = np.asarray(block.rows), np.asarray(block.counts)
        assert rows.shape[1] == leep_jax.scores.ops.size_bucket(int(counts.max()))
        for members, count in zip(rows, counts, strict=True):
            assert np.all(members[count:] == len(labels))  # padding reads as zero rows
            if count:
                assert len(set(labels[members[:count]])) == 1
            seen.extend(members[:count])
    assert sorted(seen) == list(np.flatnonzero(mask))


def test_same_bucketed_counts_compile_once():
    features, labels = _imbalanced(5, n=130, dims=9)  # a shape no other test uses
    f32 = features.astype(np.float32)
    kernel = transrate_module._transrate
    leep_jax.transrate(f32, labels, C)
    before = kernel._cache_size()
    moved = labels.copy()
    moved[np.flatnonzero(labels == 0)[:2]] = 1  # class sizes change by 2, buckets do not
    assert [b.rows.shape for b in transrate_module.class_blocks(moved, None, C)] == [
        b.rows.shape for b in transrate_module.class_blocks(labels, None, C)
    ]
    leep_jax.transrate(f32 + 1, moved, C)
    assert kernel._cache_size() == before


def test_five_classes_of_one_size_count_once_beside_their_padding_class():
    """Five classes of 20 rows share one block, padded to six classes (ops.size_bucket):
    the padding class has count 0 and must not count in the mean class rate."""
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(C), 20).astype(np.int32)
    features = rng.normal(size=(100, 8)) + 0.5 * rng.normal(size=(C, 8))[labels]
    (block,) = transrate_module.class_blocks(labels, None, C)
    np.testing.assert_array_equal(np.asarray(block.counts), [20] * C + [0])
    expected = ref.transrate(features, labels, C)
    with jax.enable_x64(True):
        np.testing.assert_allclose(
            float(leep_jax.transrate(features, labels, C)), expected, rtol=1e-9
        )
    got32 = float(leep_jax.transrate(features.astype(np.float32), labels, C))
    np.testing.assert_allclose(got32, expected, rtol=5e-5)


@pytest.mark.parametrize("path", ["eager", "traced"])
def test_float32_features_score_in_float32_with_x64_enabled(path):
    """x64 must not widen a float32 computation: the same float32 value, bit for bit."""
    features, labels = _imbalanced(6)
    f32 = features.astype(np.float32)
    mask = np.ones(len(labels), bool)

    def eager(features, labels, mask):
        return leep_jax.transrate(features, labels, C, mask=mask)

    score = eager if path == "eager" else _traced
    want = score(f32, labels, mask)
    with jax.enable_x64(True):
        got = score(f32, labels, mask)
    assert got.dtype == want.dtype == jnp.float32
    assert float(got) == float(want)


def test_the_class_block_path_asks_for_highest_precision():
    """test_feature_scores checks the matmuls of traced labels (the chunk loop); under
    make_jaxpr labels are tracers, so the blocks path is traced here with its blocks."""
    from test_feature_scores import _dot_precisions

    features, labels = _imbalanced(7)
    blocks = transrate_module.class_blocks(labels, None, C)
    assert {b.rows.shape[1] <= features.shape[1] for b in blocks} == {True, False}
    program = jax.make_jaxpr(lambda f, b: transrate_module._transrate(f, labels, None, b, C, 1e-4))(
        features.astype(np.float32), blocks
    )
    precisions = _dot_precisions(program.jaxpr)
    assert len(precisions) >= 1 + len(blocks)  # the total Gram and one per block
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)
    assert all(p == highest for p in precisions), precisions


@pytest.mark.parametrize("with_mask", [False, True])
def test_out_of_range_labels_count_as_masked_on_both_paths_when_unchecked(with_mask):
    """validate_inputs=False skips the label check; as under jit, a row labelled -1, C or
    above then counts as masked, on the eager (class blocks) path too."""
    features, labels = _imbalanced(8)
    f32 = features.astype(np.float32)
    mask = np.random.default_rng(8).random(len(labels)) < 0.9 if with_mask else None
    bad = labels.copy()
    bad[[3, 10, 50]] = [-1, C, C + 4]
    kept = np.ones(len(labels), bool) if mask is None else mask.copy()
    kept[[3, 10, 50]] = False
    want = float(leep_jax.transrate(f32, labels, C, mask=kept))
    eager = leep_jax.transrate(f32, bad, C, mask=mask, validate_inputs=False)
    traced = jax.jit(lambda f, y: leep_jax.transrate(f, y, C, mask=mask))(f32, bad)
    np.testing.assert_allclose([float(eager), float(traced)], want, rtol=2e-5)


@pytest.mark.parametrize(
    ("num_rows", "num_classes", "chunk"),
    [(1000, 10, 64), (100, 2, 32), (10**6, 2, 256), (50, 40, 8), (7, 3, 8), (3, 1, 4), (1, 1, 1)],
)
def test_chunk_rows_is_a_power_of_two_near_the_mean_class_size(num_rows, num_classes, chunk):
    """The largest power of two <= the mean class size, within [8, 256], and never above
    the power of two that covers all rows (the cost bound of class_grams' docstring)."""
    assert transrate_module._chunk_rows(num_rows, num_classes) == chunk
