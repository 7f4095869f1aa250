"""leep_jax.metrics: clu and nnx metrics equal the in-memory scores under any batching,
device reduction, jit, lax.scan and nnx.jit."""

import doctest
import importlib
import inspect
import re
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from clu import metrics as clu_metrics
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import leep_jax
from leep_jax import metrics, streaming
from leep_jax.metrics import scores as metric_scores

N, Z, Y, D = 64, 7, 5, 4  # the last target class never occurs in the labels
RTOL = 2e-5

Joint, LogEEP = metrics.joint(Y, Z), metrics.log_eep(Y, Z)
NCE, HScore = metrics.nce(Y, Z), metrics.h_score(Y, D)


def make_problem(seed, n=N):
    rng = np.random.default_rng(seed)
    logits = (rng.normal(size=(n, Z)) * 2).astype(np.float32)
    labels = rng.integers(0, Y - 1, n).astype(np.int32)
    features = (rng.normal(size=(n, D)) + labels[:, None] + 1).astype(np.float32)
    mask = rng.random(n) < 0.8
    return {"logits": logits, "labels": labels, "features": features, "mask": mask}


def in_memory(data):
    logits, labels, mask = data["logits"], data["labels"], data["mask"]
    return {
        "leep": float(leep_jax.leep(logits, labels, Y, from_logits=True, mask=mask)),
        "nce": float(leep_jax.nce(logits, labels, Y, from_logits=True, mask=mask)),
        "h_score": float(leep_jax.h_score(data["features"], labels, Y, mask=mask)),
    }


def ragged_batches(data):
    """Four ragged batches (9, 30, 4 and 21 rows: one compile per size, shared by tests)."""
    cuts = np.array([9, 39, 43])
    return [
        {k: v[a:b] for k, v in data.items()} for a, b in zip([0, *cuts], [*cuts, N], strict=True)
    ]


@jax.jit
def phase_one(batch):
    """The single-pass metrics of one batch; one compile per batch size."""
    return {cls.__name__: cls.from_model_output(**batch) for cls in (Joint, NCE, HScore)}


@jax.jit
def phase_two(batch, frozen):
    return LogEEP.from_model_output(**batch, conditional=frozen)


def tree_merge(items):
    """Merges in a balanced tree: a different association order from a left fold."""
    while len(items) > 1:
        pairs = [a.merge(b) for a, b in zip(items[::2], items[1::2], strict=False)]
        items = pairs + ([items[-1]] if len(items) % 2 else [])
    return items[0]


def assert_scores(got, want):
    for name in want:
        np.testing.assert_allclose(float(got[name]), want[name], rtol=RTOL, err_msg=name)


@pytest.mark.parametrize("seed", [0, 1])
def test_merged_batches_equal_in_memory_scores(seed):
    data = make_problem(seed)
    batches = ragged_batches(data)
    first = [phase_one(b) for b in batches]
    joint = tree_merge([f["Joint"] for f in first])
    frozen = metrics.conditional(joint)
    eep = LogEEP.empty()
    for b in batches:
        eep = eep.merge(phase_two(b, frozen))
    got = {
        "leep": eep.compute(),
        "nce": tree_merge([f["NCE"] for f in first]).compute(),
        "h_score": tree_merge([f["HScore"] for f in first]).compute(),
    }
    assert_scores(got, in_memory(data))
    whole = leep_jax.joint_distribution(data["logits"], data["labels"], Y, from_logits=True,
                                        mask=data["mask"])  # fmt: skip
    np.testing.assert_allclose(joint.compute(), whole, rtol=RTOL, atol=1e-7)


def test_empty_is_identity_and_merge_is_associative():
    data = make_problem(3, n=N)
    a, b, c = (phase_one({k: v[i : i + 20] for k, v in data.items()}) for i in (0, 20, 40))
    for name, cls in (("Joint", Joint), ("NCE", NCE), ("HScore", HScore)):
        for x, y in [
            (cls.empty().merge(a[name]), a[name]),
            (a[name].merge(b[name].merge(c[name])), a[name].merge(b[name]).merge(c[name])),
            (a[name].merge(b[name]), b[name].merge(a[name])),
        ]:
            assert type(x) is cls
            jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), x, y)


