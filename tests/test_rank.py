"""`leep-jax rank` and `leep_jax.experiments.rank`: ranking source models for a task."""

import importlib
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from leep_jax.cli.main import main
from leep_jax.data import fashion_mnist, load_target_task, match_channels
from leep_jax.data import tfds as tfds_adapter
from leep_jax.experiments import rank
from leep_jax.models import build_model, forward
from leep_jax.scores import h_score, leep, nce
from leep_jax.scores.names import SCORE_NAMES
from leep_jax.transfer.presets import tiny_zoo
from leep_jax.transfer.zoo import load_zoo

NUM_TRAIN_PER_CLASS = 12


@pytest.fixture(scope="module")
def task():
    # Digits are bundled with scikit-learn: always available offline.
    return load_target_task(
        "digits", classes=(0, 3, 8), train_per_class=NUM_TRAIN_PER_CLASS, test_per_class=10
    )


@pytest.fixture(scope="module")
def models():
    # Untrained small CNNs of different head widths and seeds: enough to tell apart.
    return {
        f"cnn-z{z}-s{seed}": build_model(
            "small_cnn", num_classes=z, in_channels=1, width=4, rngs=nnx.Rngs(seed)
        )
        for z, seed in ((3, 0), (10, 1), (6, 2))
    }


def test_help_names_the_default_task():
    from leep_jax.cli import rank as rank_cli

    default = load_target_task("digits", num_classes=5, seed=0)
    digits = ", ".join(map(str, default.classes))
    assert f"(seed 0: the digits {digits})" in " ".join(rank_cli.__doc__.split())


def test_load_target_task_default_draw_is_seeded():
    a = load_target_task("digits", num_classes=5, train_per_class=5, seed=3)
    b = load_target_task("digits", num_classes=5, train_per_class=5, seed=3)
    assert a.num_classes == 5 and a.classes == b.classes and a.seed == 3
    np.testing.assert_array_equal(a.train_indices, b.train_indices)
    assert np.bincount(a.train_labels).tolist() == [5] * 5
    c = load_target_task("digits", num_classes=5, train_per_class=5, seed=4)
    assert not np.array_equal(a.train_indices, c.train_indices)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dataset": "nope"}, "unknown dataset"),
        ({"classes": (0, 10)}, "out of range"),
        ({"classes": (-1, 2)}, "out of range"),
        ({"classes": (4,)}, "at least 2 classes"),
        ({"classes": (4, 4)}, "distinct"),
        ({"num_classes": 1}, "num_classes"),
        ({"num_classes": 11}, "num_classes"),
        ({"train_per_class": 0}, "train_per_class"),
    ],
)
def test_load_target_task_rejects_bad_input(kwargs, message):
    kwargs = {"dataset": "digits", **kwargs}
    with pytest.raises(ValueError, match=message):
        load_target_task(kwargs.pop("dataset"), **kwargs)


def test_match_channels():
    grey = np.arange(2 * 8 * 8, dtype=np.uint8).reshape(2, 8, 8, 1)
    rgb = match_channels(grey, 3)
    assert rgb.shape == (2, 8, 8, 3) and rgb.dtype == np.uint8
    # Equal channels: the luma weights sum to 1, so grey -> RGB -> grey is the identity.
    np.testing.assert_array_equal(match_channels(rgb, 1), grey)
    assert match_channels(grey, 1) is grey


