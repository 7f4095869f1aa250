"""`leep-jax sweep` over ``tfds:`` targets, on TFDS's own mock data (tfds.testing.mock_data).

Needs the ``tfds`` extra (CI installs it). Two models over two targets drawn from
``tfds:cifar10`` (32x32 RGB): an NNX SmallCNN checkpoint that resizes and normalises the
images, and outputs "exported" for every row of the mock training split (which checks
that a TFDS target's rows index the dataset's split). The scores must equal the float64
references on the models' own outputs, and reruns must skip what is done.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3

import jax
import numpy as np
import pytest
import reference
from flax import nnx

from leep_jax.cli.main import main
from leep_jax.data import tfds as adapter
from leep_jax.experiments import sweep_targets
from leep_jax.models import SmallCNN, save_model

tfds = adapter.import_tfds()  # fails loudly (ImportError with the install hint) if missing

NUM_EXAMPLES = 200  # per mock split: ~20 per class
TARGETS = ("tfds:cifar10:1,3,5", "tfds:cifar10")  # the second draws 3 classes with the seed
NUM_CLASSES = 3
PER_CLASS = 6
METRICS = ("leep", "nce", "h_score")

ZOO = """
[[model]]
name = "cnn"
kind = "nnx"
factory = "leep_jax.models:SmallCNN"
kwargs = { num_classes = 4, in_channels = 3, width = 2 }
checkpoint = "cnn"
preprocess = { size = 16, mean = [0.5, 0.5, 0.5], std = [0.25, 0.25, 0.25] }

[[model]]
name = "exported"
kind = "outputs"
[model.outputs."tfds:cifar10"]
logits = "logits.npy"
features = "features.npy"
"""


@pytest.fixture(scope="module")
def mocked(tmp_path_factory):
    """TFDS's mock cifar10 for the whole module, and a TFDS data folder of its own."""
    previous = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    try:
        with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
            yield
    finally:
        if previous is None:
            os.environ.pop("TFDS_DATA_DIR")
        else:
            os.environ["TFDS_DATA_DIR"] = previous


@pytest.fixture(scope="module")
def zoo(mocked, tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    cnn = SmallCNN(4, in_channels=3, width=2, rngs=nnx.Rngs(0))
    save_model(cnn, folder / "cnn")
    _, labels = adapter.load_tfds("cifar10", "train")
    assert labels.shape == (NUM_EXAMPLES,)
    rng = np.random.default_rng(1)
    # Exported outputs that know the label a little, so the scores are not at chance.
    logits = (2 * np.eye(10)[labels] + rng.normal(size=(NUM_EXAMPLES, 10))).astype(np.float32)
    features = (np.eye(10)[labels, :5] + rng.normal(size=(NUM_EXAMPLES, 5))).astype(np.float32)
    np.save(folder / "logits.npy", logits)
    np.save(folder / "features.npy", features)
    (folder / "zoo.toml").write_text(ZOO)
    return {"zoo": folder / "zoo.toml", "cnn": cnn, "exported": (logits, features)}


def sweep(zoo, out, capsys) -> dict:
    argv = ["sweep", "--zoo", str(zoo["zoo"]), "--out", str(out), "--no-progress", "--json",
            "--metrics", ",".join(METRICS), "--num-classes", str(NUM_CLASSES),
            "--train-per-class", str(PER_CLASS), "--batch-size", "8"]  # fmt: skip
    for target in TARGETS:
        argv += ["--target", target]
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def rows(out, table: str) -> list[tuple]:
    with sqlite3.connect(out) as db:
        return sorted(db.execute(f"SELECT * FROM {table}"))


def expected(zoo, name: str, target: sweep_targets.Target) -> dict[str, float]:
    """LEEP, NCE and H-score of the model's own outputs, by the float64 references."""
    if name == "cnn":
        images = target.images.astype(np.float32) / 255
        small = jax.image.resize(images, (images.shape[0], 16, 16, 3), "linear")
        model = zoo["cnn"]
        model.eval()
        features = model.features((np.asarray(small) - 0.5) / 0.25)
        logits = model.head(features)
    else:
        logits, features = (array[target.rows] for array in zoo["exported"])
    logits, features = np.asarray(logits, np.float64), np.asarray(features, np.float64)
    y = target.labels
    return {
        "leep": reference.leep_from_logits(logits, y, NUM_CLASSES),
        "nce": reference.nce(reference.softmax(logits), y, NUM_CLASSES),
        "h_score": reference.h_score(features, y, NUM_CLASSES),
    }


def test_sweep_over_tfds_targets_scores_every_pair_then_resumes(zoo, tmp_path, capsys):
    out = tmp_path / "tfds.sqlite"
    summary = sweep(zoo, out, capsys)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (4, 0, 0)
    assert rows(out, "failures") == []
    scores = rows(out, "scores")
    assert len(scores) == 2 * len(TARGETS) * len(METRICS)
    assert all(math.isfinite(value) for *_, value in scores)

    options = sweep_targets.TargetOptions(NUM_CLASSES, PER_CLASS, seed=0)
    targets = {text: sweep_targets.load_target(text, options) for text in TARGETS}
    assert targets["tfds:cifar10:1,3,5"].classes == (1, 3, 5)
    assert len(targets["tfds:cifar10"].classes) == NUM_CLASSES
    for target in targets.values():
        assert target.images.shape[1:] == (32, 32, 3)
        assert target.labels.shape == (NUM_CLASSES * PER_CLASS,)
    described = {name: json.loads(text)["classes"] for name, *_, text in rows(out, "targets")}
    assert described == {name: list(t.classes) for name, t in targets.items()}
    for model, target, metric, value in scores:
        want = expected(zoo, model, targets[target])[metric]
        np.testing.assert_allclose(value, want, rtol=2e-5, atol=1e-6, err_msg=(model, target))

    # A rerun skips every finished pair and rewrites nothing.
    pairs = rows(out, "pairs")
    summary = sweep(zoo, out, capsys)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (0, 4, 0)
    assert rows(out, "scores") == scores and rows(out, "pairs") == pairs

    # A pair lost before its commit (as if killed) is the only one scored again.
    with sqlite3.connect(out) as db:
        for table in ("scores", "pairs"):
            db.execute(f"DELETE FROM {table} WHERE model = 'cnn' AND target = 'tfds:cifar10'")
    summary = sweep(zoo, out, capsys)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 3, 0)
    again = rows(out, "scores")
    assert [row[:3] for row in again] == [row[:3] for row in scores]
    np.testing.assert_allclose([row[3] for row in again], [row[3] for row in scores], rtol=1e-6)
    now = rows(out, "pairs")
    assert len(now) == len(pairs)
    others = [r for r in pairs if r[:2] != ("cnn", "tfds:cifar10")]
    assert [r for r in now if r[:2] != ("cnn", "tfds:cifar10")] == others