def test_jit_matches_eager_and_float_masks_count_like_bool():
    data = make_problem(4)
    eager = HScore.from_model_output(**data)
    jitted = jax.jit(lambda d: HScore.from_model_output(**d))(data)
    float_mask = NCE.from_model_output(**{**data, "mask": data["mask"].astype(np.float32)})
    # The H-score sums are centred on a batch mean, so some are rounding noise near 0.
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-5), eager, jitted)
    np.testing.assert_allclose(eager.compute(), jitted.compute(), rtol=1e-6)
    np.testing.assert_array_equal(
        float_mask.state.counts, NCE.from_model_output(**data).state.counts
    )
    assert float(NCE.from_model_output(**data).state.counts.sum()) == data["mask"].sum()


def test_metric_is_a_lax_scan_carry():
    data = make_problem(5)
    stacked = {k: v.reshape(4, 16, *v.shape[1:]) for k, v in data.items()}

    @jax.jit
    def run(stacked):
        def body(carry, batch):
            nce, h = carry
            return (
                nce.merge(NCE.from_model_output(**batch)),
                h.merge(HScore.from_model_output(**batch)),
            ), None

        (nce, h), _ = jax.lax.scan(body, (NCE.empty(), HScore.empty()), stacked)
        return {"nce": nce.compute(), "h_score": h.compute()}

    want = in_memory(data)
    assert_scores(run(stacked), {k: want[k] for k in ("nce", "h_score")})


def test_reduce_over_a_leading_device_axis_in_shard_map():
    devices = jax.devices()
    assert len(devices) == 8
    mesh = jax.make_mesh((8,), ("d",), devices=devices)
    data = make_problem(6)  # 8 rows per device; the mask makes shards uneven
    Metrics = clu_metrics.Collection.create(nce=NCE, h_score=HScore, joint=Joint)

    @jax.jit
    # The reduce of an all_gather is replicated; shard_map's check cannot see it through
    # the lax.scan in clu's Metric.reduce, hence check_vma=False.
    @jax.shard_map(mesh=mesh, in_specs=P("d"), out_specs=P(), check_vma=False)
    def per_device(shard):
        # clu's distributed pattern: all_gather a leading device axis, then reduce().
        first = Metrics.gather_from_model_output(axis_name="d", **shard)
        frozen = metrics.conditional(first.joint)
        eep = jax.lax.all_gather(
            LogEEP.from_model_output(**shard, conditional=frozen), "d"
        ).reduce()
        return {**first.compute(), "leep": eep.compute()}

    got = per_device(jax.device_put(data, NamedSharding(mesh, P("d"))))
    assert_scores(got, in_memory(data))


def test_reduce_of_stacked_per_device_metrics():
    data = make_problem(7)
    shards = {k: v.reshape(8, 8, *v.shape[1:]) for k, v in data.items()}
    stacked = jax.vmap(lambda s: HScore.from_model_output(**s))(shards)
    assert stacked.state.outer_sum.shape == (8, D, D)
    reduced = stacked.reduce()
    np.testing.assert_allclose(float(reduced.compute()), in_memory(data)["h_score"], rtol=RTOL)


def test_in_a_clu_collection_with_clu_metrics():
    data = make_problem(8)
    batches = ragged_batches(data)

    @flax.struct.dataclass
    class EvalMetrics(clu_metrics.Collection):
        loss: clu_metrics.Average.from_output("loss")
        accuracy: clu_metrics.Accuracy
        nce: NCE
        h_score: HScore

    @jax.jit
    def eval_step(batch):
        loss = -jax.nn.log_softmax(batch["logits"][:, :Y])[jnp.arange(len(batch["labels"])),
                                                            batch["labels"]]  # fmt: skip
        return EvalMetrics.single_from_model_output(loss=loss, **batch)

    collected = EvalMetrics.empty()
    for batch in batches:
        collected = collected.merge(eval_step(batch))
    got = collected.compute()
    assert_scores(got, {k: v for k, v in in_memory(data).items() if k != "leep"})
    mask = data["mask"]
    accuracy = np.mean(data["logits"].argmax(1)[mask] == data["labels"][mask])
    np.testing.assert_allclose(float(got["accuracy"]), accuracy, rtol=1e-6)


