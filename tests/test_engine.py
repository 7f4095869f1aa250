"""The scoring engine: compile once per architecture, merge of shifted H-score states, checks.

Property tests (hypothesis) of the accumulators: any batch split gives the in-memory
scores, and merge is commutative (exactly) and associative (to rounding), also for
H-score states whose shifts differ.
"""

import contextlib
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference as ref
from flax import nnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import leep_jax
from leep_jax import streaming
from leep_jax.models import SmallCNN, forward

Y = 3


@contextlib.contextmanager
def count_compilations():
    """Counts XLA compilations (JAX's own monitoring events) inside the block."""
    compiled = []

    def listener(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiled.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield compiled
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _target(n=40, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.random((n, 12, 12, 1)).astype(np.float32)
    labels = rng.integers(0, Y, n).astype(np.int32)
    return [(images[i : i + 16], labels[i : i + 16]) for i in range(0, n, 16)], images, labels


def _in_memory(logits, features, labels):
    return {
        "leep": float(leep_jax.leep(logits, labels, Y, from_logits=True)),
        "nce": float(leep_jax.nce(logits, labels, Y, from_logits=True)),
        "h_score": float(leep_jax.h_score(features, labels, Y)),
    }


def _assert_scores(got, want):
    for name, value in want.items():
        # H-score inverts a float32 covariance: a random SmallCNN's features have condition
        # numbers near 7e3 here, and the streamed (first batch's mean) and in-memory (exact
        # mean) shifts round differently. Measured on an AMD EPYC: 1.3e-5 and 1.1e-5 from
        # the float64 value, on opposite sides (2.4e-5 apart).
        rtol = 1e-4 if name == "h_score" else 2e-5
        np.testing.assert_allclose(got[name], value, rtol=rtol, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("keep_predictions", [True, False])
def test_a_second_model_of_one_architecture_compiles_nothing(keep_predictions):
    batches, images, labels = _target()
    first, second = (SmallCNN(5, width=4, rngs=nnx.Rngs(seed)) for seed in (1, 2))
    leep_jax.score_model(first, batches, Y, keep_predictions=keep_predictions)
    with count_compilations() as compiled:
        got = leep_jax.score_model(second, batches, Y, keep_predictions=keep_predictions)
    assert compiled == []
    second.eval()
    _assert_scores(got, _in_memory(*forward(second, images), labels))
    assert got["forward_passes"] == (1 if keep_predictions else 2)


def _apply(params, images):
    model = nnx.merge(*params)
    return forward(model, images)


def test_apply_fn_with_params_compiles_once():
    batches, images, labels = _target(seed=1)
    models = [SmallCNN(5, width=4, rngs=nnx.Rngs(seed)) for seed in (3, 4)]
    for model in models:
        model.eval()
    graphdef = nnx.graphdef(models[0])
    leep_jax.score_model(_apply, batches, Y, params=(graphdef, nnx.state(models[0])))
    with count_compilations() as compiled:
        got = leep_jax.score_model(_apply, batches, Y, params=(graphdef, nnx.state(models[1])))
    assert compiled == []
    _assert_scores(got, _in_memory(*forward(models[1], images), labels))


def test_module_in_training_mode_is_scored_in_eval_mode_and_left_unchanged():
    batches, images, labels = _target(seed=2)
    model = SmallCNN(5, width=4, rngs=nnx.Rngs(5))  # training mode, as built
    before = jax.tree.map(np.asarray, nnx.state(model))
    got = leep_jax.score_model(model, batches, Y)
    jax.tree.map(np.testing.assert_array_equal, nnx.state(model), before)
    model.eval()
    _assert_scores(got, _in_memory(*forward(model, images), labels))


def test_nan_outputs_and_bad_models_are_refused():
    batches, _, _ = _target(seed=3)

    def nan_in_row_20(images):
        logits = jnp.zeros((images.shape[0], 4)).at[:, 0].set(images[:, 0, 0, 0])
        return jnp.where(images[:, :1, 0, 0] > 2, jnp.nan, logits), logits

    batches[1][0][4, 0, 0, 0] = 3.0  # row 16 + 4
    with pytest.raises(ValueError, match=r"predictions contain NaN or Inf \(first in row 20\)"):
        leep_jax.score_model(nan_in_row_20, batches, Y)
    with pytest.raises(
        ValueError, match=r"^params= is for an apply_fn; an nnx.Module carries its weights$"
    ):
        leep_jax.score_model(SmallCNN(5, rngs=nnx.Rngs(0)), batches, Y, params={})
    with pytest.raises(ValueError, match=r"^model must be an nnx.Module or a callable, got int$"):
        leep_jax.score_model(5, batches, Y)
    with pytest.raises(ValueError, match="metrics must be a non-empty subset"):
        leep_jax.score_model(nan_in_row_20, batches, Y, metrics=("leep", "bogus"))


# --- merge of H-score states with different shifts ----------------------------------

D = 3


def _features(n, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, Y, n).astype(np.int32)
    # A large common offset: raw float32 sums would lose digits to it.
    features = (rng.normal(size=(n, D)) + labels[:, None] + 30).astype(np.float32)
    return features, labels


def test_h_score_states_with_different_shifts_merge_exactly():
    features, labels = _features(60, 0)
    acc = jax.tree.map(jax.jit, streaming.h_score(Y, D))
    a = acc.update(acc.init(), features[:20], labels[:20])
    b = acc.update(acc.init(), features[20:], labels[20:])
    assert not np.array_equal(a.shift, b.shift)  # each took its own batch mean
    merged = acc.merge(a, b)
    jax.tree.map(np.testing.assert_array_equal, merged, acc.merge(b, a))
    expected = leep_jax.h_score(features, labels, Y)
    np.testing.assert_allclose(acc.compute(merged), expected, rtol=1e-5)
    # The merged sums equal the sums taken directly around the merged shift.
    direct = streaming.h_score(Y, D, shift=merged.shift)
    direct_state = direct.update(direct.init(), features, labels)
    for got, want in zip(merged[:-1], direct_state[:-1], strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-3)
    # A plain sum of the two states would be wrong: the shift is what merge checks.
    wrong = jax.tree.map(jnp.add, a, b)
    assert abs(float(acc.compute(wrong)) - float(expected)) > 1e-3


def test_fixed_shift_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match="shift must have shape"):
        streaming.h_score(Y, D, shift=jnp.zeros(D + 1))


_SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


MAX_N = 40


@st.composite
def _splits(draw):
    n = draw(st.integers(16, MAX_N))
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=4)))
    masked = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return n, [0, *cuts, n], np.array(masked)


