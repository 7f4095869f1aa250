"""examples/train_loop.py --quick trains for real and prints per-epoch transferability."""

import math
import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLUMNS = ["epoch", "loss", "train_acc", "train_nce", "test_acc", "leep", "nce", "h_score", "s"]


def test_quick_training_loop_prints_a_table_of_scores():
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("XLA_FLAGS", None)  # one CPU device, as a user would run it
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train_loop.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    header = lines.index(" ".join(f"{c:>9}" for c in COLUMNS))
    rows = [
        dict(zip(COLUMNS, map(float, line.split()), strict=True))
        for line in lines[header + 1 : header + 4]
    ]
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    for row in rows:
        assert all(math.isfinite(v) for v in row.values()), row
        assert row["leep"] <= 0 and row["nce"] <= 0 and row["train_nce"] <= 0, row
        assert row["h_score"] > 0, row
        assert 0 <= row["train_acc"] <= 1 and 0 <= row["test_acc"] <= 1, row
    # Real training on 5 FashionMNIST classes: the loss falls, test accuracy leaves chance.
    assert rows[-1]["loss"] < rows[0]["loss"]
    assert rows[-1]["test_acc"] > 0.5
    # The metric objects and leep_jax.score_model agree on every epoch's scores.
    summary = lines[-1]
    assert summary.startswith("metrics vs leep_jax.score_model, max |difference|: "), summary
    differences = dict(part.split() for part in summary.split(": ")[1].split(", "))
    assert float(differences["leep"]) < 1e-5 and float(differences["nce"]) < 1e-5, summary
    # H-score: both shift the features by a batch mean; batch-wise merges re-centre.
    h_scores = [row["h_score"] for row in rows]
    assert float(differences["h_score"]) < 1e-4 * max(h_scores), summary
