"""Tests that kill the mutants the rest of the suite let survive (scripts/mutation.sh).

Each test names the mistake it catches; benchmarks/results/mutation/report.md lists the
mutation runs and the survivors shown to be equivalent.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference_features

import leep_jax
from leep_jax import streaming

Y, Z, D = 3, 4, 5


def _accumulators():
    return {
        "joint": streaming.joint(Y, Z),
        "nce": streaming.nce(Y, Z),
        "h_score": streaming.h_score(Y, D),
    }


@pytest.mark.parametrize("name", ["joint", "nce", "h_score"])
def test_accumulators_refuse_batches_of_the_wrong_shape(name):
    acc = _accumulators()[name]
    width = D if name == "h_score" else Z
    what = "features" if name == "h_score" else "predictions"
    labels = np.zeros(6, np.int32)
    good = np.full((6, width), 1.0 / width, np.float32)
    acc.update(acc.init(), good, labels)  # the right shapes pass
    for values in (good[:, :-1], good[:, None, :], good[0]):
        with pytest.raises(ValueError, match=rf"{what} batch must have shape \[n, {width}\]"):
            acc.update(acc.init(), values, labels)
    with pytest.raises(ValueError, match=r"labels batch must have shape \(6,\), got \(5,\)"):
        acc.update(acc.init(), good, labels[:5])


def test_log_eep_refuses_a_conditional_of_the_wrong_shape():
    eep = streaming.log_eep(Y, Z)
    probs, labels = np.full((6, Z), 0.25, np.float32), np.zeros(6, np.int32)
    eep.update(eep.init(), probs, labels, jnp.full((Y, Z), 1.0 / Y))
    for shape in [(Y, Z + 1), (Y + 1, Z), (Z, Y)]:
        with pytest.raises(ValueError, match=rf"conditional must have shape \({Y}, {Z}\)"):
            eep.update(eep.init(), probs, labels, jnp.zeros(shape))
    with pytest.raises(ValueError, match=r"predictions batch must have shape \[n, 4\]"):
        eep.update(eep.init(), probs[:, :3], labels, jnp.zeros((Y, Z)))


def _features(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, Y, n).astype(np.int32)
    features = (rng.normal(size=(n, D)) + labels[:, None] + 30).astype(np.float32)
    return features, labels


def _sums_about(features, labels, shift):
    """float64 H-score sums of ``features - shift``: count, sum, outer, class sums, counts."""
    g = features.astype(np.float64) - np.asarray(shift, np.float64)
    onehot = np.eye(Y)[labels]
    return len(g), g.sum(0), g.T @ g, onehot.T @ g, onehot.sum(0)


def _assert_sums(state, features, labels):
    for got, want in zip(state[:-1], _sums_about(features, labels, state.shift), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-3)


def test_h_score_shift_is_the_mean_of_the_first_batch_with_counted_rows():
    features, labels = _features(12, 0)
    acc = streaming.h_score(Y, D)
    nothing = acc.update(acc.init(), features, labels, np.zeros(12, bool))
    for got, want in zip(nothing, acc.init(), strict=True):
        np.testing.assert_array_equal(got, want)  # no counted rows: no shift, no sums
    mask = np.ones(12, bool)
    mask[[1, 4, 7]] = False
    first = acc.update(nothing, features, labels, mask)
    np.testing.assert_allclose(first.shift, features[mask].astype(np.float64).mean(0), rtol=1e-6)
    _assert_sums(first, features[mask], labels[mask])
    more, more_labels = _features(9, 1)
    second = acc.update(first, more, more_labels)
    np.testing.assert_array_equal(second.shift, first.shift)  # later batches keep it
    _assert_sums(second, np.concatenate([features[mask], more]), np.r_[labels[mask], more_labels])
    one = acc.update(acc.init(), features[:1], labels[:1])
    np.testing.assert_allclose(one.shift, features[0], rtol=1e-6)  # a one-row mean
    two = acc.update(one, more, more_labels)
    np.testing.assert_array_equal(two.shift, one.shift)  # one counted row fixes the shift
    _assert_sums(two, np.concatenate([features[:1], more]), np.r_[labels[:1], more_labels])


def test_h_score_merge_takes_the_shift_of_the_larger_state():
    features, labels = _features(28, 2)
    acc = streaming.h_score(Y, D)
    a = acc.update(acc.init(), features[:8], labels[:8])
    b = acc.update(acc.init(), features[8:20], labels[8:20])
    c = acc.update(acc.init(), features[20:], labels[20:])  # as many rows as a
    for merged in (acc.merge(a, b), acc.merge(b, a)):
        np.testing.assert_array_equal(merged.shift, b.shift)
        _assert_sums(merged, features[:20], labels[:20])
    for merged in (acc.merge(a, c), acc.merge(c, a)):
        np.testing.assert_allclose(merged.shift, (a.shift + c.shift) / 2, rtol=1e-7)
        rows = np.r_[0:8, 20:28]
        _assert_sums(merged, features[rows], labels[rows])
    one = acc.update(acc.init(), features[:1], labels[:1])
    for merged in (acc.merge(one, b), acc.merge(b, one)):  # a one-row state is not empty
        np.testing.assert_array_equal(merged.count, 13)
        _assert_sums(merged, features[np.r_[0, 8:20]], labels[np.r_[0, 8:20]])
    for merged in (acc.merge(a, acc.init()), acc.merge(acc.init(), a)):
        for got, want in zip(merged, a, strict=True):
            np.testing.assert_array_equal(got, want)  # an empty state is the identity


def test_log_eep_leaves_masked_rows_out():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(Z), 30).astype(np.float32)
    labels = rng.integers(0, Y, 30).astype(np.int32)
    mask = rng.random(30) < 0.6
    joint, eep = streaming.joint(Y, Z), streaming.log_eep(Y, Z)
    conditional = streaming.conditional(joint.update(joint.init(), probs, labels, mask))
    state = eep.update(eep.init(), probs, labels, conditional, mask)
    np.testing.assert_array_equal(state.count, mask.sum())
    want = leep_jax.leep(probs[mask], labels[mask], Y)
    np.testing.assert_allclose(eep.compute(state), want, rtol=1e-6)
    np.testing.assert_allclose(state.log_eep_sum, want * mask.sum(), rtol=1e-6)


def test_accumulator_states_are_float32_whatever_the_shift_type():
    fixed = streaming.h_score(Y, D, shift=[30] * D)  # integers: still a float32 state
    for acc in (*_accumulators().values(), streaming.log_eep(Y, Z), fixed):
        for leaf in acc.init():
            assert leaf.dtype == jnp.float32
    np.testing.assert_array_equal(fixed.init().shift, np.full(D, 30.0))  # from init on


def test_accumulator_states_stay_float32_under_x64_with_float64_batches():
    """One state layout in every process and a valid ``lax.scan`` carry: neither x64 nor
    float64 batches change a dtype (joint's state turned float64 before)."""
    rng = np.random.default_rng(5)
    probs = rng.dirichlet(np.ones(Z), 10)  # float64
    features = rng.normal(size=(10, D)) + 100.0
    labels = rng.integers(0, Y, 10)
    with jax.enable_x64(True):
        cond = jnp.full((Y, Z), 1.0 / Y)  # float64
        feature_accs = (
            streaming.h_score(Y, D),
            streaming.h_score(Y, D, shift=np.zeros(D)),
            streaming.logme(Y, D),
            streaming.regularized_h_score(Y, D),
            streaming.transrate(Y, D),
            streaming.gbc(Y, D),
        )
        cases = [
            (streaming.joint(Y, Z), (probs, labels)),
            (streaming.nce(Y, Z), (probs, labels)),
            (streaming.log_eep(Y, Z), (probs, labels, cond)),
            (streaming.logme_regression(2, D), (features, features[:, :2])),
            *((acc, (features, labels)) for acc in feature_accs),
        ]
        for acc, batch in cases:
            init = acc.init()
            updated = acc.update(acc.update(init, *batch), *batch)
            for state in (init, updated):
                assert [leaf.dtype for leaf in state] == [jnp.float32] * len(state), acc


def _log_eep_reference(probs, labels, table):
    """float64 ``log sum_z table[y_i, z] probs[i, z]`` per row."""
    return np.log(np.sum(np.asarray(table, np.float64)[labels] * probs, axis=1))


def _softmax64(logits):
    shifted = np.asarray(logits, np.float64) - np.max(logits, axis=1, keepdims=True)
    return np.exp(shifted) / np.sum(np.exp(shifted), axis=1, keepdims=True)


def test_log_eep_from_logits_is_exact_for_logits_whose_exponential_overflows():
    # exp(l) overflows float32 above ~88: the row maximum must be taken out (subtracted,
    # not added) before the exponential, on the streaming path as in memory.
    from leep_jax.scores.leep import log_eep

    rng = np.random.default_rng(5)
    logits = (80 * rng.normal(size=(40, Z)) + 100).astype(np.float32)
    labels = rng.integers(0, Y, 40).astype(np.int32)
    table = rng.dirichlet(np.ones(Y), Z).T.astype(np.float32)  # columns P(. | z) sum to 1
    want = _log_eep_reference(_softmax64(logits), labels, table)
    got = np.asarray(log_eep(*map(jnp.asarray, (logits, labels, table)), from_logits=True))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    eep = streaming.log_eep(Y, Z, from_logits=True)
    state = eep.update(eep.init(), logits, labels, table)
    np.testing.assert_allclose(eep.compute(state), want.mean(), rtol=1e-5)


def test_log_eep_reads_probabilities_unless_told_otherwise():
    from leep_jax.scores.leep import log_eep

    rng = np.random.default_rng(6)
    probs = rng.dirichlet(np.ones(Z), 30).astype(np.float32)
    labels = rng.integers(0, Y, 30).astype(np.int32)
    table = rng.dirichlet(np.ones(Y), Z).T.astype(np.float32)
    want = _log_eep_reference(probs.astype(np.float64), labels, table)
    got = log_eep(*map(jnp.asarray, (probs, labels, table)))
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_joint_distribution_errors_name_the_predictions():
    probs = np.full((4, Z), 1.0 / Z, np.float32)
    labels = np.zeros(4, np.int32)
    with pytest.raises(ValueError, match=r"^predictions must be 2-D"):
        leep_jax.joint_distribution(probs[:, :, None], labels, Y)
    probs[1, 1] = np.nan
    with pytest.raises(ValueError, match=r"^predictions contain NaN or Inf \(first in row 1\)"):
        leep_jax.joint_distribution(probs, labels, Y)


def test_joint_sum_reads_probabilities_and_accumulates_bfloat16_in_float32():
    # Summed in bfloat16 (8 mantissa bits) the table stalls once a cell passes a few
    # hundred: 4,096 rows of one class must still add up to what float64 says.
    from leep_jax.scores.joint import joint_sum

    rng = np.random.default_rng(7)
    n = 4096
    probs = rng.multinomial(8, np.full(Z, 1.0 / Z), n) / 8  # multiples of 1/8: exact in bf16
    labels = np.where(np.arange(n) < n - 10, 0, rng.integers(0, Y, n)).astype(np.int32)
    want = np.zeros((Y, Z))
    np.add.at(want, labels, probs)

    table, count = joint_sum(jnp.asarray(probs, jnp.bfloat16), jnp.asarray(labels), Y)
    assert table.dtype == jnp.float32 and count.dtype == jnp.float32
    np.testing.assert_allclose(table, want, rtol=1e-6)
    assert count == n

    joint = streaming.joint(Y, Z)
    state = joint.update(joint.init(), jnp.asarray(probs, jnp.bfloat16), labels)
    np.testing.assert_allclose(joint.compute(state), want / n, rtol=1e-6)
    got = leep_jax.joint_distribution(jnp.asarray(probs, jnp.bfloat16), labels, Y)
    np.testing.assert_allclose(got, want / n, rtol=1e-6)


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_counts_a_class_with_a_single_example(gaussian_type):
    # Every class tight (variances at the 1e-4 floor), so the singleton's pairs carry
    # weight: a "class present" test of count > 1 would drop them.
    rng = np.random.default_rng(3)
    centres = np.array([[0.0, 0.0], [0.05, 0.0], [0.02, 0.01]])
    labels = np.array([0] * 20 + [1] * 20 + [2])
    features = (centres[labels] + 0.01 * rng.normal(size=(41, 2))).astype(np.float32)
    got = leep_jax.gbc(features, labels, 3, gaussian_type=gaussian_type)
    want = reference_features.gbc(features, labels, 3, gaussian_type)
    np.testing.assert_allclose(got, want, rtol=1e-4)


@pytest.mark.parametrize("gaussian_type", ["spherical", "diagonal"])
def test_gbc_is_exact_for_features_far_from_zero(gaussian_type):
    # Sums of squares of features near 300 lose the variance in float32 unless the rows
    # are shifted first: in memory by their mean, streamed by the accumulator's shift.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 600)
    features = (300 + 0.5 * rng.normal(size=(600, 8)) + 0.3 * labels[:, None]).astype(np.float32)
    want = reference_features.gbc(features, labels, 3, gaussian_type)
    got = leep_jax.gbc(features, labels, 3, gaussian_type=gaussian_type)
    np.testing.assert_allclose(got, want, rtol=1e-3)
    acc = streaming.gbc(3, 8, gaussian_type=gaussian_type, shift=features[:64].mean(axis=0))
    state = acc.init()
    for start in range(0, 600, 128):
        state = acc.update(state, features[start : start + 128], labels[start : start + 128])
    np.testing.assert_allclose(acc.compute(state), want, rtol=1e-3)


@pytest.mark.parametrize("seed", [2, 5])
def test_logme_is_invariant_to_the_feature_scale_below_unit_variance(seed):
    """The maximum evidence is invariant to ``F -> s F`` (alpha absorbs ``s**2``), so its
    floors must scale too: the floor on ``|m|^2`` is relative to the feature trace, also
    when the trace is below 1. Features with no class signal (every class holds the same
    rows) make that floor bind on these draws. The fixed point starts at alpha = beta = 1
    (as the peers' does) and stops within its tolerance, so the invariance holds only to
    about that (1e-3 on some draws); float64 keeps float32's rounding out of it."""
    rng = np.random.default_rng(seed)
    features = np.concatenate([rng.normal(size=(20, 8))] * 3)
    labels = np.repeat(np.arange(3), 20).astype(np.int32)
    with jax.enable_x64(True):
        want = float(leep_jax.logme(features, labels, 3))
        for scale in (1e-3, 1e-6):
            got = float(leep_jax.logme(features * scale, labels, 3))
            assert got == pytest.approx(want, rel=1e-4), scale


@pytest.mark.parametrize("seed", [0, 1])
def test_float64_logme_stops_where_the_reference_fixed_point_stops(seed):
    """The fixed point stops once alpha / beta moves by at most 1e-5 of itself. In float64
    it agrees with the reference's iterates to rounding, so the evidence matches to 1e-13;
    50 iterations every time (a stop rule that never fires) move it by about 1e-12."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(40) % 3).astype(np.int32)
    features = rng.normal(size=(40, 6)) + 0.7 * np.eye(3, 6)[labels]
    want = reference_features.logme(features, labels, 3)
    with jax.enable_x64(True):
        got = float(leep_jax.logme(features, labels, 3))
    assert got == pytest.approx(want, rel=1e-13, abs=0)


@pytest.mark.parametrize("seed", [1, 3])
def test_float64_logme_stops_at_the_reference_iteration_cap(seed):
    """Wider than tall features with no class signal: the fixed point is still moving
    after 50 iterations (one more or one fewer changes the evidence by 1e-7 to 3e-4 on
    these draws), and float64 matches the reference, capped at 50, to about 1e-15."""
    rng = np.random.default_rng(seed)
    labels = (np.arange(6) % 3).astype(np.int32)
    features = rng.normal(size=(6, 16))
    want = reference_features.logme(features, labels, 3)
    with jax.enable_x64(True):
        got = float(leep_jax.logme(features, labels, 3))
    assert got == pytest.approx(want, rel=1e-12, abs=0)


def test_logme_is_finite_when_a_class_sums_to_zero_far_from_the_mean():
    """Class 0's rows sum to zero (F^T y = 0 for its column: m = 0, alpha -> infinity),
    the other classes sit at 100: the |m|^2 floor (relative to the uncentred trace,
    ``tr C + n |mean|^2``) keeps that column finite, and float32 agrees with float64."""
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(10, 4))
    features = np.concatenate([rows, -rows, rng.normal(size=(40, 4)) + 100])
    labels = np.repeat(np.arange(3), 20).astype(np.int32)
    got = float(leep_jax.logme(features.astype(np.float32), labels, 3))
    with jax.enable_x64(True):
        want = float(leep_jax.logme(features, labels, 3))
    assert np.isfinite(want)
    assert got == pytest.approx(want, rel=1e-4)


def test_transrate_vmaps_over_masks_beside_concrete_labels():
    """Concrete labels with a batched (traced) mask take the traced path: the eager
    path's host code (class blocks from the labels and the mask) cannot read a traced
    mask. (Under ``jit`` the labels are traced too; under ``vmap`` they stay concrete.)"""
    features, labels = _features(40, 3)
    masks = np.stack([np.arange(40) % 5 != 0, np.arange(40) < 30])
    got = jax.vmap(lambda m: leep_jax.transrate(features, labels, Y, mask=m))(masks)
    for mask, score in zip(masks, got, strict=True):
        want = leep_jax.transrate(features, labels, Y, mask=mask)
        np.testing.assert_allclose(score, want, rtol=1e-5)
