"""`leep-jax experiment --quick`, run as a user runs it: a fresh cache, real data, a subprocess.

The smoke test of the paper's protocol on real FashionMNIST and digits (a few minutes
on two cores, its own file so that pytest-xdist runs it beside the
rest). Its correlations rest on a dozen tasks: the test checks that every part of the
output is there and consistent, not what the numbers are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from leep_jax.experiments.config import REGIMES, ExperimentConfig
from leep_jax.experiments.pairs import parse_slice
from leep_jax.experiments.pools import rq4_task_count, task_count
from leep_jax.scores.names import SCORE_NAMES


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("quick")
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one device, as users
    env["LEEP_JAX_CACHE"] = str(root / "cache")  # trains every model, as on a fresh machine
    command = [sys.executable, "-m", "leep_jax.cli", "experiment", "--quick", "--out"]
    first = subprocess.run(
        [*command, str(root / "out")], env=env, capture_output=True, text=True, timeout=1800
    )
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((root / "out" / "results.json").read_text())
    # As written by an older version, which could lose a zoo model's parameter count:
    # the resume below records it again.
    stale = json.loads(json.dumps(results))
    del stale["zoo"][next(iter(stale["zoo"]))]["num_params"]
    (root / "out" / "results.json").write_text(json.dumps(stale))
    again = subprocess.run(
        [*command, str(root / "out")], env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stderr[-3000:]
    resumed = json.loads((root / "out" / "results.json").read_text())
    return root / "out", first, results, resumed


@pytest.mark.slow
def test_quick_run_is_complete(quick_run):
    out, first, results, _ = quick_run
    config = ExperimentConfig.quick()
    assert results["complete"] is True and results["config"] == config.to_dict()
    assert results["config"]["mode"] == "quick" and results["duration_s"] > 0
    counts = {
        (str(pair), regime): task_count(pair.target, n, config.max_classes)
        for pair in config.parsed_pairs
        for regime, n in config.tasks_per_regime.items()
    }
    assert len(results["tasks"]) == sum(counts.values())
    rq4_tasks = sum(rq4_task_count(parse_slice(t), config) for t in config.rq4_targets)
    assert len(results["rq4"]["rows"]) == len(config.zoo) * rq4_tasks
    for row in results["tasks"]:
        assert row["pair"] in config.pairs and row["regime"] in REGIMES
        assert set(row["scores"]) == set(SCORE_NAMES)
        assert all(value is not None for value in row["scores"].values()), row["id"]
        assert (
            set(row["accuracy"])
            == set(row["at_chance"])
            == {
                "retrain_head",
                "fine_tune",
                "scratch",
            }
        )
        assert all(0.0 <= a <= 1.0 for a in row["accuracy"].values())
        assert row["scores"]["leep"] <= 0.0 and row["scores"]["nce"] <= 0.0
        assert row["steps"]["fine_tune"] == row["steps"]["scratch"] == config.train_steps
    for row in results["rq4"]["rows"]:
        assert set(row["scores"]) == set(SCORE_NAMES) and 0.0 <= row["knn_accuracy"] <= 1.0
    # Learning rates were chosen for every pair and for RQ4.
    assert set(results["lr_selection"]) == {*config.pairs, "rq4"}
    for entries in results["lr_selection"].values():
        assert all(entry["chosen"] in config.lr_grid for entry in entries.values())
    for pair in config.pairs:
        for regime in config.tasks_per_regime:
            count = counts[(pair, regime)]
            summary = results["summary"][pair][regime]
            assert summary["n_rows"] == summary["n_tasks"] == count  # distinct tasks
            for metric in SCORE_NAMES:
                for method in ("retrain_head", "fine_tune"):
                    cell = summary["correlations"][metric][method]
                    assert cell["n_tasks"] == summary["n_tasks"] <= count
    assert "wrote" in first.stdout


@pytest.mark.slow
def test_quick_run_writes_report_and_figures(quick_run):
    out, *_ = quick_run
    report = (out / "report.md").read_text()
    for heading in ("LEEP", "NCE", "H-score", "RQ2", "RQ4"):
        assert heading in report
    figures = sorted(p.name for p in out.glob("*.png"))
    assert any(name.startswith("scatter_") for name in figures)
    assert any(name.startswith("curves_") for name in figures)
    assert any(name.startswith("rq4_") for name in figures)


@pytest.mark.slow
def test_rerun_with_the_same_out_resumes_with_nothing_to_do(quick_run):
    _, _, results, resumed = quick_run
    assert resumed["tasks"] == results["tasks"]
    assert resumed["rq4"]["rows"] == results["rq4"]["rows"]
    assert len(resumed["sessions"]) == len(results["sessions"]) + 1
    assert resumed["sessions"][-1]["new_tasks"] == 0
    assert resumed["zoo"] == results["zoo"]
    assert all(info["num_params"] > 0 for info in resumed["zoo"].values())
