"""Bad input to the Python API: a ValueError that names the problem."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import leep_jax

PROBS = np.full((6, 4), 0.25, np.float32)
LABELS = np.array([0, 1, 2, 0, 1, 2], np.int32)
FEATURES = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
SCORES = [
    lambda v, y, k, **kw: leep_jax.leep(v, y, k, **kw),
    lambda v, y, k, **kw: leep_jax.nce(v, y, k, **kw),
    lambda v, y, k, **kw: leep_jax.joint_distribution(v, y, k, **kw),
]


def _with(array, row, col, value):
    array = array.copy()
    array[row, col] = value
    return array


@pytest.mark.parametrize("score", SCORES)
@pytest.mark.parametrize(
    "values,labels,classes,kwargs,message",
    [
        (PROBS[:5], LABELS, 3, {}, "^length mismatch: predictions has 5 rows but labels has 6$"),
        (PROBS[:, 0], LABELS, 3, {}, r"^predictions must be 2-D \[n, k\], got shape \(6,\)$"),
        (PROBS[None], LABELS, 3, {}, r"^predictions must be 2-D \[n, k\], got shape \(1, 6, 4\)$"),
        (PROBS, LABELS.astype(np.float16), 3, {}, "^labels must be integers, got dtype float16$"),
        (PROBS, LABELS[:, None], 3, {}, r"^labels must be 1-D \[n\], got shape \(6, 1\)$"),
        (
            PROBS,
            np.array([0, 1, 2, 3, 1, 2]),
            3,
            {},
            r"^labels must lie in \[0, num_target_classes=3\), found 3$",
        ),
        (
            PROBS,
            np.array([0, -1, 2, 0, 1, 2]),
            3,
            {},
            r"^labels must lie in \[0, num_target_classes=3\), found -1$",
        ),
        (
            _with(PROBS, 2, 1, np.nan),
            LABELS,
            3,
            {},
            r"^predictions contain NaN or Inf \(first in row 2\)$",
        ),
        (_with(PROBS, 2, 1, np.inf), LABELS, 3, {"from_logits": True}, "NaN or Inf"),
        (
            PROBS * 1.1,
            LABELS,
            3,
            {},
            r"^predictions rows must sum to 1 \(tolerance 0.001\); row 0 is off by 0.1; "
            "pass from_logits=True for logits$",
        ),
        (
            _with(_with(PROBS, 0, 0, -0.25), 0, 1, 0.75),
            LABELS,
            3,
            {},
            r"^predictions contain negative probabilities \(min -0.25\); "
            "pass from_logits=True for logits$",
        ),
        (
            PROBS[:0],
            LABELS[:0],
            3,
            {},
            r"^predictions is empty \(n = 0\); a score needs at least one example$",
        ),
        (PROBS[:, :0], LABELS, 3, {}, r"^predictions has no columns \(shape \(6, 0\)\)$"),
        (PROBS, LABELS, 0, {}, "^num_target_classes must be >= 1, got 0$"),
        (PROBS, LABELS, 2.0, {}, "^num_target_classes must be a Python int, got float$"),
        (
            PROBS,
            LABELS,
            3,
            {"mask": np.ones(5, bool)},
            r"^mask must have shape \(6,\), got \(5,\)$",
        ),
        (
            PROBS,
            LABELS,
            3,
            {"mask": np.ones(6, np.int32)},
            "^mask must be boolean, got dtype int32$",
        ),
        (
            PROBS,
            LABELS,
            3,
            {"mask": np.zeros(6, bool)},
            "^mask excludes every example; a score needs at least one$",
        ),
        (
            PROBS.astype(np.int32),
            LABELS,
            3,
            {},
            "^predictions must be floating point, got dtype int32$",
        ),
    ],
)
def test_bad_input_raises_value_error_naming_the_problem(
    score, values, labels, classes, kwargs, message
):
    with pytest.raises(ValueError, match=message):
        score(values, labels, classes, **kwargs)


@pytest.mark.parametrize("score", SCORES)
def test_one_hot_rows_with_a_row_off_name_the_row_sum(score):
    # Exact zeros are valid probabilities: the row sum is what is wrong.
    one_hot = np.eye(4, dtype=np.float32)[[0, 1, 2, 3, 0, 1]]
    with pytest.raises(ValueError, match=r"^predictions rows must sum to 1 .* row 3 is off by 1;"):
        score(_with(one_hot, 3, 0, 1.0), LABELS, 3)
    # bfloat16 rows: the tolerance is its epsilon.
    bf16 = jnp.asarray(_with(one_hot, 3, 0, 1.0), jnp.bfloat16)
    with pytest.raises(ValueError, match=r"rows must sum to 1 \(tolerance 0.00781\)"):
        score(bf16, LABELS, 3)


def test_h_score_bad_input():
    with pytest.raises(ValueError, match="length mismatch"):
        leep_jax.h_score(FEATURES[:4], LABELS, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        leep_jax.h_score(_with(FEATURES, 0, 0, np.nan), LABELS, 3)
    with pytest.raises(ValueError, match="labels must lie in"):
        leep_jax.h_score(FEATURES, LABELS + 5, 3)


def test_logits_need_not_sum_to_one_and_the_check_can_be_turned_off():
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32) * 5
    assert np.isfinite(float(leep_jax.leep(logits, LABELS, 3, from_logits=True)))
    with pytest.raises(ValueError, match="from_logits=True"):
        leep_jax.leep(logits, LABELS, 3)
    # validate_inputs=False skips value checks (shape checks stay).
    leep_jax.leep(PROBS * 1.1, LABELS, 3, validate_inputs=False)
    with pytest.raises(ValueError, match="length mismatch"):
        leep_jax.leep(PROBS[:5], LABELS, 3, validate_inputs=False)


def test_under_tracing_out_of_range_labels_are_dropped_like_masked_rows():
    labels = np.array([0, 1, 2, 7, 1, -3], np.int32)
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=6).astype(np.float32)
    in_range = (labels >= 0) & (labels < 3)
    traced = jax.jit(lambda p, y: leep_jax.leep(p, y, 3))(probs, labels)
    np.testing.assert_allclose(
        traced, leep_jax.leep(probs[in_range], labels[in_range], 3), rtol=1e-6
    )
    np.testing.assert_allclose(
        jax.jit(lambda p, y: leep_jax.nce(p, y, 3))(probs, labels),
        leep_jax.nce(probs, labels, 3, mask=jnp.asarray(in_range), validate_inputs=False),
        rtol=1e-6,
    )


@pytest.mark.parametrize("score", [leep_jax.leep, leep_jax.nce])
def test_one_target_class_and_one_source_class_are_valid(score):
    # One target class: P(y | x) = 1 in every row, so both scores are 0.
    np.testing.assert_allclose(score(PROBS, np.zeros(6, np.int32), 1), 0, atol=1e-6)
    # One source class: both are minus the entropy of the labels, log(1/3) here.
    np.testing.assert_allclose(score(np.ones((6, 1), np.float32), LABELS, 3), np.log(1 / 3), 1e-6)
