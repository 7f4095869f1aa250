"""Exactness, invariance and edge cases of the in-memory scores."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref

import leep_jax

RTOL = 1e-5  # accumulated float32 sums against float64


def make_problem(seed, n, z, y, *, logits_scale=3.0, with_absent=False):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, z)) * logits_scale).astype(np.float32)
    labels = rng.integers(0, y, n).astype(np.int32)
    if with_absent and y > 1:
        labels[labels == y - 1] = 0  # class y-1 in range but absent
    probs = ref.softmax(logits).astype(np.float32)
    return logits, probs, labels


# (1000, 700, 30): the CPU row loop runs 3 blocks of 256 rows and a tail of 232.
SIZES = [
    (1, 1, 1), (7, 1, 3), (50, 4, 1), (200, 10, 5), (1000, 50, 20), (300, 3, 40), (1000, 700, 30)
]  # fmt: skip


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("n,z,y", SIZES)
def test_leep_matches_float64_reference(seed, n, z, y):
    logits, probs, labels = make_problem(seed, n, z, y)
    expected = ref.leep(probs, labels, y)
    np.testing.assert_allclose(leep_jax.leep(probs, labels, y), expected, rtol=RTOL, atol=1e-6)
    expected_logits = ref.leep_from_logits(logits, labels, y)
    got = leep_jax.leep(logits, labels, y, from_logits=True)
    np.testing.assert_allclose(got, expected_logits, rtol=RTOL, atol=1e-6)


@pytest.mark.parametrize("n,z,y", SIZES)
def test_joint_nce_hscore_match_reference(n, z, y):
    logits, probs, labels = make_problem(3, n, z, y)
    np.testing.assert_allclose(
        leep_jax.joint_distribution(probs, labels, y), ref.joint(probs, labels, y), atol=1e-6
    )
    np.testing.assert_allclose(
        leep_jax.joint_distribution(logits, labels, y, from_logits=True),
        ref.joint(ref.softmax(logits), labels, y),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        leep_jax.nce(probs, labels, y), ref.nce(probs, labels, y), rtol=RTOL, atol=1e-6
    )
    np.testing.assert_allclose(
        leep_jax.nce(logits, labels, y, from_logits=True),
        ref.nce(logits, labels, y),
        rtol=RTOL,
        atol=1e-6,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("n,d,y", [(500, 8, 4), (2000, 32, 10), (300, 4, 2)])
def test_h_score_matches_reference(seed, n, d, y):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, y, n).astype(np.int32)
    centers = rng.normal(size=(y, d)) * 2
    features = (centers[labels] + rng.normal(size=(n, d)) + 5.0).astype(np.float32)
    np.testing.assert_allclose(
        leep_jax.h_score(features, labels, y), ref.h_score(features, labels, y), rtol=1e-4
    )


def test_known_values():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 500).astype(np.int32)
    # A constant predictor carries no information: LEEP = -H(Y).
    constant = np.tile(rng.dirichlet(np.ones(6)).astype(np.float32), (500, 1))
    np.testing.assert_allclose(
        leep_jax.leep(constant, labels, 4), -ref.label_entropy(labels), rtol=1e-5
    )
    # A perfect one-hot predictor with Y = Z: LEEP = 0, NCE = 0.
    perfect = np.eye(4, dtype=np.float32)[labels]
    assert abs(float(leep_jax.leep(perfect, labels, 4))) < 1e-6
    assert abs(float(leep_jax.nce(perfect, labels, 4))) < 1e-6


@pytest.mark.parametrize("seed", range(5))
def test_leep_upper_bound_and_paper_lower_bound(seed):
    _, probs, labels = make_problem(seed, 400, 12, 6, logits_scale=1.0 + seed)
    score = float(leep_jax.leep(probs, labels, 6))
    assert score <= 0
    # Nguyen et al. 2020, Theorem 1: LEEP >= NCE + (1/n) sum_i log theta_{i, z_i}.
    bound = float(leep_jax.nce(probs, labels, 6)) + np.mean(np.log(probs.max(axis=1)))
    assert score >= bound - 1e-5


@pytest.mark.parametrize("seed", range(3))
def test_invariances(seed):
    logits, probs, labels = make_problem(seed, 300, 9, 5)
    rng = np.random.default_rng(100 + seed)
    base = [float(f(probs, labels, 5)) for f in (leep_jax.leep, leep_jax.nce)]
    # Permuting examples.
    order = rng.permutation(300)
    got = [float(f(probs[order], labels[order], 5)) for f in (leep_jax.leep, leep_jax.nce)]
    np.testing.assert_allclose(got, base, rtol=1e-5)
    # Permuting source classes.
    cols = rng.permutation(9)
    got = [float(f(probs[:, cols], labels, 5)) for f in (leep_jax.leep, leep_jax.nce)]
    np.testing.assert_allclose(got, base, rtol=1e-5)
    # Relabelling target classes.
    relabel = rng.permutation(5).astype(np.int32)[labels]
    got = [float(f(probs, relabel, 5)) for f in (leep_jax.leep, leep_jax.nce)]
    np.testing.assert_allclose(got, base, rtol=1e-5)
    features = rng.normal(size=(300, 6)).astype(np.float32) + labels[:, None]
    h = float(leep_jax.h_score(features, labels, 5))
    np.testing.assert_allclose(
        float(leep_jax.h_score(features[order], labels[order], 5)), h, rtol=1e-4
    )
    np.testing.assert_allclose(float(leep_jax.h_score(features, relabel, 5)), h, rtol=1e-4)


def test_h_score_invariant_to_invertible_linear_maps():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 6, 3000).astype(np.int32)
    features = rng.normal(size=(3000, 10)) + rng.normal(size=(6, 10))[labels]
    transform = rng.normal(size=(10, 10)) + 3 * np.eye(10)
    base = float(leep_jax.h_score(features.astype(np.float32), labels, 6))
    mapped = float(leep_jax.h_score((features @ transform).astype(np.float32), labels, 6))
    np.testing.assert_allclose(mapped, base, rtol=1e-3)
    # The elementwise-product bug tr(pinv(A) * B) is not invariant; make sure we differ.
    assert base > 0


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3])
def test_h_score_of_rank_deficient_features_at_any_scale(scale):
    # Features [n, 7] of rank 4: the pseudo-inverse drops the three null directions,
    # whose float32 eigenvalues are rounding noise, by a cutoff relative to the largest
    # variance (an absolute one fails at some scale), and adds nothing for them. The
    # score is that of the rank-4 features (invariance to injective linear maps).
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 5, 400)
    base = rng.normal(size=(400, 4)) + 0.5 * labels[:, None]
    features = (base @ rng.normal(size=(4, 7)) * scale).astype(np.float32)
    np.testing.assert_allclose(
        leep_jax.h_score(features, labels, 5), ref.h_score(base, labels, 5), rtol=1e-4
    )


def test_h_score_of_zero_features_is_zero():
    # Every variance is 0, not above the cutoff (which is 0 too): no 1/0, a score of 0.
    labels = np.arange(40) % 5
    assert float(leep_jax.h_score(np.zeros((40, 3), np.float32), labels, 5)) == 0.0


@pytest.mark.parametrize("n", [3, 10, 40])
def test_h_score_of_constant_features_is_zero(n):
    # Under jit, XLA rounded `f - mean` differently in the sums' fusions: a rank-1 residue
    # of ~(eps |mean|)^2 that the relative cutoff kept, and H-score 1 (2.5 at n=40), not 0.
    features = np.float32([0.3, 0.57, 0.41]) * np.ones((n, 1), np.float32)
    labels = np.arange(n) % 3
    assert ref.h_score(features, labels, 3) == 0.0
    assert float(leep_jax.h_score(features, labels, 3)) == 0.0
    assert float(leep_jax.h_score(jnp.asarray(features), jnp.asarray(labels), 3)) == 0.0
    for shift in (None, features[0], features[0] + 1e-6):
        acc = leep_jax.streaming.h_score(3, 3, shift=shift)
        state = acc.init()
        for rows in np.array_split(np.arange(n), 2):
            state = acc.update(state, features[rows], labels[rows])
        assert float(acc.compute(state)) == 0.0, shift


def test_h_score_noise_floor_is_four_ulps_of_the_shift():
    # Two classes at 1 and 1 + 9 ulps: a standard deviation of 4.5 ulps of the mean, just
    # above the floor (4 eps |shift|), is kept: all of it lies between the classes.
    labels = np.arange(40) % 2
    apart = np.float32(1) + 9 * np.finfo(np.float32).eps  # exact: ulp(1) = eps
    features = np.where(labels == 0, np.float32(1), apart)[:, None].astype(np.float32)
    assert ref.h_score(features, labels, 2) == pytest.approx(1.0)
    assert float(leep_jax.h_score(features, labels, 2)) == pytest.approx(1.0, rel=1e-6)


def test_mask_drops_rows_exactly():
    logits, probs, labels = make_problem(5, 256, 7, 4)
    keep = np.random.default_rng(0).random(256) < 0.6
    padded_probs = np.where(keep[:, None], probs, 0.0).astype(np.float32)  # zero padding
    for f, kw in [(leep_jax.leep, {}), (leep_jax.nce, {}), (leep_jax.joint_distribution, {})]:
        np.testing.assert_allclose(
            f(padded_probs, labels, 4, mask=jnp.asarray(keep), **kw),
            f(probs[keep], labels[keep], 4, **kw),
            rtol=1e-5,
            atol=1e-7,
        )
    nan_logits = np.where(keep[:, None], logits, np.nan).astype(np.float32)
    np.testing.assert_allclose(
        leep_jax.leep(nan_logits, labels, 4, from_logits=True, mask=keep, validate_inputs=False),
        leep_jax.leep(logits[keep], labels[keep], 4, from_logits=True),
        rtol=1e-5,
    )
    features = np.random.default_rng(1).normal(size=(256, 5)).astype(np.float32)
    np.testing.assert_allclose(
        leep_jax.h_score(features, labels, 4, mask=keep),
        leep_jax.h_score(features[keep], labels[keep], 4),
        rtol=1e-4,
    )


def test_zero_probability_source_class_and_absent_target_class_no_nan():
    _, probs, labels = make_problem(2, 100, 5, 4, with_absent=True)
    probs[:, 2] = 0.0  # a source class with zero total probability
    probs /= probs.sum(1, keepdims=True)
    assert not np.any(labels == 3)
    for f in (leep_jax.leep, leep_jax.nce):
        value = float(f(probs, labels, 4))
        assert np.isfinite(value)
    np.testing.assert_allclose(
        leep_jax.leep(probs, labels, 4), ref.leep(probs, labels, 4), rtol=1e-5
    )
    # Absent classes contribute nothing: the same as scoring with Y = 3.
    np.testing.assert_allclose(
        leep_jax.leep(probs, labels, 4), leep_jax.leep(probs, labels, 3), rtol=1e-6
    )
    features = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    assert np.isfinite(float(leep_jax.h_score(features, labels, 4)))


@pytest.mark.parametrize("scale", [1e2, 1e3, 1e4])
def test_huge_logits_finite_and_agree_with_probabilities(scale):
    logits, _, labels = make_problem(4, 300, 8, 3, logits_scale=scale)
    from_logits = float(leep_jax.leep(logits, labels, 3, from_logits=True))
    probs = np.asarray(jax.nn.softmax(jnp.asarray(logits), axis=-1))
    assert np.isfinite(from_logits)
    np.testing.assert_allclose(
        from_logits, float(leep_jax.leep(probs, labels, 3)), rtol=1e-4, atol=1e-5
    )
    np.testing.assert_allclose(
        from_logits, ref.leep_from_logits(logits, labels, 3), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_logits_sweep_one_keeps_each_rows_normaliser(dtype):
    """Sweep 1 from logits: the joint of softmaxes and, for sweep 2, each row's max and
    log-sum, against float64, over 2 CPU blocks of 256 rows and a tail, with rows far
    from 0 (the shift matters) and masked rows (dropped from the joint, still shifted)."""
    from leep_jax.scores import ops
    from leep_jax.scores.leep import joint_and_normalisers

    rng = np.random.default_rng(7)
    n, z, y = 700, 1000, 6
    logits = rng.normal(scale=4.0, size=(n, z)) + rng.choice([-300.0, 0.0, 500.0], (n, 1))
    logits = jnp.asarray(logits, dtype)
    labels = rng.integers(0, y, n).astype(np.int32)
    mask = rng.random(n) > 0.2
    valid = ops.valid_rows(jnp.asarray(labels), y, jnp.asarray(mask))
    sweep = jax.jit(joint_and_normalisers, static_argnums=3, static_argnames="from_logits")
    joint, (shift, log_total) = sweep(logits, labels, valid, y, from_logits=True)

    wide = np.asarray(logits, np.float64)
    row_max = wide.max(axis=1)
    row_log_total = np.log(np.exp(wide - row_max[:, None]).sum(axis=1))
    softmax = np.exp(wide - row_max[:, None] - row_log_total[:, None])
    expected = np.zeros((y, z))
    np.add.at(expected, labels[mask], softmax[mask])
    np.testing.assert_array_equal(np.asarray(shift, np.float64), row_max)
    np.testing.assert_allclose(log_total, row_log_total, rtol=RTOL, atol=1e-6)
    np.testing.assert_allclose(joint, expected, rtol=RTOL, atol=1e-7)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_low_precision_inputs(dtype):
    logits, probs, labels = make_problem(6, 500, 10, 4)
    low_logits = jnp.asarray(logits, dtype)
    expected = ref.leep_from_logits(np.asarray(low_logits, np.float64), labels, 4)
    got = leep_jax.leep(low_logits, labels, 4, from_logits=True)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, expected, rtol=1e-2)
    low_probs = jnp.asarray(probs, dtype)
    np.testing.assert_allclose(
        leep_jax.leep(low_probs, labels, 4),
        ref.leep(np.asarray(low_probs, np.float64), labels, 4),
        rtol=1e-2,
    )
    features = jnp.asarray(np.random.default_rng(0).normal(size=(500, 4)) + labels[:, None], dtype)
    np.testing.assert_allclose(
        leep_jax.h_score(features, labels, 4),
        ref.h_score(np.asarray(features, np.float64), labels, 4),
        rtol=1e-2,
    )


@pytest.mark.parametrize("from_logits", [False, True])
def test_bfloat16_inputs_are_summed_in_float32(from_logits):
    # 16,384 rows: a joint summed in bfloat16 (8-bit significand) stops growing at a few
    # hundred per cell, so LEEP is exact only if sweep 1 sums in float32.
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, 16384)
    logits = jnp.asarray(rng.normal(size=(16384, 3)) + labels[:, None], jnp.bfloat16)
    if from_logits:
        got, want = (
            leep_jax.leep(logits, labels, 2, from_logits=True),
            ref.leep_from_logits(np.asarray(logits, np.float64), labels, 2),
        )
    else:
        probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(jnp.bfloat16)
        got, want = (
            leep_jax.leep(probs, labels, 2),
            ref.leep(np.asarray(probs, np.float64), labels, 2),
        )
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_vmap_over_models_matches_loop():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400).astype(np.int32)
    stacked = rng.normal(size=(4, 400, 12)).astype(np.float32) * 2
    features = rng.normal(size=(4, 400, 6)).astype(np.float32) + labels[None, :, None]
    for fn, values in [
        (lambda p: leep_jax.leep(p, labels, 5, from_logits=True), stacked),
        (lambda p: leep_jax.nce(p, labels, 5, from_logits=True), stacked),
        (lambda p: leep_jax.joint_distribution(p, labels, 5, from_logits=True), stacked),
        (lambda f: leep_jax.h_score(f, labels, 5), features),
    ]:
        batched = jax.jit(jax.vmap(fn))(values)
        looped = jnp.stack([fn(v) for v in values])
        np.testing.assert_allclose(batched, looped, rtol=1e-5, atol=1e-7)


def test_jit_matches_eager_and_compiles_once():
    logits, probs, labels = make_problem(8, 128, 6, 3)
    traces = []

    @jax.jit
    def score(p, y):
        traces.append(1)
        return leep_jax.leep(p, y, 3)

    eager = leep_jax.leep(probs, labels, 3)
    np.testing.assert_allclose(score(probs, labels), eager, rtol=1e-6)
    _, probs2, labels2 = make_problem(9, 128, 6, 3)
    score(probs2, labels2)
    assert len(traces) == 1
    # The public functions themselves compile once per shape.
    leep_module = sys.modules["leep_jax.scores.leep"]
    before = leep_module._leep._cache_size()
    leep_jax.leep(probs2, labels2, 3)
    leep_jax.leep(probs, labels, 3)
    assert leep_module._leep._cache_size() == before
    leep_jax.leep(probs[:100], labels[:100], 3)
    assert leep_module._leep._cache_size() == before + 1


def test_64_bit_labels_out_of_range_are_refused_not_wrapped():
    probs = np.full((4, 3), 1 / 3, np.float32)
    with pytest.raises(ValueError, match="labels must lie in"):
        leep_jax.leep(probs, np.array([0, 1, 2**40, 0]), 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        leep_jax.nce(probs, np.array([0, 1, 2**32, 0], np.uint64), 3)


def test_score_names_are_checked_with_the_problem_named():
    from leep_jax.scores.names import SCORE_NAMES, check_score_names

    assert check_score_names("nce") == ("nce",)
    assert check_score_names(["leep", "parc"]) == ("leep", "parc")
    for names, problem in [
        (("leep", "bogus", "nope"), "unknown 'bogus'"),
        ((), "empty or repeated"),
        (("nce", "nce"), "empty or repeated"),
    ]:
        with pytest.raises(ValueError) as error:
            check_score_names(names)
        assert str(error.value) == (
            f"metrics must be a non-empty subset of {SCORE_NAMES}, got {names!r} ({problem})"
        )
    with pytest.raises(
        ValueError, match=r"subset of \('leep',\), got \('nce',\) \(unknown 'nce'\)"
    ):
        check_score_names("nce", allowed=("leep",))
