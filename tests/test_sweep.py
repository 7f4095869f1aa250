"""`leep-jax sweep` in one process: a user's zoo of every kind, the store, resume, failures.

Expected scores come from the float64 NumPy references of tests/reference.py applied to
the models' outputs computed here, directly from the in-memory models.
"""

from __future__ import annotations

import csv
import json
import sqlite3

import jax
import numpy as np
import pytest
import reference
from sweep_zoo import (
    NUM_TARGET_CLASSES,
    TARGETS,
    TRAIN_PER_CLASS,
    make_zoo,
    score_rows,
    sweep_argv,
)

import leep_jax
from leep_jax.cli.main import main
from leep_jax.experiments import sweep, sweep_targets, zoo_file
from leep_jax.experiments.sweep_store import Store
from leep_jax.models.adapters import InMemoryModel
from leep_jax.scores.names import SCORE_NAMES

OPTIONS = sweep_targets.TargetOptions(train_per_class=TRAIN_PER_CLASS)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return make_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="module")
def swept(zoo, tmp_path_factory):
    """One sweep of the zoo over both targets, through the CLI."""
    out = tmp_path_factory.mktemp("results") / "results.sqlite"
    assert main(sweep_argv(zoo["zoo"], out)) == 0
    return out


def run_cli(argv, capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def expected_scores(zoo, name: str, target: sweep_targets.Target) -> dict[str, float]:
    """LEEP, NCE, H-score of the model's own outputs, by the float64 references."""
    images = target.images.astype(np.float32) / 255
    if name == "nnx-mlp":
        logits, features = zoo[name](images)
    elif name == "nnx-cnn":
        model = zoo[name]
        model.eval()
        small = jax.image.resize(images, (images.shape[0], 16, 16, 1), "linear")
        features = model.features((np.asarray(small) - 0.5) / 0.25)
        logits = model.head(features)
    elif name == "linen-mlp":
        module, variables = zoo[name]
        logits = module.apply(variables, images)
        features = module.apply(variables, images, method="features")
    else:
        all_logits, all_features = zoo[name]
        logits, features = all_logits[target.rows], all_features[target.rows]
    y = target.labels
    # The other feature scores as the library computes them on the same features (each
    # is checked against its own float64 reference in its test file).
    library = {
        name: float(
            getattr(leep_jax, name)(np.asarray(features, np.float32), y, NUM_TARGET_CLASSES)
        )
        for name in ("regularized_h_score", "logme", "transrate", "gbc", "sfda", "parc")
    }
    library["nleep"] = float(
        leep_jax.nleep(
            np.asarray(features, np.float32), y, NUM_TARGET_CLASSES, key=jax.random.key(0)
        )
    )
    logits, features = np.asarray(logits, np.float64), np.asarray(features, np.float64)
    return {
        "leep": reference.leep_from_logits(logits, y, NUM_TARGET_CLASSES),
        "nce": reference.nce(reference.softmax(logits), y, NUM_TARGET_CLASSES),
        "h_score": reference.h_score(features, y, NUM_TARGET_CLASSES),
        **library,
    }


def tolerance(metric: str) -> dict[str, float]:
    """Float64 references: 2e-5; the library's own float32 values: 1e-4, PARC 1e-3.

    The sweep's features come from a batched, jitted forward and these from an eager
    one, so they differ by float32 rounding. PARC moves most with them: 2.6e-4 for
    nnx-cnn on an Intel Xeon, every other score within 6e-6.
    """
    if metric in ("leep", "nce", "h_score"):
        return {"rtol": 2e-5, "atol": 1e-6}
    return {"rtol": 1e-3 if metric == "parc" else 1e-4, "atol": 1e-5}


def test_every_kind_of_model_scores_as_its_own_outputs_say(zoo, swept):
    rows = score_rows(swept)
    models = ("nnx-mlp", "nnx-cnn", "linen-mlp", "exported")
    assert {(m, t) for m, t, _, _ in rows} == {(m, t) for m in models for t in TARGETS}
    assert {metric for _, _, metric, _ in rows} == set(SCORE_NAMES)
    stored = {(m, t, metric): value for m, t, metric, value in rows}
    for text in TARGETS:
        target = sweep_targets.load_target(text, OPTIONS)
        assert target.num_classes == NUM_TARGET_CLASSES
        for name in models:
            for metric, value in expected_scores(zoo, name, target).items():
                np.testing.assert_allclose(
                    stored[(name, text, metric)], value, **tolerance(metric),
                    err_msg=f"{name} on {text}: {metric}",
                )  # fmt: skip


def test_store_holds_descriptions_timings_versions_in_wal_mode(swept):
    with Store(swept) as store:
        pairs = store.rows("pairs")
        models = {row[0]: (row[1], json.loads(row[2])) for row in store.rows("models")}
        targets = {row[0]: row for row in store.rows("targets")}
        versions = dict(store.rows("versions"))
        runs = store.rows("runs")
    assert len(pairs) == 8
    assert all(n == NUM_TARGET_CLASSES * TRAIN_PER_CLASS and passes == 1 and score_s > 0
               for _, _, n, passes, _, score_s, _, _ in pairs)  # fmt: skip
    assert models["nnx-cnn"][0] == "nnx"
    assert models["nnx-cnn"][1]["preprocess"] == {"channels": 1, "size": 16, "mean": [0.5],
                                                  "std": [0.25]}  # fmt: skip
    assert {kind for kind, _ in models.values()} == {"nnx", "linen", "outputs"}
    assert targets["digits:3,4,5"][1:3] == (3, 30)
    assert json.loads(targets["digits:3,4,5"][3])["classes"] == [3, 4, 5]
    assert versions["jax"] == jax.__version__
    assert runs[-1][5:8] == (8, 0, 0)
    with sqlite3.connect(swept) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_rerun_skips_finished_pairs_and_scores_only_missing_ones(zoo, swept, tmp_path, capsys):
    out = tmp_path / "copy.sqlite"
    with sqlite3.connect(swept) as source, sqlite3.connect(out) as copy:
        source.backup(copy)
    before = score_rows(out)
    code, stdout, _ = run_cli(sweep_argv(zoo["zoo"], out), capsys)
    assert code == 0 and "0 pairs done, 8 skipped, 0 failed" in stdout
    assert score_rows(out) == before
    with sqlite3.connect(out) as db:  # as if the run had died before this pair's commit
        db.execute("DELETE FROM scores WHERE model = 'linen-mlp' AND target = 'digits:3,4,5'")
    code, stdout, _ = run_cli(sweep_argv(zoo["zoo"], out, "--json"), capsys)
    summary = json.loads(stdout)
    assert code == 0 and (summary["done"], summary["skipped"], summary["failed"]) == (1, 7, 0)
    assert score_rows(out) == before


def test_report_ranks_each_target_and_exports_csv(swept, tmp_path, capsys):
    csv_path = tmp_path / "scores.csv"
    code, stdout, _ = run_cli(["sweep", "--report", swept, "--json", "--csv", csv_path], capsys)
    assert code == 0
    report = json.loads(stdout)
    stored = {(m, t, metric): v for m, t, metric, v in score_rows(swept)}
    assert set(report["targets"]) == set(TARGETS) and report["failures"] == []
    for target, rows in report["targets"].items():
        values = [row["leep"] for row in rows]
        assert values == sorted(values, reverse=True)
        assert [row["rank"] for row in rows] == [1, 2, 3, 4]
        for row in rows:
            assert row["nce"] == stored[(row["model"], target, "nce")]
    with open(csv_path) as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 8
    for row in table:
        assert float(row["h_score"]) == stored[(row["model"], row["target"], "h_score")]
    code, stdout, _ = run_cli(["sweep", "--report", swept, "--metric", "h_score"], capsys)
    lines = stdout.splitlines()
    assert code == 0 and lines[0] == f"target {TARGETS[0]} (ranked by h_score)"
    assert lines[2].split()[0] == "1"


FAILING_ZOO = """
[[model]]
name = "no-checkpoint"
kind = "nnx"
factory = "user_models:NnxMLP"
checkpoint = "does-not-exist"

[[model]]
name = "no-module"
kind = "nnx"
factory = "not_a_module_anywhere:Model"
checkpoint = "mlp"

[[model]]
name = "logits-only"
kind = "linen"
factory = "user_models:LinenMLP"
variables = "linen.msgpack"

[[model]]
name = "short-outputs"
kind = "outputs"
[model.outputs.digits]
logits = "short.npy"
features = "features.npy"

[[model]]
name = "nan-outputs"
kind = "outputs"
[model.outputs.digits]
logits = "nan.npy"
features = "features.npy"

[[model]]
name = "good"
kind = "outputs"
[model.outputs.digits]
logits = "logits.npy"
features = "features.npy"
"""


def test_failing_models_are_recorded_and_the_sweep_goes_on(zoo, tmp_path, capsys):
    folder = zoo["zoo"].parent
    logits = np.load(folder / "logits.npy")
    np.save(folder / "short.npy", logits[:10])
    poisoned = logits.copy()
    poisoned[:, 2] = np.nan
    np.save(folder / "nan.npy", poisoned)
    path = folder / "failing.toml"
    path.write_text(FAILING_ZOO)
    out = tmp_path / "failing.sqlite"
    code, stdout, _ = run_cli(sweep_argv(path, out), capsys)
    assert code == 0 and "2 pairs done, 0 skipped, 10 failed" in stdout
    with Store(out) as store:
        failures = {(f["model"], f["target"]): f for f in store.failures()}
    assert len(failures) == 10
    for target in TARGETS:
        assert failures[("no-checkpoint", target)]["stage"] == "load"
        assert "does-not-exist" in failures[("no-checkpoint", target)]["reason"]
        assert "not_a_module_anywhere" in failures[("no-module", target)]["reason"]
        assert "pair (predictions, features)" in failures[("logits-only", target)]["reason"]
        assert "has 10 rows" in failures[("short-outputs", target)]["reason"]
        assert "NaN" in failures[("nan-outputs", target)]["reason"]
    assert {(m, t) for m, t, _, _ in score_rows(out)} == {("good", t) for t in TARGETS}
    code, stdout, _ = run_cli(sweep_argv(path, out), capsys)  # failures are finished pairs
    assert code == 0 and "0 pairs done, 12 skipped" in stdout
    code, stdout, _ = run_cli(sweep_argv(path, out, "--retry-failed"), capsys)
    assert code == 0 and "0 pairs done, 2 skipped, 10 failed" in stdout
    code, stdout, _ = run_cli(["sweep", "--report", out], capsys)
    assert stdout.count("failed: ") == 10


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[[model]\nname = 'a'", "not valid TOML"),
        ("title = 'no models'", "unknown top-level key 'title'"),
        ("[[model]]\nname = 'a'\nkind = 'onnx'", "kind must be one of nnx, linen, outputs"),
        ("[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm:f'", "missing key 'checkpoint'"),
        ("[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm.f'\ncheckpoint = 'c'",
         "factory must look like"),
        ("[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm:f'\ncheckpoint = 'c'\nlayer = 'x'",
         "unknown key 'layer'"),
        ("[[model]]\nname = 'a'\nkind = 'outputs'\noutputs = {}\n"
         "[[model]]\nname = 'a'\nkind = 'outputs'\noutputs = {}", "outputs is empty"),
        ("[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm:f'\ncheckpoint = 'c'\n"
         "[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm:f'\ncheckpoint = 'c'", "appears twice"),
        ("[[model]]\nname = 'a'\nkind = 'nnx'\nfactory = 'm:f'\ncheckpoint = 'c'\n"
         "preprocess = { channels = 2 }", "channels must be 1 or 3"),
    ],
)  # fmt: skip
def test_malformed_zoo_file_exits_2_with_one_line(tmp_path, capsys, text, problem):
    path = tmp_path / "zoo.toml"
    path.write_text(text)
    code, stdout, stderr = run_cli(sweep_argv(path, tmp_path / "r.sqlite"), capsys)
    assert code == 2 and stdout == ""
    assert stderr.count("\n") == 1 and stderr.startswith("leep-jax: error: ")
    assert problem in stderr
    assert not (tmp_path / "r.sqlite").exists()