def test_rank_models_scores_and_ranks(task, models):
    # 36 images in batches of 16: the last batch is padded.
    result = rank.rank_models(models, task, batch_size=16)
    assert [row.rank for row in result.rows] == [1, 2, 3]
    assert result.metric == "leep" and result.correlations is None
    images, labels = task.train_images.astype(np.float32) / 255, task.train_labels
    for row in result.rows:
        logits, features = forward(models[row.name], images)
        assert row.num_source_classes == logits.shape[1]
        assert row.architecture == "small_cnn"
        np.testing.assert_allclose(
            row.scores["leep"], leep(logits, labels, 3, from_logits=True), rtol=1e-5
        )
        np.testing.assert_allclose(
            row.scores["nce"], nce(logits, labels, 3, from_logits=True), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(row.scores["h_score"], h_score(features, labels, 3), rtol=1e-4)
        assert row.score_time_s > 0 and row.accuracy is None
    # Rank 1 = highest LEEP, and the rows come best first.
    leeps = [row.scores["leep"] for row in result.rows]
    assert leeps == sorted(leeps, reverse=True)
    for name in rank.SCORE_NAMES:
        values = {row.name: row.scores[name] for row in result.rows}
        for row in result.rows:
            assert row.ranks[name] == 1 + sum(v > values[row.name] for v in values.values())


@pytest.mark.parametrize("strategy", ["loop", "vmap"])
def test_ranking_takes_one_forward_pass_per_model(task, models, monkeypatch, strategy):
    """Every training image goes through each model exactly once, for all three scores
    (here ranked by H-score: the metric changes the order, not the work)."""
    from leep_jax.models import zoo_scores as zoo_module
    from leep_jax.streaming import engine

    # The module, not the function of the same name that leep_jax.streaming exports.
    score_model_module = importlib.import_module("leep_jax.streaming.score_model")

    rows_seen = {}

    def counting_forward(model, images):
        logits, features = forward(model, images)
        # Runs on every execution of the compiled step, not only when tracing; the head
        # width tells the models apart.
        jax.debug.callback(
            lambda rows: rows_seen.setdefault(logits.shape[1], []).append(int(rows)),
            images.shape[0],
        )
        return logits, features

    monkeypatch.setattr(score_model_module, "module_outputs", counting_forward)
    # Compile the counting forward (cached executables would skip it), and drop it after.
    compiled = (engine.pass1_step, engine.pass2_step, zoo_module._forward_stacked)
    for step in compiled:
        step.clear_cache()
    n, batch_size = task.train_labels.shape[0], 10
    try:
        result = rank.rank_models(
            models, task, metric="h_score", batch_size=batch_size, zoo_strategy=strategy
        )
        jax.effects_barrier()
    finally:
        for step in compiled:
            step.clear_cache()
    assert len(result.rows) == len(models)
    assert set(rows_seen) == {model.num_classes for model in models.values()}
    for rows in rows_seen.values():
        # ceil(n / batch_size) calls; the ragged last batch is padded, not re-run.
        assert rows == [batch_size] * math.ceil(n / batch_size)
    h_scores = [row.scores["h_score"] for row in result.rows]
    assert h_scores == sorted(h_scores, reverse=True)
    assert [row.rank for row in result.rows] == [row.ranks["h_score"] for row in result.rows]


def test_rank_models_verify_correlations(task, models):
    result = rank.rank_models(
        models, task, verify=True, verify_method="retrain_head", verify_epochs=2
    )
    accuracies = [row.accuracy for row in result.rows]
    assert all(0.0 <= a <= 1.0 for a in accuracies)
    assert all(row.transfer_time_s > 0 for row in result.rows)
    assert set(result.correlations) == set(rank.SCORE_NAMES)
    for name, corr in result.correlations.items():
        scores = [row.scores[name] for row in result.rows]
        expected = scipy.stats.kendalltau(scores, accuracies).statistic
        if math.isfinite(expected):
            assert corr.kendall_tau == pytest.approx(expected)
            assert -1.0 <= corr.kendall_tau <= 1.0 and -1.0 <= corr.weighted_tau <= 1.0
        else:  # tied accuracies or scores: undefined, reported as None
            assert corr.kendall_tau is None
    table = result.format_table()
    assert "Kendall tau" in table and "weighted tau" in table and "accuracy" in table
    decoded = json.loads(result.to_json())
    assert decoded["verify"] == {"method": "retrain_head", "epochs": 2}


def test_correlation_between():
    perfect = rank.Correlation.between([1.0, 2.0, 3.0, 4.0], [0.1, 0.2, 0.3, 0.4])
    assert perfect.kendall_tau == pytest.approx(1.0)
    assert perfect.weighted_tau == pytest.approx(1.0)
    reversed_ = rank.Correlation.between([1.0, 2.0, 3.0, 4.0], [0.4, 0.3, 0.2, 0.1])
    assert reversed_.kendall_tau == pytest.approx(-1.0)
    assert reversed_.weighted_tau == pytest.approx(-1.0)
    assert rank.Correlation.between([1.0, 2.0], [0.5, 0.5]).kendall_tau is None
    assert rank.Correlation.between([1.0], [0.5]) == rank.Correlation(None, None, None)


def test_rank_models_rejects_bad_input(task, models):
    with pytest.raises(ValueError, match="no models"):
        rank.rank_models({}, task)
    with pytest.raises(ValueError, match="unknown metric"):
        rank.rank_models(models, task, metric="accuracy")
    rgb_model = build_model("small_cnn", num_classes=3, in_channels=3, width=4)
    with pytest.raises(ValueError, match="'rgb'.*channels"):
        rank.rank_models({"rgb": rgb_model}, task, match_input_channels=False)


def test_rank_models_gives_each_model_its_channel_count(task, models):
    rgb_model = build_model("small_cnn", num_classes=4, in_channels=3, width=4)
    result = rank.rank_models({"rgb": rgb_model, "grey": models["cnn-z3-s0"]}, task)
    rgb_row = next(row for row in result.rows if row.name == "rgb")
    rgb_images = match_channels(task.train_images, 3).astype(np.float32) / 255
    logits, _ = forward(rgb_model, rgb_images)
    expected = leep(logits, task.train_labels, 3, from_logits=True)
    np.testing.assert_allclose(rgb_row.scores["leep"], expected, rtol=1e-5)


# ------------------------------------------------------------------------ the CLI

TINY_ARGS = ["--zoo", "tiny", "--classes", "0,3,8", "--train-per-class", "15", "--no-progress"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A cache holding the trained tiny zoo, shared by the module's CLI runs."""
    path = tmp_path_factory.mktemp("leep_jax_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LEEP_JAX_CACHE", str(path))
        load_zoo(tiny_zoo())
    return path


@pytest.fixture
def in_cache(cache, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(cache))
    return cache


def tiny_names():
    return [spec.name for spec in tiny_zoo()]


def test_cli_rank_prints_a_ranked_table(in_cache, capsys):
    assert main(["rank", *TINY_ARGS]) == 0
    out, err = capsys.readouterr()
    assert "ranked by LEEP" in out and "digits classes 0,3,8" in out
    header = next(line for line in out.splitlines() if line.startswith("rank"))
    for column in ("model", "LEEP", "NCE", "H-score", "score s"):
        assert column in header
    rows = [line.split() for line in out.splitlines() if line[:4].strip().isdigit()]
    assert sorted(row[1] for row in rows) == sorted(tiny_names())
    assert sorted(int(row[0]) for row in rows) == [1, 2, 3]
    assert err == ""  # --no-progress: nothing on stderr


def test_cli_rank_subprocess_reuses_the_cached_zoo(cache):
    stamps = {p: p.stat().st_mtime_ns for p in (cache / "models").iterdir()}
    env = {k: v for k, v in os.environ.items() if k != "LEEP_JAX_CACHE"}
    proc = subprocess.run(
        [sys.executable, "-m", "leep_jax.cli", "rank", *TINY_ARGS, "--cache-dir", str(cache)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ranked by LEEP" in proc.stdout
    assert all(name in proc.stdout for name in tiny_names())
    assert {p: p.stat().st_mtime_ns for p in (cache / "models").iterdir()} == stamps


def test_cli_rank_json(in_cache, capsys):
    assert main(["rank", *TINY_ARGS, "--json", "--progress"]) == 0
    out, err = capsys.readouterr()
    assert "scoring" in err  # progress bars go to stderr, stdout stays one JSON object
    result = json.loads(out)
    assert result["metric"] == "leep" and result["verify"] is None
    assert result["task"]["classes"] == [0, 3, 8] and result["task"]["num_train"] == 45
    rows = result["models"]
    assert sorted(row["name"] for row in rows) == sorted(tiny_names())
    leeps = {row["name"]: row["scores"]["leep"] for row in rows}
    for row in rows:
        assert set(row["scores"]) == set(SCORE_NAMES)  # rank reports every score
        assert row["scores"]["leep"] <= 0 and row["scores"]["h_score"] >= 0
        assert row["score_time_s"] > 0
        # Rank 1 = highest LEEP.
        better = sum(v > leeps[row["name"]] for v in leeps.values())
        assert row["rank"] == row["ranks"]["leep"] == 1 + better
    assert [row["rank"] for row in rows] == sorted(row["rank"] for row in rows)


def test_cli_rank_verify(in_cache, capsys):
    assert main(["rank", *TINY_ARGS, "--verify", "--epochs", "1"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("rank"))
    assert "accuracy" in header and "fine-tune s" in header
    rows = [line.split() for line in lines if line[:4].strip().isdigit()]
    assert len(rows) == 3
    assert header.split()[-3:] == ["accuracy", "fine-tune", "s"]
    assert all(0.0 <= float(row[-2]) <= 1.0 for row in rows)
    start = lines.index("Rank correlation of each score with the accuracy:")
    assert lines[start + 1].split() == ["score", "Kendall", "tau", "p-value", "weighted", "tau"]
    correlations = {line.split()[0]: line.split()[1:] for line in lines[start + 2 : start + 5]}
    assert set(correlations) == {"LEEP", "NCE", "H-score"}
    for kendall, p_value, weighted in correlations.values():
        for value in (kendall, weighted):
            # n/a only where tau is undefined (tied accuracies or scores).
            assert value == "n/a" or -1.0 <= float(value) <= 1.0
        assert p_value == "n/a" or 0.0 <= float(p_value) <= 1.0


def test_cli_rank_tfds_target(in_cache, capsys):
    """A TFDS RGB dataset (TFDS's mock CIFAR-10): resized to 28x28, converted to grey."""
    tfds = tfds_adapter.import_tfds()
    args = ["--zoo", "tiny", "--target", "tfds:cifar10", "--classes", "0,1", "--json"]
    with tfds.testing.mock_data(num_examples=60):
        assert main(["rank", *args, "--train-per-class", "5", "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["task"]["dataset"] == "tfds:cifar10" and result["task"]["num_train"] == 10
    assert len(result["models"]) == 3
    assert all(math.isfinite(row["scores"]["leep"]) for row in result["models"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target", "nope"], "unknown dataset 'nope'"),
        (["--target", "tfds:"], "give a TFDS name"),
        (["--models", "tiny-cnn8-fmnist-all,nope"], "unknown model 'nope'"),
        (["--metric", "accuracy"], "unknown metric 'accuracy'"),
        (["--classes", "0,12"], "class 12 is out of range for digits"),
        (["--classes", "3"], "at least 2 classes"),
        (["--classes", "3,3"], "distinct"),
        (["--classes", "a,b"], "comma-separated integers"),
        (["--num-classes", "1"], "--num-classes must be >= 2"),
        (["--num-classes", "11"], "num_classes must be between 2 and 10"),
        (["--zoo", "huge"], "invalid choice"),
        (["--verify-method", "guess"], "unknown --verify-method"),
    ],
)
def test_cli_rank_bad_input_exits_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path))
    assert main(["rank", "--no-progress", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("leep-jax: error: ")
    assert message in err
    assert not (tmp_path / "models").exists()  # refused before training any model


def test_cli_rank_missing_dataset_message(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("LEEP_JAX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("LEEP_JAX_DATA_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "empty-tfds"))
    monkeypatch.setattr(fashion_mnist, "SYSTEM_DATA_DIRS", ())
    assert main(["rank", "--no-progress", "--target", "fashion_mnist"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1
    # The data layer's own message, which says how to get the files.
    assert "FashionMNIST 'train' IDX files not found" in err
    assert "apt-get install dataset-fashion-mnist" in err