def _padded(x, lo, hi):
    """Rows lo:hi of x zero-padded to MAX_N rows: one shape, so one compilation."""
    rows = x[lo:hi]
    return np.pad(rows, [(0, MAX_N - len(rows))] + [(0, 0)] * (rows.ndim - 1))


@functools.cache
def _accumulators():
    accs = {
        "joint": streaming.joint(Y, 5, from_logits=True),
        "nce": streaming.nce(Y, 5),
        "h_score": streaming.h_score(Y, D),
    }
    return {name: jax.tree.map(jax.jit, acc) for name, acc in accs.items()}


@jax.jit
def _in_memory_scores(logits, features, labels, mask):
    kwargs = {"mask": mask, "validate_inputs": False}
    return {
        "joint": leep_jax.joint_distribution(logits, labels, Y, from_logits=True, **kwargs),
        "nce": leep_jax.nce(logits, labels, Y, from_logits=True, **kwargs),
        "h_score": leep_jax.h_score(features, labels, Y, **kwargs),
    }


@_SETTINGS
@given(split=_splits(), seed=st.integers(0, 2**16))
def test_any_batch_split_and_merge_order_give_the_in_memory_scores(split, seed):
    n, cuts, unmasked = split
    # Enough counted rows for a well-conditioned D x D covariance in float32.
    unmasked[::2] = True
    features, labels = _features(n, seed)
    logits = np.random.default_rng(seed + 1).normal(size=(n, 5)).astype(np.float32)
    inputs = {"joint": logits, "nce": logits, "h_score": features}
    want = _in_memory_scores(*(_padded(x, 0, n) for x in (logits, features, labels, unmasked)))
    for name, acc in _accumulators().items():
        states = [
            acc.update(
                acc.init(),
                *(_padded(x, lo, hi) for x in (inputs[name], labels, unmasked)),
            )
            for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
        ]
        left = functools.reduce(acc.merge, states)
        right = functools.reduce(lambda x, y: acc.merge(y, x), reversed(states))
        rtol = 2e-4 if name == "h_score" else 1e-5
        for merged in (left, right):
            np.testing.assert_allclose(acc.compute(merged), want[name], rtol=rtol, atol=1e-5)
        if len(states) >= 2:
            a, b = states[0], states[1]
            jax.tree.map(np.testing.assert_array_equal, acc.merge(a, b), acc.merge(b, a))


