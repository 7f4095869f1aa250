"""A user's zoo for the sweep tests: one model of each kind, made in seconds.

``make_zoo(folder)`` writes, beside a ``zoo.toml``:

* ``user_models.py``: an NNX MLP returning ``(logits, features)`` and a Linen MLP;
* ``mlp/``: the NNX MLP's state saved with a plain ``ocp.StandardCheckpointer``;
* ``cnn/``: a leep_jax ``SmallCNN`` saved with ``leep_jax.models.save_model`` (resized
  to 16x16 and normalised by its preprocessing);
* ``linen.msgpack``: the Linen variables (``flax.serialization.to_bytes``), features
  from the layer ``embed``;
* ``logits.npy`` / ``features.npy``: "exported" outputs over every digits training row.

It returns the in-memory models, so tests can compute the expected scores directly.
"""

from __future__ import annotations

import importlib
import sys
import textwrap
from pathlib import Path

import numpy as np

TARGETS = ("digits:0,1,2", "digits:3,4,5")
TRAIN_PER_CLASS = 10
BATCH_SIZE = 16
NUM_TARGET_CLASSES = 3

USER_MODELS = '''
import flax.linen as nn
from flax import nnx


class NnxMLP(nnx.Module):
    def __init__(self, num_classes=6, hidden=12, *, rngs):
        self.hidden = nnx.Linear(784, hidden, rngs=rngs)
        self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        features = nnx.relu(self.hidden(x.reshape(x.shape[0], -1)))
        return self.out(features), features


class LogitsOnly(nnx.Module):
    """Returns logits only: the wrong output structure for a sweep."""

    def __init__(self, *, rngs):
        self.out = nnx.Linear(784, 4, rngs=rngs)

    def __call__(self, x):
        return self.out(x.reshape(x.shape[0], -1))


class LinenMLP(nn.Module):
    hidden: int = 16
    num_classes: int = 7

    def setup(self):
        self.embed = nn.Dense(self.hidden)
        self.head = nn.Dense(self.num_classes)

    def __call__(self, x):
        return self.head(nn.relu(self.embed(x.reshape(x.shape[0], -1))))

    def features(self, x):
        return self.embed(x.reshape(x.shape[0], -1))
'''

ZOO = """
[[model]]
name = "nnx-mlp"
kind = "nnx"
factory = "user_models:NnxMLP"
checkpoint = "mlp"

[[model]]
name = "nnx-cnn"
kind = "nnx"
factory = "leep_jax.models:SmallCNN"
kwargs = { num_classes = 4, width = 2 }
checkpoint = "cnn"
preprocess = { channels = 1, size = 16, mean = [0.5], std = [0.25] }

[[model]]
name = "linen-mlp"
kind = "linen"
factory = "user_models:LinenMLP"
variables = "linen.msgpack"
features_layer = "embed"

[[model]]
name = "exported"
kind = "outputs"
[model.outputs.digits]
logits = "logits.npy"
features = "features.npy"
"""


def make_zoo(folder: Path) -> dict:
    """Writes the zoo into ``folder``; returns ``{"zoo": path, name: model or arrays}``."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx, serialization

    from leep_jax.data import load_digits
    from leep_jax.models import SmallCNN, save_model

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "user_models.py").write_text(textwrap.dedent(USER_MODELS))
    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop("user_models", None)
        user_models = importlib.import_module("user_models")
    finally:
        sys.path.remove(str(folder))
    mlp = user_models.NnxMLP(rngs=nnx.Rngs(1))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / "mlp", nnx.state(mlp))
    checkpointer.wait_until_finished()
    cnn = SmallCNN(4, width=2, rngs=nnx.Rngs(2))
    save_model(cnn, folder / "cnn")
    linen = user_models.LinenMLP()
    variables = linen.init(jax.random.key(3), np.zeros((1, 28, 28, 1), np.float32))
    (folder / "linen.msgpack").write_bytes(serialization.to_bytes(variables))
    rows = load_digits("train")[1].shape[0]
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(rows, 5)).astype(np.float32)
    features = rng.normal(size=(rows, 6)).astype(np.float32)
    np.save(folder / "logits.npy", logits)
    np.save(folder / "features.npy", features)
    (folder / "zoo.toml").write_text(ZOO)
    return {
        "zoo": folder / "zoo.toml",
        "nnx-mlp": mlp,
        "nnx-cnn": cnn,
        "linen-mlp": (linen, variables),
        "exported": (logits, features),
        "user_models": user_models,
    }


def sweep_argv(zoo: Path, out: Path, *extra: str) -> list[str]:
    """The ``leep-jax sweep`` arguments of the tests' sweep."""
    argv = ["sweep", "--zoo", str(zoo), "--out", str(out), "--no-progress"]
    for target in TARGETS:
        argv += ["--target", target]
    return argv + ["--train-per-class", str(TRAIN_PER_CLASS), "--batch-size", str(BATCH_SIZE),
                   *extra]  # fmt: skip


def score_rows(path: Path) -> list[tuple]:
    """The sorted ``scores`` rows of a results file."""
    import sqlite3

    with sqlite3.connect(path) as db:
        return sorted(db.execute("SELECT model, target, metric, value FROM scores"))