@pytest.mark.parametrize(
    ("target", "problem"),
    [
        ("cifar11", "unknown target 'cifar11'"),
        ("digits:0,x", "classes must be comma-separated integers"),
        ("digits:0,12", "class 12 is out of range"),
        ("missing.npz", "no such .npz file"),
    ],
)
def test_unknown_target_exits_2_with_one_line(zoo, tmp_path, capsys, target, problem):
    argv = ["sweep", "--zoo", zoo["zoo"], "--out", tmp_path / "r.sqlite", "--target", target]
    code, _, stderr = run_cli(argv, capsys)
    assert code == 2 and stderr.count("\n") == 1 and problem in stderr


def test_report_of_a_missing_file_exits_2(tmp_path, capsys):
    code, _, stderr = run_cli(["sweep", "--report", tmp_path / "none.sqlite"], capsys)
    assert code == 2 and "no results file" in stderr


def test_npz_target_and_in_memory_models_through_the_python_api(zoo, tmp_path):
    digits = sweep_targets.load_target(TARGETS[0], OPTIONS)
    path = tmp_path / "mine.npz"
    np.savez(path, images=digits.images[..., 0], labels=digits.labels + 7)
    target = sweep_targets.load_target(str(path), sweep_targets.TargetOptions(train_per_class=None))
    assert target.classes == (7, 8, 9) and target.images.shape == digits.images.shape
    np.testing.assert_array_equal(target.labels, digits.labels)
    entries = [InMemoryModel("mlp", zoo["nnx-mlp"])]
    out = tmp_path / "api.sqlite"
    summary = sweep.run_sweep(entries, [target], str(out), batch_size=16)
    assert (summary.done, summary.skipped, summary.failed) == (1, 0, 0)
    expected = expected_scores(zoo, "nnx-mlp", digits)
    for _, _, metric, value in score_rows(out):
        np.testing.assert_allclose(value, expected[metric], **tolerance(metric), err_msg=metric)
    with pytest.raises(ValueError, match="given twice"):
        sweep.run_sweep(entries * 2, [target], str(out))