def test_nnx_multimetric_in_nnx_jit_compiles_once():
    data = make_problem(9)
    batches = [{k: v[i : i + 16] for k, v in data.items()} for i in range(0, N, 16)]
    tracked = nnx.MultiMetric(
        loss=nnx.metrics.Average(),
        accuracy=nnx.metrics.Accuracy(),
        joint=metrics.NnxMetric(Joint),
        nce=metrics.NnxMetric(NCE),
        h_score=metrics.NnxMetric(HScore),
    )
    second = nnx.MultiMetric(leep=metrics.NnxMetric(LogEEP))
    traces = []

    @nnx.jit
    def step(tracked, batch):
        traces.append(1)
        values = jnp.sum(batch["features"], axis=1)
        tracked.update(values=values, **batch)

    @nnx.jit
    def second_step(second, batch, conditional):
        second.update(conditional=conditional, **batch)

    for _ in range(2):  # a second epoch after reset() gives the same scores
        tracked.reset()
        second.reset()
        for batch in batches:
            step(tracked, batch)
        frozen = metrics.conditional(tracked.joint.value)
        for batch in batches:
            second_step(second, batch, frozen)
        got = {**tracked.compute(), **second.compute()}
        assert_scores(got, in_memory(data))
    assert len(traces) == 1
    mask = data["mask"]
    np.testing.assert_allclose(float(got["loss"]), data["features"].sum(1)[mask].mean(), rtol=1e-5)


def test_from_accumulator_makes_any_accumulator_a_metric_in_one_line():
    data = make_problem(10)
    Probe = metrics.from_accumulator(streaming.nce(Y, D), ("features", "labels"), name="Probe")
    assert issubclass(Probe, clu_metrics.Metric) and Probe.__name__ == "Probe"
    got = Probe.from_model_output(**data).compute()
    want = leep_jax.nce(data["features"], data["labels"], Y, from_logits=True, mask=data["mask"])
    np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
    unmasked = metrics.from_accumulator(streaming.nce(Y, Z), ("logits", "labels"), mask=None)
    assert float(unmasked.from_model_output(**data).state.counts.sum()) == N


def test_bad_inputs_raise_value_errors_naming_the_problem():
    data = make_problem(11)
    with pytest.raises(ValueError, match=r"missing \['features'\]"):
        HScore.from_model_output(logits=data["logits"], labels=data["labels"])
    with pytest.raises(ValueError, match="mask 'mask' must have shape"):
        NCE.from_model_output(**{**data, "mask": data["mask"][:-1]})
    with pytest.raises(ValueError, match="predictions batch must have shape"):
        NCE.from_model_output(**{**data, "logits": data["logits"][:, :3]})
    with pytest.raises(ValueError, match="Accumulator"):
        metrics.from_accumulator(lambda: None, ("logits", "labels"))
    with pytest.raises(ValueError, match="inputs"):
        metrics.from_accumulator(streaming.nce(Y, Z), ())
    with pytest.raises(ValueError, match="clu.metrics.Metric"):
        metrics.NnxMetric(streaming.nce(Y, Z))
    with pytest.raises(ValueError, match="num_target_classes"):
        metrics.nce(0, Z)


def test_from_accumulator_argument_errors_in_full():
    acc = streaming.nce(Y, Z)
    made = metrics.from_accumulator(acc, ("logits", "labels"))
    assert made.__name__ == made.__qualname__ == "AccumulatorMetric"
    assert made.__module__ == "leep_jax.metrics.adapter"
    with pytest.raises(
        ValueError, match=r"^accumulator must be a leep_jax.streaming.Accumulator, got function$"
    ):
        metrics.from_accumulator(lambda: None, ("logits", "labels"))
    for inputs in [("logits", ""), ("logits", 1)]:
        message = f"inputs must be a non-empty sequence of output names, got {inputs!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            metrics.from_accumulator(acc, inputs)
    for mask in ["", 3]:
        message = f"mask must be an output name or None, got {mask!r}"
        with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
            metrics.from_accumulator(acc, ("logits", "labels"), mask=mask)