# --- the engine on given outputs: probability checks, passes --------------------------


def _given(batch_size, labels, mask=None, **arrays):
    """A source of given outputs (``predictions=``, ``features=``) in batches."""

    def source(second_pass=False):
        return streaming.sources.array_batches(arrays, labels, Y, batch_size, mask=mask)

    return source


def test_array_batches_skip_masked_labels_and_report_progress():
    # One class: a masked row's label must not be checked at all (not even as 1).
    labels = np.array([0, 7, 0, 0, 0], np.int32)
    arrays = {"predictions": np.ones((5, 1), np.float32)}
    seen = []

    def progress(starts):
        seen.append(list(starts))
        return starts

    batches = list(
        streaming.sources.array_batches(arrays, labels, 1, 2, mask=labels == 0, progress=progress)
    )
    assert seen == [[0, 2, 4]] and [b.first_row for b in batches] == [0, 2, 4]
    assert [b.mask.tolist() for b in batches] == [[True, False], [True, True], [True, False]]
    # A ragged last batch of a JAX array is padded on its device, not copied to the host.
    for values in (np.ones((3, 1), np.float32), jnp.ones((3, 1))):
        *_, last = streaming.sources.array_batches({"predictions": values}, labels[:1], 1, 2)
        assert last.inputs[0].shape == (2, 1) and type(last.inputs[0]) is type(values)
    with pytest.raises(ValueError, match=r"found 7 \(row 1\)$"):
        list(streaming.sources.array_batches(arrays, labels, 1, 2))


def _run_on_probabilities(probs, labels, **kwargs):
    source = _given(16, labels, predictions=probs)
    return streaming.engine.run(source, Y, ("leep", "nce"), from_logits=False, **kwargs)


def test_engine_accepts_exact_zeros_and_reads_given_outputs_twice_without_a_forward():
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(4), 40).astype(np.float32)
    probs[::3] = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 14)]  # exact zeros
    labels = rng.integers(0, Y, 40).astype(np.int32)
    for keep in (True, False):
        got = _run_on_probabilities(probs, labels, keep_predictions=keep)
        # Given outputs are read again for LEEP's second sum: no forward pass runs again.
        assert got.forward_passes == 1 and got.n == 40
        np.testing.assert_allclose(
            got.scores["leep"], ref.leep(probs.astype(np.float64), labels, Y), rtol=1e-5
        )
        np.testing.assert_allclose(
            got.scores["nce"], ref.nce(probs.astype(np.float64), labels, Y), rtol=1e-5
        )


