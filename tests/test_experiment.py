"""The paper-experiment runner (`leep-jax experiment`): schema, statistics, resume, report.

One tiny configuration (small CNNs of width 4, FashionMNIST and digits, a handful of
tasks with 2 classes each, a few SGD steps, two learning rates on one validation task)
stands in for ``--quick``; every model is trained from scratch into a temporary cache
dir. Two independent runs are made: A in one go, B interrupted twice and resumed,
each with its own cache (so B also retrains its source models). They must agree
exactly: that is the determinism check.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

import leep_jax
from leep_jax.cli.main import main
from leep_jax.experiments import figures, pools, selection, tables
from leep_jax.experiments.config import REGIMES, ExperimentConfig, source_spec
from leep_jax.experiments.measure import task_scores
from leep_jax.experiments.pairs import parse_pair, parse_slice
from leep_jax.experiments.results import ConfigMismatchError, read_results
from leep_jax.experiments.runner import _round_robin, run_experiment
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.streaming.engine import nleep_key
from leep_jax.transfer.zoo import SourceSpec

PAIRS = ("fashion_mnist[0-2]->fashion_mnist[3-5]", "fashion_mnist[0-2]->digits[0-2]")
TASKS = {"large_balanced": 3, "small_balanced": 3, "small_imbalanced": 2, "small_noisy": 2}


def tiny_config(**changes) -> ExperimentConfig:
    # Every model has 3 source classes and every task 2 classes, so a handful of
    # programs is compiled once and shared by all runs in this process.
    zoo = tuple(
        SourceSpec(
            f"test-cnn4-{name}",
            "small_cnn",
            classes,
            {"width": 4},
            train_examples=96,
            test_examples=48,
            epochs=1,
            batch_size=32,
            seed=seed,
        )
        for name, classes, seed in (("a", (0, 1, 2), 1), ("b", (6, 7, 8), 2), ("c", (3, 4, 5), 3))
    )
    config = ExperimentConfig(
        mode="test",
        seed=0,
        pairs=PAIRS,
        architecture="small_cnn",
        model_kwargs={"width": 4},
        source_train_examples=192,
        source_epochs=1,
        source_batch_size=32,
        source_test_examples=64,
        tasks_per_regime=TASKS,
        max_classes=2,
        large_per_class=16,
        test_per_class=10,
        small_per_class=8,
        imbalance_ratio=2.0,
        noise_rate=0.25,
        train_steps=8,
        eval_every=4,
        batch_size=16,
        lr_grid=(0.01, 0.05),
        validation_tasks=1,
        head_epochs=3,
        eval_batch_size=64,
        zoo=zoo,
        rq4_targets=("fashion_mnist[3-5]", "digits[0-2]"),
        rq4_tasks=2,
        rq4_num_classes=2,
        rq4_train_steps=4,
    )
    return dataclasses.replace(config, **changes)


NUM_TASKS = len(PAIRS) * sum(TASKS.values())
NUM_RQ4 = 2 * 3 * 2  # targets x models x tasks


class Interrupted(KeyboardInterrupt):
    pass


@pytest.fixture(scope="module")
def run_a(tmp_path_factory):
    """An uninterrupted run with its own cache."""
    root = tmp_path_factory.mktemp("run_a")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEEP_JAX_CACHE", str(root / "cache"))
        results = run_experiment(tiny_config(), root / "out", progress=False)
    return root / "out", results.to_json()


@pytest.fixture(scope="module")
def run_b(tmp_path_factory):
    """The same configuration in a fresh cache, interrupted twice, then resumed, with two
    rows computed side by side (``workers=2``): the values must not depend on it."""
    root = tmp_path_factory.mktemp("run_b")
    out = root / "out"
    calls: list[list[str]] = [[], [], []]

    def interrupt_after(k, seen):
        def on_task(row):
            seen.append(row.id)
            if len(seen) == k:
                raise Interrupted

        return on_task

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LEEP_JAX_CACHE", str(root / "cache"))
        with pytest.raises(Interrupted):  # like Ctrl-C after 4 tasks
            run_experiment(
                tiny_config(),
                out,
                progress=False,
                on_task=interrupt_after(4, calls[0]),
                workers=2,
            )
        after_interrupt = json.loads((out / "results.json").read_text())
        after_interrupt["report.md"] = (out / "report.md").read_text()
        partial = run_experiment(
            tiny_config(),
            out,
            progress=False,
            max_new_tasks=20,
            on_task=lambda row: calls[1].append(row.id),
            workers=2,
        )
        final = run_experiment(
            tiny_config(),
            out,
            progress=False,
            on_task=lambda row: calls[2].append(row.id),
            write_report=False,
            workers=2,
        )
    return out, after_interrupt, partial.to_json(), final.to_json(), calls


def comparable(row):
    """A row without what legitimately differs between runs (timings, session)."""
    return {k: v for k, v in row.items() if k not in ("timings", "session")}


# ---------------------------------------------------------------------------- pairs


@pytest.mark.parametrize(
    "text, expected",
    [
        ("fashion_mnist[0-4]->fashion_mnist[5-9]", "fashion_mnist[0-4]->fashion_mnist[5-9]"),
        ("fashion_mnist[0,1,2,3,4]:fashion_mnist[5-9]", "fashion_mnist[0-4]->fashion_mnist[5-9]"),
        ("fashion_mnist->digits", "fashion_mnist->digits"),
        ("fashion_mnist:digits[9,0-2]", "fashion_mnist->digits[0-2,9]"),
        ("tfds:cifar10:tfds:cifar100", "tfds:cifar10->tfds:cifar100"),
        ("tfds:cifar10->tfds:cifar100[0-49]", "tfds:cifar10->tfds:cifar100[0-49]"),
    ],
)
def test_parse_pair(text, expected):
    pair = parse_pair(text)
    assert str(pair) == expected
    assert parse_pair(str(pair)) == pair


def test_round_robin_takes_one_item_from_each_stream_in_turn():
    streams = iter([1, 2, 3]), iter([]), iter("ab")
    assert list(_round_robin(*streams)) == [1, "a", 2, "b", 3]


def test_parse_pair_routes_tfds_names():
    pair = parse_pair("tfds:cifar10:tfds:cifar100")
    assert (pair.source.dataset, pair.target.dataset) == ("tfds:cifar10", "tfds:cifar100")
    assert pair.source.classes is None and pair.target.classes is None


@pytest.mark.parametrize(
    "text",
    [
        "",
        "fashion_mnist",
        "mnist->digits",
        "fashion_mnist[0-12]->digits",
        "fashion_mnist[3]->digits",
        "fashion_mnist[4-2]->digits",
        "fashion_mnist[0,0,1]->digits",
        "fashion_mnist[a]->digits",
        "a->b->c",
        "fashion_mnist:digits:digits",
        "tfds:->digits",
    ],
)
def test_parse_pair_rejects(text):
    with pytest.raises(ValueError, match="pair"):
        parse_pair(text)


@pytest.mark.parametrize("bad", ["nonsense", "fashion_mnist[0-12]->digits", "mnist->digits"])
def test_cli_bad_pair_exits_2_with_one_line(bad, tmp_path, capsys):
    status = main(["experiment", "--quick", "--pair", bad, "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "pair" in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flag", ["--workers", "--max-tasks"])
def test_cli_refuses_counts_below_one(flag, tmp_path, capsys):
    status = main(["experiment", "--quick", flag, "0", "--out", str(tmp_path / "out")])
    captured = capsys.readouterr()
    assert status == 2 and captured.out == ""
    assert captured.err.strip().splitlines() == [f"leep-jax: error: {flag} must be >= 1, got 0"]
    assert not (tmp_path / "out").exists()


def test_tfds_pair_routes_to_the_tfds_loader(tmp_path, monkeypatch, capsys):
    # No TFDS data here: the run must reach TFDS's loader and report that, in one line.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    status = main(
        ["experiment", "--quick", "--pair", "tfds:cifar10:tfds:cifar100", "--out",
         str(tmp_path / "out"), "--no-progress"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert "cifar100" in err and "prepared" in err.lower()


@pytest.mark.slow  # TensorFlow import and 3-channel compilations: ~30 s of CPU
def test_tfds_pair_runs_end_to_end_on_tfds_mock_data(tmp_path, monkeypatch):
    # CIFAR10 -> CIFAR100 through the same code path, on TFDS's random mock data.
    from leep_jax.data import tfds as adapter

    tfds = adapter.import_tfds()
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    pair = "tfds:cifar10[0-2]->tfds:cifar100[0-2]"
    config = tiny_config(pairs=(pair,), zoo=(), tasks_per_regime={"large_balanced": 3})
    with tfds.testing.mock_data(num_examples=300):
        results = run_experiment(
            config, tmp_path / "out", progress=False, write_report=False
        ).to_json()
    source = results["sources"][pair]
    assert source["spec"]["dataset"] == "tfds:cifar10" and source["spec"]["flip"] is True
    assert len(results["tasks"]) == 3 and results["complete"]
    assert all(t["scores"]["leep"] <= 0 for t in results["tasks"])


# ------------------------------------------------------------------------ configs


def test_quick_and_full_configs_meet_the_protocol():
    quick, full = ExperimentConfig.quick(), ExperimentConfig.full()
    for config in (quick, full):
        assert set(config.tasks_per_regime) == set(REGIMES)
        assert len(config.zoo) >= 5 and config.rq4_targets
        pairs = config.parsed_pairs
        assert any(p.source.dataset == p.target.dataset for p in pairs)  # within a domain
        assert any(p.source.dataset != p.target.dataset for p in pairs)  # across domains
        # A source with a large label space (the paper's LEEP-over-NCE setting).
        assert any(len(p.source.class_ids()) >= 40 for p in pairs)
        for p in pairs:  # within a domain, source and target classes are disjoint
            if p.source.dataset == p.target.dataset:
                assert not set(p.source.class_ids()) & set(p.target.class_ids())
    # The full run: >= 100 distinct large tasks, >= 100 SGD steps per run, >= 15 zoo
    # models ranked on >= 20 tasks.
    large = sum(
        pools.task_count(p.target, full.tasks_per_regime["large_balanced"], full.max_classes)
        for p in full.parsed_pairs
    )
    assert large >= 100
    assert min(full.train_steps, full.rq4_train_steps) >= 100
    assert len(full.zoo) >= 15 and len({s.architecture for s in full.zoo}) >= 2
    rq4 = sum(pools.rq4_task_count(parse_slice(t), full) for t in full.rq4_targets)
    assert rq4 >= 20
    assert len(full.lr_grid) >= 3 and full.test_per_class is None  # whole test split
    # The config is JSON and round-trips: resume compares exactly this.
    assert json.loads(json.dumps(full.to_dict())) == full.to_dict()


def test_tasks_of_a_pair_and_regime_never_repeat_a_class_set(run_a):
    _, results = run_a
    seen = {}
    for row in results["tasks"]:
        key = (row["pair"], row["regime"])
        seen.setdefault(key, []).append(tuple(row["classes"]))
    for key, class_sets in seen.items():
        assert len(set(class_sets)) == len(class_sets), key


def test_learning_rates_are_chosen_on_validation_runs(run_a):
    _, results = run_a
    search = results["lr_selection"]
    config = tiny_config()
    assert set(search) == {*config.pairs, "rq4"}
    for entries in search.values():
        for entry in entries.values():
            means = [float(np.mean(runs)) for runs in entry["validation_accuracy"]]
            assert entry["mean_validation_accuracy"] == pytest.approx(means)
            assert entry["chosen"] == entry["learning_rates"][int(np.argmax(means))]
    # Every row trained with its pair's chosen rates, for the configured step budget.
    for row in results["tasks"]:
        assert row["steps"]["fine_tune"] == config.train_steps
        assert row["steps"]["scratch"] == config.train_steps
        assert len(row["curves"]["fine_tune"]) == config.train_steps // config.eval_every


@pytest.mark.parametrize("pad_to, compile_classes", [(None, None), (100, 3), (37, 7), (64, 10)])
def test_task_scores_padding_and_absent_classes_are_exact(pad_to, compile_classes):
    # The experiment pads every task to its pool's size and scores it with the pool's
    # class count (one compilation per pool): that must not change any score.
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(37, 5)).astype(np.float32)
    features = rng.normal(size=(37, 8)).astype(np.float32)
    labels = rng.integers(0, 3, size=37).astype(np.int32)
    got = task_scores(logits, features, labels, 3, pad_to=pad_to, compile_classes=compile_classes)
    assert set(got) == set(SCORE_NAMES)
    for name in SCORE_NAMES:
        score = getattr(leep_jax, name)
        if name in ("leep", "nce"):
            expected = score(logits, labels, 3, from_logits=True)
        elif name == "nleep":
            expected = score(features, labels, 3, key=nleep_key())
        else:
            expected = score(features, labels, 3)
        np.testing.assert_allclose(got[name], expected, rtol=2e-5, atol=1e-6, err_msg=name)


def test_task_scores_rejects_too_few_rows():
    with pytest.raises(ValueError, match="pad_to"):
        task_scores(np.zeros((5, 2)), np.zeros((5, 3)), np.zeros(5, np.int32), 2, pad_to=4)
    with pytest.raises(ValueError, match="compile_classes"):
        task_scores(np.zeros((5, 2)), np.zeros((5, 3)), np.zeros(5, np.int32), 3, compile_classes=2)


# --------------------------------------------------------------------------- a run

TASK_KEYS = {
    "id", "pair", "regime", "num_classes", "n_train", "n_test", "scores", "accuracy",
    "curves", "steps", "at_chance", "timings",
}  # fmt: skip


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_results_schema(run_a):
    out, results = run_a
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk == json.loads(json.dumps(results))
    assert on_disk["config"] == tiny_config().to_dict()
    assert on_disk["duration_s"] > 0 and on_disk["complete"] is True
    assert len(on_disk["tasks"]) == NUM_TASKS
    assert len({t["id"] for t in on_disk["tasks"]}) == NUM_TASKS
    for task in on_disk["tasks"]:
        assert TASK_KEYS <= set(task)
        assert task["pair"] in PAIRS and task["regime"] in REGIMES
        assert task["num_classes"] == 2 and task["n_train"] >= 2
        assert set(task["scores"]) == set(SCORE_NAMES)
        assert set(task["accuracy"]) == {"retrain_head", "fine_tune", "scratch"}
        assert set(task["at_chance"]) == set(task["accuracy"])
        assert all(0.0 <= a <= 1.0 for a in task["accuracy"].values())
        assert task["scores"]["leep"] <= 0.0 and task["scores"]["nce"] <= 0.0
        assert len(task["curves"]["fine_tune"]) == len(task["curves"]["scratch"]) == 2
        assert task["curves"]["fine_tune"][-1] == task["accuracy"]["fine_tune"]
        assert task["steps"]["fine_tune"] == task["steps"]["scratch"]  # equal steps (RQ2)
        assert {"scores_s", "retrain_head_s", "fine_tune_s", "scratch_s"} <= set(task["timings"])
    noisy = [t for t in on_disk["tasks"] if t["regime"] == "small_noisy"]
    assert all(t["num_noisy_labels"] == round(0.25 * t["n_train"]) for t in noisy)
    imbalanced = [t for t in on_disk["tasks"] if t["regime"] == "small_imbalanced"]
    assert all(max(t["class_counts"]) == 2 * min(t["class_counts"]) for t in imbalanced)
    for pair in PAIRS:
        assert "source_test_accuracy" in on_disk["sources"][pair]
        for regime in TASKS:
            rows = [t for t in on_disk["tasks"] if (t["pair"], t["regime"]) == (pair, regime)]
            distinct = len({tuple(sorted(t["classes"])) for t in rows})  # one class set, one task
            summary = on_disk["summary"][pair][regime]
            assert summary["n_rows"] == TASKS[regime]
            assert summary["n_tasks"] == (distinct if regime == "large_balanced" else len(rows))
            for metric in ("leep", "nce", "h_score", "class_count"):
                for method in ("retrain_head", "fine_tune"):
                    entry = summary["correlations"][metric][method]
                    assert set(entry) == {
                        "pearson_r",
                        "p_value",
                        "partial_r",
                        "partial_p",
                        "n_tasks",
                    }
                    assert entry["n_tasks"] == summary["n_tasks"]
            rq2 = on_disk["rq2"][pair][regime]
            assert rq2["epochs"] == 2
            assert len(rq2["fine_tune"]["leep"]) == len(rq2["gain"]["leep"]) == 2
    rq4 = on_disk["rq4"]
    assert len(rq4["rows"]) == NUM_RQ4
    assert len(rq4["summary"]["per_task"]) == NUM_RQ4 // 3
    assert set(rq4["summary"]["models"]) == {"test-cnn4-a", "test-cnn4-b", "test-cnn4-c"}
    for metric in ("leep", "nce", "h_score", "knn_accuracy", "source_test_accuracy"):
        entry = rq4["summary"]["all"][metric]["fine_tune"]
        assert {"weighted_tau", "top1", "relative_accuracy", "regret"} <= set(entry)
        assert entry["n_tasks"] == NUM_RQ4 // 3


def _same(value, expected):
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return value is None
    return value is not None and math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_summary_matches_scipy_on_the_task_rows(run_a):
    out, _ = run_a
    results = json.loads((out / "results.json").read_text())
    checked = 0
    for pair in PAIRS:
        for regime in set(TASKS) - {"large_balanced"}:  # every row its own task
            rows = [t for t in results["tasks"] if t["pair"] == pair and t["regime"] == regime]
            for metric in ("leep", "nce", "h_score"):
                for method in ("retrain_head", "fine_tune"):
                    x = [t["scores"][metric] for t in rows]
                    y = [t["accuracy"][method] for t in rows]
                    entry = results["summary"][pair][regime]["correlations"][metric][method]
                    if np.ptp(x) == 0 or np.ptp(y) == 0:  # constant: undefined
                        assert entry["pearson_r"] is None
                        continue
                    expected = scipy.stats.pearsonr(x, y)
                    assert _same(entry["pearson_r"], expected.statistic)
                    assert _same(entry["p_value"], expected.pvalue)
                    checked += 1
    assert checked > 0


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_rq2_and_rq4_match_scipy_on_the_rows(run_a):
    out, results = run_a
    pair, regime = PAIRS[0], "small_balanced"  # every row its own task
    rows = [t for t in results["tasks"] if t["pair"] == pair and t["regime"] == regime]
    leeps = [t["scores"]["leep"] for t in rows]
    gains = [t["curves"]["fine_tune"][0] - t["curves"]["scratch"][0] for t in rows]
    entry = results["rq2"][pair][regime]["gain"]["leep"][0]
    if np.ptp(gains) > 0:
        assert _same(entry["pearson_r"], scipy.stats.pearsonr(leeps, gains).statistic)
    task = results["rq4"]["summary"]["per_task"][0]
    by_model = {
        r["model"]: r
        for r in results["rq4"]["rows"]
        if (r["target"], r["task_index"]) == (task["target"], task["task_index"])
    }
    models = results["rq4"]["summary"]["models"]
    scores = [by_model[m]["scores"]["leep"] for m in models]
    accuracy = [by_model[m]["accuracy"]["fine_tune"] for m in models]
    got = task["methods"]["leep"]["fine_tune"]
    assert _same(got["weighted_tau"], scipy.stats.weightedtau(scores, accuracy).statistic)
    assert _same(got["kendall_tau"], scipy.stats.kendalltau(scores, accuracy).statistic)
    assert got["picked"] == models[int(np.argmax(scores))]


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_report_and_figures_written(run_a):
    out, results = run_a
    text = (out / "report.md").read_text()
    for needle in ("LEEP", "NCE", "H-score", "RQ2", "RQ4", "paper", "duration", PAIRS[0]):
        assert needle in text
    # The summary at the top quotes the stored statistics.
    glance = text.split("## At a glance", 1)[1].split("## What the data support", 1)[0]
    for pair in PAIRS:
        leep = results["summary"][pair]["large_balanced"]["correlations"]["leep"]["fine_tune"]
        quoted = f"LEEP r {tables.r_text(leep['pearson_r'], leep['p_value'])}"
        assert f"RQ1, `{pair}`" in glance and quoted in glance
    weighted = results["rq4"]["summary"]["all"]["leep"]["fine_tune"]["weighted_tau"]
    assert f"LEEP {tables.estimate_text(selection.Estimate(**weighted))}" in glance
    pngs = sorted(p.name for p in out.glob("*.png"))
    for pair in PAIRS:
        for regime in TASKS:
            slug = f"{figures.slug(pair)}_{regime}.png"
            assert f"scatter_{slug}" in pngs and f"curves_{slug}" in pngs
    for path in out.glob("*.png"):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_interrupted_run_resumes_without_recomputing(run_b):
    out, after_interrupt, partial, final, calls = run_b
    # Interrupted after 4 tasks: all 4 were on disk, taken from both pairs in turn.
    assert [t["id"] for t in after_interrupt["tasks"] + after_interrupt["rq4"]["rows"]] == [
        i for i in calls[0] if not i.startswith("rq4|")
    ] + [i for i in calls[0] if i.startswith("rq4|")]
    assert {t["pair"] for t in after_interrupt["tasks"]} == set(PAIRS)
    assert after_interrupt["complete"] is False
    assert "INCOMPLETE" in after_interrupt["report.md"]  # Ctrl-C writes a report too
    # The limited rerun did 20 more; the last one the rest; nothing twice.
    assert len(calls[1]) == 20 and partial["complete"] is False
    assert "INCOMPLETE" in (out / "report.md").read_text()  # written by the stopped run
    everything = calls[0] + calls[1] + calls[2]
    assert len(everything) == len(set(everything)) == NUM_TASKS + NUM_RQ4
    assert final["complete"] is True
    # The first session also ran every validation run of the learning-rate search.
    num_lr_runs = sum(
        len(runs) for e in final["lr_selection"].values() for m in e.values()
        for runs in m["validation_accuracy"]
    )  # fmt: skip
    assert num_lr_runs == 2 * 2 * 2 + 2 * 2  # pairs x methods x rates + RQ4 targets x rates
    sessions = [s["new_tasks"] for s in final["sessions"]]
    assert sessions == [4 + num_lr_runs, 20, len(calls[2])]
    sessions = {t["id"]: t["session"] for t in final["tasks"] + final["rq4"]["rows"]}
    assert all(sessions[i] == 0 for i in calls[0])
    assert all(sessions[i] == 1 for i in calls[1])
    assert final["duration_s"] == pytest.approx(sum(s["duration_s"] for s in final["sessions"]))
    # Rerunning a finished experiment computes nothing.
    again = run_experiment(
        tiny_config(), out, progress=False, on_task=pytest.fail, write_report=False
    )
    assert again.complete is True


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_same_seed_same_results(run_a, run_b):
    # B ran in its own cache (source models retrained) and in three sessions.
    _, a = run_a
    _, _, _, b, _ = run_b
    by_id = {t["id"]: t for t in b["tasks"]}
    assert [comparable(t) for t in a["tasks"]] == [comparable(by_id[t["id"]]) for t in a["tasks"]]
    rows_b = {r["id"]: r for r in b["rq4"]["rows"]}
    assert [comparable(r) for r in a["rq4"]["rows"]] == [
        comparable(rows_b[r["id"]]) for r in a["rq4"]["rows"]
    ]
    assert a["summary"] == b["summary"]


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_other_seed_gives_other_tasks_and_scores(run_a, tmp_path, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    config = tiny_config(seed=1, pairs=PAIRS[:1], tasks_per_regime={"large_balanced": 3}, zoo=())
    other = run_experiment(config, tmp_path / "out", progress=False, write_report=False)
    _, a = run_a
    first = [t for t in a["tasks"] if t["pair"] == PAIRS[0] and t["regime"] == "large_balanced"]
    assert [t.scores for t in other.tasks] != [t["scores"] for t in first]


@pytest.mark.slow  # shares two tiny end-to-end runs (about a minute on 2 cores)
def test_config_mismatch_is_refused(run_a, capsys):
    out, _ = run_a
    before = (out / "results.json").read_bytes()
    with pytest.raises(ConfigMismatchError, match="seed"):
        run_experiment(tiny_config(seed=5), out, progress=False)
    status = main(["experiment", "--quick", "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2 and len(err.strip().splitlines()) == 1
    assert "another configuration" in err
    assert (out / "results.json").read_bytes() == before


def test_head_retraining_on_cached_features_matches_retrain_head(tmp_path, monkeypatch):
    # The experiment trains heads on features from one pass over the pool (the recipe of
    # `head_recipe`); that must be what `leep_jax.transfer.methods.retrain_head` gives on
    # the task itself.
    from leep_jax.experiments.config import head_recipe
    from leep_jax.transfer.methods import retrain_head, train_head
    from leep_jax.transfer.train import evaluate
    from leep_jax.transfer.zoo import train_source_model

    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    config = tiny_config()
    pair = config.parsed_pairs[0]
    model = train_source_model(source_spec(config, pair.source))
    pool = pools.load_pool(pair.target, config)
    outputs = pools.pool_outputs(model, pool, config.eval_batch_size)
    task = pools.pair_tasks(pool, str(pair), "large_balanced", config)[0]
    recipe = head_recipe(config, seed=7)
    head, _ = train_head(
        outputs.train_features[task.train_indices], task.train_labels, task.num_classes, recipe
    )
    got = evaluate(
        head,
        outputs.test_features[task.test_indices],
        task.test_labels,
        batch_size=config.eval_batch_size,
    )
    expected = retrain_head(model, task, recipe)
    assert got == pytest.approx(expected.test_accuracy, abs=1.0 / task.test_indices.size + 1e-9)


def test_committed_full_report_is_generated_from_its_results(tmp_path, capsys):
    """benchmarks/results/experiment/report.md is exactly what its results.json gives."""
    committed = Path(__file__).parent.parent / "benchmarks" / "results" / "experiment"
    text = (committed / "results.json").read_text()
    assert read_results(committed).to_json() == json.loads(text)  # typed rows round-trip
    (tmp_path / "results.json").write_text(text)
    assert main(["experiment", "--report-only", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    assert (tmp_path / "report.md").read_text() == (committed / "report.md").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(
        p.name for p in committed.glob("*.png")
    )


@pytest.mark.parametrize("content", [None, "{not json", '{"tasks": []}'])
def test_report_only_without_a_results_file_exits_2_with_one_line(tmp_path, capsys, content):
    if content is not None:
        (tmp_path / "results.json").write_text(content)
    assert main(["experiment", "--report-only", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "results.json" in err
    assert not (tmp_path / "report.md").exists()