@pytest.mark.parametrize(
    "name", ["leep_jax.metrics.adapter", "leep_jax.metrics.scores", "leep_jax.metrics.nnx_wrapper"]
)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_metrics_import_without_tensorflow():
    # clu is a plain dependency because its metrics never need TensorFlow at run time.
    code = (
        "import sys; sys.modules['tensorflow'] = None; "
        "import leep_jax; assert 'clu' not in sys.modules; "
        "m = leep_jax.metrics.nce(2, 2); print(m.__mro__[2].__module__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clu.metrics"


def test_merge_and_reduce_go_through_the_accumulators_merge():
    # A merge that is not a sum (a running maximum): a tree-sum of states would fail here.
    running_max = streaming.Accumulator(
        init=lambda: jnp.full((), -jnp.inf),
        update=lambda state, values, mask=None: jnp.maximum(
            state, jnp.max(jnp.where(mask, values, -jnp.inf) if mask is not None else values)
        ),
        merge=jnp.maximum,
        compute=lambda state: state,
    )
    Max = metrics.from_accumulator(running_max, "values")
    values = jnp.arange(24.0).reshape(8, 3) - 30
    stacked = jax.vmap(lambda v: Max.from_model_output(values=v))(values)
    assert float(stacked.reduce().compute()) == -7.0
    masked = Max.from_model_output(values=values[0], mask=jnp.array([1.0, 0.0, 0.0]))
    assert float(Max.empty().merge(masked).merge(Max.empty()).compute()) == -30.0
    message = (
        "AccumulatorMetric: mask 'mask' must have shape (8,) (one entry per row of 'values'), "
        "got (5,)"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        Max.from_model_output(values=values, mask=jnp.ones(5))


FEATURE_METRICS = {
    "logme": (metrics.logme, leep_jax.logme),
    "regularized_h_score": (metrics.regularized_h_score, leep_jax.regularized_h_score),
    "transrate": (metrics.transrate, leep_jax.transrate),
    "gbc": (metrics.gbc, leep_jax.gbc),
}


def test_feature_metric_factories_are_named_and_documented_as_their_accumulators():
    # help(metrics.logme) is what a user reads: one builder makes all four factories.
    papers = {
        "logme": "LogME (You et al., ICML 2021)",
        "regularized_h_score": "H-score with Ledoit-Wolf shrinkage (Ibrahim et al.",
        "transrate": "TransRate (Huang et al., ICML 2022)",
        "gbc": "GBC, spherical Gaussians (Pandy et al., CVPR 2022)",
    }
    for name, (factory, _) in FEATURE_METRICS.items():
        assert factory.__name__ == factory.__qualname__ == name
        doc = inspect.getdoc(factory)
        assert doc.startswith(papers[name]), doc
        assert f"Over :func:`leep_jax.streaming.{name}`." in doc
        assert "shift: optional fixed ``[D]`` shift of every batch's features." in doc
        assert list(inspect.signature(factory).parameters) == [
            "num_target_classes", "feature_dim", "shift", "features", "labels", "mask"
        ]  # fmt: skip


def test_the_feature_metric_builder_makes_a_factory_over_any_shifted_accumulator():
    # Called here, not only at import, so mutation testing maps this test to the builder.
    factory = metric_scores._feature_metric(streaming.gbc, "MyGBC", "A summary.")
    assert factory.__name__ == factory.__qualname__ == "gbc"
    assert inspect.getdoc(factory).startswith(
        "A summary.\n\nOver :func:`leep_jax.streaming.gbc`. Its state is sums of"
    )
    assert inspect.signature(factory) == inspect.signature(metrics.gbc)
    data = make_problem(10)
    shift = data["features"][:9].mean(0)
    Metric = factory(Y, D, shift=shift, features="f", labels="y", mask="m")
    metric = Metric.from_model_output(f=data["features"], y=data["labels"], m=data["mask"])
    assert type(metric).__name__ == "MyGBC"
    acc = streaming.gbc(Y, D, shift=shift)
    sums = acc.update(acc.init(), data["features"], data["labels"], data["mask"])
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), metric.state, sums)
    want = leep_jax.gbc(data["features"], data["labels"], Y, mask=data["mask"])
    np.testing.assert_allclose(float(metric.compute()), float(want), rtol=1e-4, atol=1e-5)
    # The default output names: features, labels and mask (which drops rows here).
    default = factory(Y, D, shift=shift).from_model_output(**data)
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6), default.state, sums)