def test_builtin_zoo_names_resolve_without_training():
    entries = zoo_file.resolve_zoo("tiny")
    assert [e.kind for e in entries] == ["builtin"] * 3
    assert all(e.preprocess.channels == 1 and e.preprocess.size == 28 for e in entries)


def test_models_of_one_architecture_share_one_compiled_step(zoo, tmp_path):
    from leep_jax.models.adapters import LinenModel, NnxModel, SharedModules
    from leep_jax.streaming import engine

    folder = zoo["zoo"].parent
    target = sweep_targets.load_target(TARGETS[0], OPTIONS)
    first, second = (NnxModel(name, "user_models:NnxMLP", folder / "mlp", search_dir=folder)
                     for name in ("first", "second"))  # fmt: skip
    out = str(tmp_path / "shared.sqlite")
    assert sweep.run_sweep([first], [target], out, batch_size=16).done == 1
    compiled = engine.pass1_step._cache_size(), engine.pass2_step._cache_size()
    summary = sweep.run_sweep([first, second], [target], out, batch_size=16)
    assert (summary.done, summary.skipped) == (1, 1)
    assert (engine.pass1_step._cache_size(), engine.pass2_step._cache_size()) == compiled
    modules = SharedModules()
    variables = folder / "linen.msgpack"
    linen = [LinenModel(name, "user_models:LinenMLP", variables, features_layer="embed",
                        search_dir=folder) for name in ("a", "b")]  # fmt: skip
    assert linen[0].load(modules).forward is linen[1].load(modules).forward