def test_engine_refuses_bad_probability_rows_with_the_scores_messages():
    probs = np.tile(np.float32([0.5, 0.25, 0.25, 0.0]), (20, 1))
    labels = np.arange(20, dtype=np.int32) % Y
    negative = probs.copy()
    negative[17] = [0.5, 0.75, 0.25, -0.5]
    with pytest.raises(ValueError) as error:
        _run_on_probabilities(negative, labels)
    assert str(error.value) == (
        "predictions contain negative probabilities (min -0.5); pass from_logits=True for logits"
    )
    # bfloat16 rounds each probability by up to 2**-8: its epsilon is the tolerance.
    slightly_off, far_off = probs.copy(), probs.copy()
    slightly_off[5, 3] = 5 / 1024  # off by 0.0049, > 1e-3 and < 2**-7
    slightly_off[7, 3] = 1 / 128  # off by exactly the tolerance, which is allowed
    far_off[[2, 18], 3] = 1 / 64  # equally bad rows in two batches: the first is named
    _run_on_probabilities(slightly_off.astype(jnp.bfloat16), labels)
    with pytest.raises(ValueError) as error:
        _run_on_probabilities(far_off.astype(jnp.bfloat16), labels)
    assert str(error.value) == (
        "predictions rows must sum to 1 (tolerance 0.00781); row 2 is off by 0.0156; "
        "pass from_logits=True for logits"
    )
    with pytest.raises(ValueError, match=r"tolerance 0\.001\); row 7 is off by 0\.00781"):
        _run_on_probabilities(slightly_off, labels)


def test_engine_takes_the_feature_sums_around_the_first_batch_mean():
    # Features far from zero: float32 sums S/n - m m^T taken around 0 lose the class
    # structure (regularized H-score 0, TransRate 28x too large); around the first batch's
    # mean they match the in-memory scores.
    rng = np.random.default_rng(4)
    labels = rng.integers(0, Y, 64).astype(np.int32)
    features = (rng.normal(size=(64, 5)) + labels[:, None] * 0.7 + 3000).astype(np.float32)
    names = ("h_score", "logme", "regularized_h_score", "transrate", "gbc")
    got = streaming.engine.run(_given(16, labels, features=features), Y, names).scores
    for name in names:
        want = float(getattr(leep_jax, name)(features, labels, Y))
        np.testing.assert_allclose(got[name], want, rtol=1e-3, err_msg=name)


def test_engine_checks_only_the_outputs_its_scores_read():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, Y, 32).astype(np.int32)
    logits = rng.normal(size=(32, 4)).astype(np.float32)
    features = rng.normal(size=(32, 3)).astype(np.float32)
    nan_logits, nan_features = logits.copy(), features.copy()
    nan_logits[9, 1] = nan_features[9, 2] = np.nan

    def scores(predictions, features, metrics):
        source = _given(8, labels, predictions=predictions, features=features)
        return streaming.engine.run(source, Y, metrics).scores

    assert scores(nan_logits, features, ("h_score",)) == scores(logits, features, ("h_score",))
    assert scores(logits, nan_features, ("nce",)) == scores(logits, features, ("nce",))
    with pytest.raises(ValueError, match=r"^features contain NaN or Inf \(first in row 9\)$"):
        scores(logits, nan_features, ("nce", "h_score"))


def test_engine_refuses_an_unhashable_forward():
    class Forward:
        __hash__ = None

        def __call__(self, params, inputs):
            return inputs

    source = _given(3, np.arange(3), predictions=np.eye(3, dtype=np.float32))
    with pytest.raises(ValueError) as error:
        streaming.engine.run(source, Y, ("nce",), forward=Forward())
    assert str(error.value) == (
        "forward must be hashable (a static argument of the jitted steps), got an "
        "unhashable Forward"
    )


def _scaled_logits(params, inputs):
    return inputs[0] * params["temperature"], None


def test_engine_traces_a_forward_whose_params_are_not_all_arrays():
    # A Python float among the weights: its shapes are not cached, but it is traced.
    rng = np.random.default_rng(6)
    labels = rng.integers(0, Y, 24).astype(np.int32)
    logits = rng.normal(size=(24, 4)).astype(np.float32)
    source = _given(8, labels, predictions=logits)
    got = streaming.engine.run(
        source, Y, ("leep", "nce"), forward=_scaled_logits, params={"temperature": 3.0}
    )
    assert got.forward_passes == 1  # kept predictions: the forward ran once
    scaled = 3.0 * logits.astype(np.float64)
    np.testing.assert_allclose(
        got.scores["leep"], ref.leep_from_logits(scaled, labels, Y), rtol=1e-5
    )


