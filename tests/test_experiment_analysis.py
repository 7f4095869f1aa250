"""The experiment's analysis (protocol v2): statistics, tables, figures and report.

Every statistic is checked against an independent computation written here (scipy or
NumPy, another formula or another route) on synthetic rows built with the `TaskRow`
and `Rq4Row` constructors; the report is generated from synthetic partial results.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats

from leep_jax.experiments import learning_rates, selection, statistics, tables
from leep_jax.experiments.report import write_report
from leep_jax.experiments.results import Results, read_results, write_json_atomic
from leep_jax.experiments.rows import Rq4Row, TaskRow, jsonable
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.transfer.methods import METHODS

PAIR = "fashion_mnist[0-4]->fashion_mnist[5-9]"
LARGE = "large_balanced"


def task_row(
    index: int,
    classes,
    scores,
    accuracy,
    *,
    pair: str = PAIR,
    regime: str = LARGE,
    at_chance=None,
) -> TaskRow:
    classes = tuple(classes)
    return TaskRow(
        id=f"{pair}|{regime}|{index:03d}",
        pair=pair,
        regime=regime,
        task_index=index,
        classes=classes,
        num_classes=len(classes),
        n_train=20 * len(classes),
        n_test=10 * len(classes),
        class_counts=(20,) * len(classes),
        num_noisy_labels=0,
        scores=dict(scores),
        accuracy=dict(accuracy),
        curves={
            "fine_tune": (accuracy["fine_tune"] - 0.1, accuracy["fine_tune"]),
            "train_from_scratch": (
                accuracy["train_from_scratch"] - 0.2,
                accuracy["train_from_scratch"],
            ),
        },
        steps={"fine_tune": 8, "train_from_scratch": 8, "retrain_head": 30},
        at_chance=dict(at_chance or dict.fromkeys(METHODS, False)),
        timings={"scores_s": 0.1, "retrain_head_s": 0.2, "fine_tune_s": 1.0, "scratch_s": 1.0},
        session=0,
    )


def random_tasks(rng, n, *, pair=PAIR, regime=LARGE, pool=10, max_classes=6):
    """Tasks whose scores and accuracies depend on their class count and a latent."""
    rows = []
    for i in range(n):
        k = int(rng.integers(2, max_classes + 1))
        classes = sorted(rng.choice(pool, size=k, replace=False).tolist())
        quality = rng.normal()
        scores = {s: float(-math.log(k) + 0.3 * quality + rng.normal()) for s in SCORE_NAMES}
        accuracy = {
            m: float(np.clip(1.0 - 0.05 * k + 0.02 * quality + 0.02 * rng.normal(), 0, 1))
            for m in METHODS
        }
        rows.append(task_row(i, classes, scores, accuracy, pair=pair, regime=regime))
    return rows


# ---------------------------------------------------------------- correlations


def test_correlation_matches_scipy_and_the_partial_correlation_formula():
    rng = np.random.default_rng(0)
    k = rng.integers(2, 9, size=40)
    x = -np.log(k) + rng.normal(size=40)
    y = 0.5 * np.log(k) + 0.3 * x + rng.normal(size=40)
    got = statistics.correlation(x, y, k)
    expected = scipy.stats.pearsonr(x, y)
    assert got.n_tasks == 40
    assert got.pearson_r == pytest.approx(expected.statistic, rel=1e-12)
    assert got.p_value == pytest.approx(expected.pvalue, rel=1e-9)
    # First-order partial correlation from the three pairwise r.
    z = np.log(k)
    rxy, rxz, ryz = (np.corrcoef(a, b)[0, 1] for a, b in ((x, y), (x, z), (y, z)))
    partial = (rxy - rxz * ryz) / math.sqrt((1 - rxz**2) * (1 - ryz**2))
    assert got.partial_r == pytest.approx(partial, rel=1e-10)


@pytest.mark.parametrize("seed", [1, 2])
def test_partial_correlation_matches_a_direct_residual_regression(seed):
    rng = np.random.default_rng(seed)
    n = 25
    k = rng.integers(2, 6, size=n)
    x = rng.normal(size=n) - np.log(k)
    y = rng.normal(size=n) + 2 * np.log(k) + 0.4 * x
    x[3] = np.nan  # dropped with its y
    got_r, got_p, got_n = statistics.partial_correlation(x, y, np.log(k))
    keep = np.isfinite(x)
    z = np.log(k[keep])
    residuals = [v[keep] - np.polyval(np.polyfit(z, v[keep], 1), z) for v in (x, y)]
    r = scipy.stats.pearsonr(*residuals).statistic
    df = keep.sum() - 3
    p = 2 * scipy.stats.t.sf(abs(r) * math.sqrt(df / (1 - r * r)), df)
    assert got_n == n - 1
    assert got_r == pytest.approx(r, rel=1e-10)
    assert got_p == pytest.approx(p, rel=1e-8)


def test_partial_correlation_with_one_class_count_is_pearson():
    rng = np.random.default_rng(13)
    x, y = rng.normal(size=(2, 12))
    got = statistics.correlation(x, y, [4] * 12)
    assert got.partial_r == pytest.approx(got.pearson_r, rel=1e-10)
    assert got.partial_p == pytest.approx(got.p_value, rel=1e-8)


def test_class_count_baseline_has_raw_r_but_no_partial_r():
    rows = random_tasks(np.random.default_rng(3), 30)
    entry = statistics.regime_summary(rows)
    got = entry.correlations["class_count"]["fine_tune"]
    expected = scipy.stats.pearsonr(
        [-math.log(r.num_classes) for r in rows], [r.accuracy["fine_tune"] for r in rows]
    )
    assert got.pearson_r == pytest.approx(expected.statistic, rel=1e-12)
    assert got.partial_r is None and got.partial_p is None  # explained by the covariate
    assert entry.within_class_count["class_count"]["fine_tune"].r is None


def test_undefined_inputs_give_none_not_nan():
    assert statistics.correlation([1.0], [2.0], [2]) == statistics.Correlation(
        1, None, None, None, None
    )
    constant = statistics.correlation([1.0, 1.0, 1.0, 1.0], [0.1, 0.5, 0.2, 0.3], [2, 3, 2, 3])
    assert constant.pearson_r is None and constant.partial_r is None
    assert statistics.pooled_within([1.0, 2.0], [1.0, 2.0], [2, 3]) == statistics.Pooled(
        None, None, 0, 0
    )


def test_pooled_within_class_count_matches_a_hand_computation():
    rng = np.random.default_rng(4)
    groups = np.array([2] * 6 + [3] * 5 + [4] * 4 + [5])  # the single 5-class task is skipped
    x = rng.normal(size=groups.size) + groups
    y = rng.normal(size=groups.size) - groups + 0.5 * x
    got = statistics.pooled_within(x, y, groups)
    used = groups != 5
    xc = np.concatenate([x[groups == g] - x[groups == g].mean() for g in (2, 3, 4)])
    yc = np.concatenate([y[groups == g] - y[groups == g].mean() for g in (2, 3, 4)])
    r = float(np.sum(xc * yc) / math.sqrt(np.sum(xc**2) * np.sum(yc**2)))
    assert (got.n_tasks, got.groups) == (15, 3)
    assert got.r == pytest.approx(r, rel=1e-12)
    # The same r as a regression on the class-count indicators, and its t-test.
    dummies = (groups[used, None] == np.array([2, 3, 4])).astype(float)
    res = [v[used] - dummies @ np.linalg.lstsq(dummies, v[used], rcond=None)[0] for v in (x, y)]
    assert scipy.stats.pearsonr(*res).statistic == pytest.approx(got.r, rel=1e-10)
    df = 15 - 3 - 1
    p = 2 * scipy.stats.t.sf(abs(r) * math.sqrt(df / (1 - r * r)), df)
    assert got.p_value == pytest.approx(p, rel=1e-8)


def test_repeated_large_tasks_are_averaged_and_counted():
    rng = np.random.default_rng(5)
    rows = random_tasks(rng, 12, max_classes=4)
    # Two more rows of task 0's class set (the same task) with other accuracies, one of
    # them at chance with fine-tuning.
    first = rows[0]
    chance = dict.fromkeys(METHODS, False) | {"fine_tune": True}
    rows.append(task_row(12, first.classes, first.scores, dict.fromkeys(METHODS, 0.5)))
    rows.append(
        task_row(
            13, reversed(first.classes), first.scores, dict.fromkeys(METHODS, 0.2), at_chance=chance
        )
    )
    entry = statistics.regime_summary(rows)
    keys = [tuple(sorted(r.classes)) for r in rows]
    distinct = sorted(set(keys), key=keys.index)
    assert entry.n_rows == 14 and entry.n_tasks == len(distinct)
    assert entry.duplicate_rows == 14 - len(distinct)
    assert entry.at_chance == {"retrain_head": 0, "fine_tune": 1, "train_from_scratch": 0}
    # Independent: mean per class set, then scipy.
    accuracy, leep = {}, {}
    for key, row in zip(keys, rows, strict=True):
        accuracy.setdefault(key, []).append(row.accuracy["retrain_head"])
        leep.setdefault(key, []).append(row.scores["leep"])
    expected = scipy.stats.pearsonr(
        [np.mean(leep[key]) for key in distinct], [np.mean(accuracy[key]) for key in distinct]
    )
    got = entry.correlations["leep"]["retrain_head"]
    assert got.n_tasks == len(distinct)
    assert got.pearson_r == pytest.approx(expected.statistic, rel=1e-12)
    # In the small regimes, the same class set is another sample: not merged.
    small = [
        task_row(i, (0, 1), r.scores, r.accuracy, regime="small_balanced")
        for i, r in enumerate(rows[:4])
    ]
    assert statistics.regime_summary(small).n_tasks == 4


def test_undefined_scores_are_left_out_of_their_statistics():
    rows = random_tasks(np.random.default_rng(6), 10)
    rows = [
        task_row(
            r.task_index, r.classes, r.scores | {"nleep": None} if i < 3 else r.scores, r.accuracy
        )
        for i, r in enumerate(rows)
    ] + [task_row(10 + i, (i, 9), dict.fromkeys(SCORE_NAMES), rows[0].accuracy) for i in range(2)]
    entry = statistics.regime_summary(rows)
    assert entry.correlations["nleep"]["fine_tune"].n_tasks == 7
    assert entry.correlations["leep"]["fine_tune"].n_tasks == 10
    assert entry.correlations["class_count"]["fine_tune"].n_tasks == 12
    json.dumps(jsonable(entry), allow_nan=False)


def test_summarize_is_json_and_handles_pairs_and_regimes_without_rows():
    rows = random_tasks(np.random.default_rng(7), 8)
    summary = statistics.summarize(rows, [PAIR, "fashion_mnist->digits"], [LARGE, "small_noisy"])
    stored = json.loads(json.dumps(jsonable(summary), allow_nan=False))
    assert stored["fashion_mnist->digits"]["small_noisy"]["n_tasks"] == 0
    cell = stored[PAIR][LARGE]["correlations"]["leep"]["fine_tune"]
    assert set(cell) == {"n_tasks", "pearson_r", "p_value", "partial_r", "partial_p"}
    assert set(stored[PAIR][LARGE]["correlations"]) == {*SCORE_NAMES, "class_count"}
    rq2 = statistics.convergence(rows, [PAIR, "fashion_mnist->digits"], [LARGE])
    assert rq2["fashion_mnist->digits"][LARGE]["epochs"] == 0
    got = rq2[PAIR][LARGE]["gain"]["leep"][0]
    expected = scipy.stats.pearsonr(
        [r.scores["leep"] for r in rows],
        [r.curves["fine_tune"][0] - r.curves["train_from_scratch"][0] for r in rows],
    )
    assert got.pearson_r == pytest.approx(expected.statistic, rel=1e-12)


# ------------------------------------------------------------------------- RQ4

MODELS = ("m-a", "m-b", "m-c", "m-d", "m-e")
ZOO = {
    m: {"source_test_accuracy": 0.6 + 0.05 * i, "num_params": 1000 * (5 - i), "spec": {}}
    for i, m in enumerate(MODELS)
}


def rq4_rows(rng, tasks, *, target="digits", models=MODELS) -> list[Rq4Row]:
    rows = []
    for t in range(tasks):
        for m in models:
            quality = rng.normal()
            accuracy = {
                "fine_tune": float(0.7 + 0.05 * quality + 0.03 * rng.normal()),
                "retrain_head": float(0.6 + 0.05 * quality + 0.05 * rng.normal()),
            }
            rows.append(
                Rq4Row(
                    id=f"rq4|{target}|{t:03d}|{m}",
                    target=target,
                    task_index=t,
                    model=m,
                    classes=(0, 1, 2),
                    num_classes=3,
                    n_train=60,
                    n_test=30,
                    scores={s: float(quality + rng.normal()) for s in SCORE_NAMES},
                    knn_accuracy=float(0.5 + 0.05 * quality + 0.05 * rng.normal()),
                    accuracy=accuracy,
                    at_chance={"fine_tune": False, "retrain_head": t == 0 and m == "m-a"},
                    timings={},
                    session=0,
                )
            )
    return rows


def test_selection_per_task_matches_scipy_and_the_zoo_baselines():
    rng = np.random.default_rng(8)
    rows = rq4_rows(rng, 6) + rq4_rows(rng, 3, target="fashion_mnist[5-9]")
    rows = [
        r for r in rows if not (r.target == "digits" and r.task_index == 5 and r.model == "m-c")
    ]
    got = selection.selection(rows, ZOO, seed=0)
    assert got.models == list(MODELS) and got.incomplete_tasks == 1
    assert len(got.per_task) == 8 and got.n_rows == len(rows)
    assert got.at_chance == {"fine_tune": 0, "retrain_head": 2}
    for entry in got.per_task:
        by_model = {
            r.model: r
            for r in rows
            if (r.target, r.task_index) == (entry["target"], entry["task_index"])
        }
        for method, value in (
            ("nce", lambda r: r.scores["nce"]),
            ("knn_accuracy", lambda r: r.knn_accuracy),
            ("num_params", lambda r: ZOO[r.model]["num_params"]),
            ("source_test_accuracy", lambda r: ZOO[r.model]["source_test_accuracy"]),
        ):
            for truth in ("fine_tune", "retrain_head"):
                x = [value(by_model[m]) for m in MODELS]
                y = [by_model[m].accuracy[truth] for m in MODELS]
                pick = entry["methods"][method][truth]
                assert pick.weighted_tau == pytest.approx(
                    scipy.stats.weightedtau(x, y).statistic, rel=1e-12
                )
                picked = MODELS[int(np.argmax(x))]
                assert pick.picked == picked
                assert pick.tied == 1
                assert pick.top1 == float(by_model[picked].accuracy[truth] == max(y))
                assert pick.relative_accuracy == pytest.approx(
                    by_model[picked].accuracy[truth] / max(y)
                )
    taus = [e["methods"]["leep"]["fine_tune"].weighted_tau for e in got.per_task]
    agg = got.all["leep"]["fine_tune"]
    assert agg.n_tasks == 8 and agg.weighted_tau.mean == pytest.approx(np.mean(taus))
    digits = [e["methods"]["sfda"]["retrain_head"] for e in got.per_task if e["target"] == "digits"]
    assert got.targets["digits"]["sfda"]["retrain_head"].top1.mean == pytest.approx(
        np.mean([p.top1 for p in digits])
    )
    json.dumps(jsonable(got), allow_nan=False)


def test_selection_leaves_out_methods_with_an_undefined_value():
    rows = rq4_rows(np.random.default_rng(9), 3)
    rows = [
        r
        if (r.task_index, r.model) != (1, "m-b")
        else Rq4Row(**{**r.__dict__, "scores": r.scores | {"parc": None}})
        for r in rows
    ]
    zoo = {m: {k: v for k, v in info.items() if k != "num_params"} for m, info in ZOO.items()}
    got = selection.selection(rows, zoo)
    assert got.all["parc"]["fine_tune"].n_tasks == 2
    assert got.all["num_params"]["fine_tune"].n_tasks == 0
    assert got.all["num_params"]["fine_tune"].weighted_tau.mean is None
    assert "parc" not in {m for m, v in got.per_task[1]["methods"].items() if v}
    assert got.leep_vs["fine_tune"]["parc"].n_tasks == 2


def test_tied_top_scores_count_as_a_random_pick_among_them():
    rows = rq4_rows(np.random.default_rng(15), 2)
    zoo = {m: dict(info, num_params=1000) for m, info in ZOO.items()}  # every model ties
    got = selection.selection(rows, zoo)
    for entry in got.per_task:
        pick = entry["methods"]["num_params"]["fine_tune"]
        accuracy = np.array(list(entry["accuracy"]["fine_tune"].values()))
        assert pick.tied == len(MODELS)
        assert pick.top1 == pytest.approx(np.mean(accuracy == accuracy.max()))
        assert pick.relative_accuracy == pytest.approx(accuracy.mean() / accuracy.max())
        assert pick.weighted_tau is None  # all tied: undefined


def test_selection_without_rows():
    got = selection.selection([], {})
    assert got.per_task == [] and got.models == [] and got.all["leep"]["fine_tune"].n_tasks == 0
    json.dumps(jsonable(got), allow_nan=False)


def test_paired_test_of_leep_matches_scipy_wilcoxon():
    rows = rq4_rows(np.random.default_rng(10), 12)
    got = selection.selection(rows, ZOO, seed=3)
    for truth in ("fine_tune", "retrain_head"):
        leep = np.array([e["methods"]["leep"][truth].weighted_tau for e in got.per_task])
        other = np.array([e["methods"]["logme"][truth].weighted_tau for e in got.per_task])
        test = got.leep_vs[truth]["logme"]
        d = leep - other
        ties = np.unique(np.abs(d)).size < d.size or np.any(d == 0)
        expected = scipy.stats.wilcoxon(d, method="asymptotic" if ties else "exact")
        assert test.n_tasks == 12
        assert test.wilcoxon_statistic == pytest.approx(expected.statistic)
        assert test.wilcoxon_p == pytest.approx(expected.pvalue, rel=1e-9)
        assert test.difference.mean == pytest.approx(np.mean(leep - other), rel=1e-12)
        assert test.difference.low <= test.difference.mean <= test.difference.high


@pytest.mark.parametrize("n", [2, 7, 40])
def test_bootstrap_interval_holds_the_mean_and_is_seeded(n):
    values = np.random.default_rng(n).normal(size=n)
    first = selection.bootstrap_mean(values, seed=11)
    assert first == selection.bootstrap_mean(values, seed=11)  # deterministic
    if n > 2:  # two values: the interval is always their range
        assert first != selection.bootstrap_mean(values, seed=12)
    assert first.n == n and first.mean == pytest.approx(values.mean(), rel=1e-12)
    assert first.low <= first.mean <= first.high
    if n == 40:  # close to the normal interval for a mean of 40 values
        half = 1.96 * values.std(ddof=1) / math.sqrt(n)
        assert (first.high - first.low) / 2 == pytest.approx(half, rel=0.15)
    constant = selection.bootstrap_mean([0.5] * n)
    assert constant.low == constant.mean == constant.high == 0.5


# ---------------------------------------------------------------- the report


def partial_results() -> Results:
    """A partial run: one pair with large tasks (one repeated) and a few small ones, a
    second pair without rows, RQ4 with an incomplete last task and an undefined score."""
    rng = np.random.default_rng(12)
    tasks = random_tasks(rng, 9)
    tasks.append(task_row(9, tasks[2].classes, tasks[2].scores, dict.fromkeys(METHODS, 0.4)))
    small = random_tasks(rng, 1, regime="small_noisy")  # no figure for one task
    small[0] = task_row(0, small[0].classes, small[0].scores | {"nleep": None}, small[0].accuracy,
                        regime="small_noisy", at_chance={"retrain_head": True})  # fmt: skip
    rows = rq4_rows(rng, 4)[:-2]
    config = {
        "mode": "custom",
        "seed": 0,
        "pairs": [PAIR, "fashion_mnist_rot4->digits"],
        "architecture": "resnet20",
        "model_kwargs": {},
        "tasks_per_regime": {LARGE: 20, "small_noisy": 5, "small_imbalanced": 5},
        "epochs": {LARGE: 2, "small_noisy": 2, "small_imbalanced": 2},
        "protocol_version": 2,
    }
    return Results(
        config=config,
        duration_s=12.0,
        zoo=ZOO,
        lr_selection={PAIR: {"fine_tune": _lr_search((0.01, 0.05), [[0.8, 0.7], [0.9, 0.95]])}},
        tasks=tasks + small,
        rq4_rows=rows,
    )


def _lr_search(grid, accuracy):
    """A finished learning-rate search as the runner records it."""
    entry = learning_rates.new_entry(grid, len(accuracy[0]))
    for r, runs in enumerate(accuracy):
        for t, value in enumerate(runs):
            learning_rates.record_run(entry, r, t, value)
    return entry


def test_report_of_a_partial_run_is_byte_stable_and_quotes_the_statistics(tmp_path):
    results = partial_results()
    write_json_atomic(tmp_path / "results.json", results.to_json())
    first = write_report(read_results(tmp_path), tmp_path).read_text()
    again = tmp_path / "again"
    again.mkdir()
    second = write_report(results, again)  # the run's own rows, as in memory
    assert second.read_text() == first
    assert "INCOMPLETE" in first and "CNAPs" in first
    chosen = f"| `{PAIR}` | fine_tune | 0.01: 0.750, 0.05: 0.925 | 0.05 |"
    assert chosen in first  # the learning-rate search: mean validation accuracy, choice
    assert "Pairs without rows yet: `fashion_mnist_rot4->digits`." in first
    summary = statistics.summarize(results.tasks, [PAIR], [LARGE, "small_noisy"])
    entry = summary[PAIR][LARGE]
    leep = entry.correlations["leep"]["fine_tune"]
    assert tables.r_text(leep.partial_r, leep.partial_p) in first
    assert f"{entry.n_tasks} ({entry.n_rows} rows)" in first  # the repeated task, merged
    rq4 = selection.selection(results.rq4_rows, results.zoo)
    assert rq4.incomplete_tasks == 1 and len(rq4.per_task) == 3
    assert tables.estimate_text(rq4.all["leep"]["fine_tune"].weighted_tau) in first
    assert "| RQ4 | all targets | 18 | 1 | 0 | – |" in first  # one head re-training at chance
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == sorted(p.name for p in again.glob("*.png"))
    assert (
        "rq4_picks.png" in pngs
        and f"scatter_fashion-mnist-0-4-fashion-mnist-5-9_{LARGE}.png" in pngs
    )
    for path in tmp_path.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_runner_refresh_stores_json_summaries(tmp_path):
    from leep_jax.experiments.config import ExperimentConfig
    from leep_jax.experiments.runner import _refresh

    results = partial_results()
    config = ExperimentConfig(
        pairs=(PAIR, "fashion_mnist->digits"),
        tasks_per_regime={LARGE: 20, "small_noisy": 5},
    )
    _refresh(results, config)
    write_json_atomic(tmp_path / "results.json", results.to_json())  # no NaN allowed
    stored = json.loads((tmp_path / "results.json").read_text())
    assert stored["summary"]["fashion_mnist->digits"][LARGE]["n_tasks"] == 0
    assert stored["summary"][PAIR][LARGE]["n_rows"] == 10
    assert stored["rq4"]["summary"]["incomplete_tasks"] == 1
    leep = stored["rq4"]["summary"]["all"]["leep"]["fine_tune"]["weighted_tau"]
    expected = selection.selection(results.rq4_rows, results.zoo).all["leep"]["fine_tune"]
    assert leep == expected.weighted_tau.to_json()
    assert read_results(tmp_path).tasks == results.tasks


def test_report_without_any_row(tmp_path):
    results = partial_results()
    results.tasks, results.rq4_rows, results.zoo, results.lr_selection = [], [], {}, {}
    text = write_report(results, tmp_path).read_text()
    assert "No complete RQ4 task yet" in text and "No tasks yet." in text
    assert not list(tmp_path.glob("*.png"))


def test_scatter_panels_state_n_r_p_and_partial_r_and_colour_by_class_count():
    from leep_jax.experiments import figures

    plt = figures._pyplot()
    points = statistics.distinct_tasks(random_tasks(np.random.default_rng(14), 12))
    fig = figures._scatter_figure(plt, points, "test")
    try:
        column = statistics.CORRELATED_SCORES.index("leep")
        ax = fig.axes[
            statistics.CORRELATED_METHODS.index("fine_tune") * len(statistics.CORRELATED_SCORES)
            + column
        ]
        x = [p.scores["leep"] for p in points]
        y = [p.accuracy["fine_tune"] for p in points]
        stats = statistics.correlation(x, y, [p.num_classes for p in points])
        title = ax.get_title()
        assert f"n={len(points)} r={stats.pearson_r:+.2f} p={stats.p_value:.2g}" in title
        assert f"partial r={stats.partial_r:+.2f}" in title
        colours = ax.collections[0].get_array()
        np.testing.assert_array_equal(colours, [p.num_classes for p in points])
    finally:
        plt.close(fig)