@pytest.mark.parametrize("name", sorted(FEATURE_METRICS))
def test_one_pass_feature_scores_as_metrics(name):
    factory, score = FEATURE_METRICS[name]
    data = make_problem(8)
    want = score(data["features"], data["labels"], Y, mask=data["mask"])
    # One shift for every batch (a rough mean), as the metric's docstring asks.
    shift = data["features"][:9].mean(0)
    Metric = factory(Y, D, shift=shift)
    merged = tree_merge([Metric.from_model_output(**batch) for batch in ragged_batches(data)])
    # The state is the accumulator's, with that shift.
    acc = getattr(streaming, name)(Y, D, shift=shift)
    sums = acc.update(acc.init(), data["features"], data["labels"], data["mask"])
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, atol=1e-4), merged.state, sums)
    np.testing.assert_allclose(float(merged.compute()), float(want), rtol=1e-4, atol=1e-5)
    shards = {k: v.reshape(8, 8, *v.shape[1:]) for k, v in data.items()}
    reduced = jax.vmap(lambda s: Metric.from_model_output(**s))(shards).reduce()
    np.testing.assert_allclose(float(reduced.compute()), float(want), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("renamed", [False, True])
def test_factories_read_their_default_and_renamed_outputs(renamed):
    # Built inside the test: the module-level classes above are made at import, where
    # mutation testing's coverage run cannot see which test depends on the factories.
    data = make_problem(9)
    batch, mask, logit_names, feature_names = data, data["mask"], {}, {}
    if renamed:
        # With mask=None the output named "mask" is there but not read.
        renames = {"logits": "scores", "labels": "y", "features": "f", "mask": "mask"}
        batch = {new: data[old] for old, new in renames.items()}
        mask, logit_names = None, {"predictions": "scores", "labels": "y", "mask": None}
        feature_names = {"features": "f", "labels": "y", "mask": None}
    classes = {
        "Joint": metrics.joint(Y, Z, **logit_names),
        "NCE": metrics.nce(Y, Z, **logit_names),
        "HScore": metrics.h_score(Y, D, **feature_names),
    }
    state = {name: cls.from_model_output(**batch) for name, cls in classes.items()}
    eep = metrics.log_eep(Y, Z, **logit_names).from_model_output(
        **batch, conditional=metrics.conditional(state["Joint"])
    )
    assert [type(m).__name__ for m in (*state.values(), eep)] == [*state, "LogEEP"]
    got = {
        "leep": eep.compute(),
        "nce": state["NCE"].compute(),
        "h_score": state["HScore"].compute(),
    }
    assert_scores(got, in_memory({**data, "mask": mask}))
    for name, (factory, score) in FEATURE_METRICS.items():
        metric = factory(Y, D, **feature_names)
        want = score(data["features"], data["labels"], Y, mask=mask)
        got = metric.from_model_output(**batch).compute()
        np.testing.assert_allclose(float(got), float(want), rtol=1e-4, err_msg=name)
    assert [f(Y, D).__name__ for f, _ in FEATURE_METRICS.values()] == [
        "LogME", "RegularizedHScore", "TransRate", "GBC"
    ]  # fmt: skip