def _returns_one_array(params, inputs):
    return inputs[0]


def _returns_three(params, inputs):
    return inputs[0], inputs[0], inputs[0]


def _one_row_short(params, inputs):
    return inputs[0][1:], None


def _three_dimensional(params, inputs):
    return inputs[0][:, :, None], None


def _integer_predictions(params, inputs):
    return inputs[0].astype(jnp.int32), None


def _bad_features_only(params, inputs):
    return None, inputs[0][1:]


def _features_only(params, inputs):
    return None, inputs[0]


@pytest.mark.parametrize(
    "forward, metrics, message",
    [
        (
            _returns_one_array,
            ("nce",),
            "the forward pass must return a pair (predictions, features)",
        ),
        (_returns_three, ("nce",), "the forward pass must return a pair (predictions, features)"),
        (
            _one_row_short,
            ("nce",),
            "the forward pass must return predictions of shape [4, k] for a batch of 4, got (3, 2)",
        ),
        (
            _three_dimensional,
            ("nce",),
            "the forward pass must return predictions of shape [4, k] for a batch of 4, "
            "got (4, 2, 1)",
        ),
        (
            _integer_predictions,
            ("nce",),
            "the forward pass must return floating predictions, got int32",
        ),
        (
            _bad_features_only,
            ("h_score",),
            "the forward pass must return features of shape [4, k] for a batch of 4, got (3, 2)",
        ),
        (_features_only, ("nce",), None),
        (streaming.engine.given_outputs, ("nce", "h_score"), None),
    ],
)
def test_engine_refuses_malformed_outputs_and_missing_ones_in_full(forward, metrics, message):
    source = _given(4, np.arange(6) % Y, predictions=np.ones((6, 2), np.float32))
    with pytest.raises(ValueError) as error:
        streaming.engine.run(source, Y, metrics, forward=forward)
    if message is None:  # the outputs the scores need are absent
        needs = "predictions" if forward is _features_only else "features"
        message = f"{metrics} need {needs}, but there are none"
    assert str(error.value) == message


def test_engine_refuses_an_empty_source():
    with pytest.raises(ValueError) as error:
        streaming.engine.run(lambda second_pass=False: iter(()), Y, ("nce",))
    assert str(error.value) == "batches is empty"


def test_engine_stops_soon_after_a_bad_batch_and_times_itself():
    # Each step's flags are read while the next batch is fetched: a NaN in batch 0 stops
    # the run after batch 1 is read, not after the whole stream.
    logits = np.random.default_rng(7).normal(size=(40, 4)).astype(np.float32)
    labels = np.arange(40, dtype=np.int32) % Y
    read = []

    def source(second_pass=False):
        for batch in _given(4, labels, predictions=logits)():
            read.append(batch.first_row)
            yield batch

    started = time.perf_counter()
    got = streaming.engine.run(source, Y, ("nce",))
    assert 0 < got.seconds <= time.perf_counter() - started
    assert len(read) == 10
    logits[1, 2] = np.nan
    read.clear()
    with pytest.raises(ValueError, match=r"^predictions contain NaN or Inf \(first in row 1\)$"):
        streaming.engine.run(source, Y, ("nce",))
    assert read == [0, 4]


def test_engine_refuses_a_stream_whose_masks_exclude_every_row():
    labels, mask = np.zeros(8, np.int32), np.zeros(8, bool)
    source = _given(4, labels, mask, predictions=np.ones((8, 2), np.float32))
    with pytest.raises(ValueError) as error:
        streaming.engine.run(source, Y, ("nce",))
    assert str(error.value) == "the masks exclude every example; a score needs at least one"


# --- user batches: checks with their messages, sizes, rows --------------------------


def _fixed_size(batches, num_target_classes=Y, batch_size=None):
    return list(streaming.sources.fixed_size(batches, num_target_classes, batch_size))


def _rows(n, start=0):
    return np.arange(start, start + n, dtype=np.float32)[:, None] * [1.0, -1.0]


NOT_A_PAIR = "batch 1 must be a tuple (images, labels) or (images, labels, mask), got"
ROWS = "batch 1: labels must have shape [n] matching the inputs' rows, got"


@pytest.mark.parametrize(
    "batch, message",
    [
        (np.zeros((3, 2)), f"{NOT_A_PAIR} ndarray"),
        ((_rows(2), [0, 1], None, None), f"{NOT_A_PAIR} tuple"),
        ((_rows(2), [0, 1, 2]), f"{ROWS} (3,) for inputs (2, 2)"),
        ((_rows(0), np.zeros(0, int)), "batch 1 is empty"),
        ((_rows(2), [0.0, 1.0]), "batch 1: labels must be integers, got dtype float64"),
        (
            (_rows(2), [0, 1], [1.0, 0.0]),
            "batch 1: mask must be bool with shape (2,), got float64 (2,)",
        ),
        ((_rows(2), [0, 1], [True]), "batch 1: mask must be bool with shape (2,), got bool (1,)"),
        ((_rows(2), [0, Y]), f"labels must lie in [0, num_target_classes={Y}), found {Y} (row 4)"),
    ],
)
def test_a_malformed_batch_is_refused_by_index_with_its_problem(batch, message):
    # Batch 0 has three rows, so batch 1's row 1 is row 4 of the stream.
    with pytest.raises(ValueError) as error:
        _fixed_size([(_rows(3), [0, 1, 2]), batch])
    assert str(error.value) == message


def test_batches_are_padded_cut_and_numbered_by_their_first_row():
    stream = [
        ([[0.0, 0.0]], [2]),  # a nested list is read as an array; one row is a batch
        (_rows(5, 1), np.array([0, 1, 2, 0, 7]), np.array([1, 1, 1, 1, 0], bool)),
        (_rows(1, 6), [1]),
    ]
    got = _fixed_size(stream, num_target_classes=3, batch_size=2)
    assert [b.first_row for b in got] == [0, 1, 3, 5, 6]
    pad = np.zeros((1, 2), np.float32)
    want = np.concatenate([_rows(1), pad, _rows(5, 1), pad, _rows(1, 6), pad])
    np.testing.assert_array_equal(np.concatenate([b.inputs for b in got]), want)
    labels = [2, 0, 0, 1, 2, 0, 7, 0, 1, 0]
    np.testing.assert_array_equal(np.concatenate([b.labels for b in got]), labels)
    mask = [1, 0, 1, 1, 1, 1, 0, 0, 1, 0]
    np.testing.assert_array_equal(np.concatenate([b.mask for b in got]), mask)
    assert all(b.labels.dtype == np.int32 for b in got)
    # A masked label out of range is not checked (row 5 above), also with one class.
    one_class = [(_rows(2), np.array([0, 5]), np.array([True, False]))]
    assert len(_fixed_size(one_class, num_target_classes=1)) == 1


def test_reiterable_reads_sequences_and_callables_again_and_one_shot_iterators_once():
    reiterable = streaming.sources.reiterable
    for batches in ([1, 2], lambda: iter([1, 2])):
        fresh = reiterable(batches, passes=2)
        assert list(fresh()) == list(fresh()) == [1, 2]
    assert list(reiterable(iter([1, 2]), passes=1)()) == [1, 2]
    with pytest.raises(ValueError) as error:
        reiterable(iter([1, 2]), passes=2)
    assert str(error.value) == (
        "keep_predictions=False reads the batches twice, but `batches` is a one-shot "
        "iterator; pass a sequence, a re-iterable dataset, or a zero-argument callable "
        "returning a fresh iterator (or use keep_predictions=True)"
    )
    with pytest.raises(ValueError) as error:
        reiterable(5, passes=1)
    assert str(error.value) == (
        "batches must be an iterable of (images, labels[, mask]) or a zero-argument "
        "callable returning one, got int"
    )
