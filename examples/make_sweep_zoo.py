"""Writes the README's sweep example: a user's own zoo of three models and its zoo.toml.

Usage::

    python examples/make_sweep_zoo.py my-zoo/
    leep-jax sweep --zoo my-zoo/zoo.toml --target digits --target digits:0,2,4,6 --out r.sqlite

Writes into the folder:

* ``my_models.py``: a user's NNX CNN (``make_cnn``) and Linen MLP (``MLP``);
* ``checkpoints/cnn-a/``: the CNN's ``nnx.state`` saved with orbax's
  ``StandardCheckpointer``;
* ``mlp.msgpack``: the MLP's variables (``flax.serialization.to_bytes``);
* ``exported/digits_logits.npy`` and ``exported/digits_features.npy``: outputs "exported
  from another framework" (a fixed random projection, in NumPy) for every example of
  the digits training split, in the dataset's order;
* ``zoo.toml``: the zoo file shown in the README.

The weights are random initialisations: the example shows the file formats, not good
source models.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import numpy as np

MY_MODELS = '''"""A user's own source models (the README's sweep example)."""

import flax.linen as nn
from flax import nnx


class CNN(nnx.Module):
    def __init__(self, width, num_classes=10, *, rngs):
        self.conv = nnx.Conv(1, width, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(width, num_classes, rngs=rngs)

    def __call__(self, x):
        features = nnx.relu(self.conv(x)).mean(axis=(1, 2))
        return self.head(features), features  # (logits, features)


def make_cnn(width, *, rngs):
    return CNN(width, rngs=rngs)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        hidden = nn.Dense(32)(x.reshape(x.shape[0], -1))  # "Dense_0": the features
        return nn.Dense(10)(nn.relu(hidden))
'''

ZOO = """[[model]]
name = "cnn-a"
kind = "nnx"                          # an NNX factory and its orbax checkpoint
factory = "my_models:make_cnn"        # my_models.py beside zoo.toml
kwargs = { width = 8 }
checkpoint = "checkpoints/cnn-a"
preprocess = { channels = 1, size = 28, mean = [0.5], std = [0.25] }

[[model]]
name = "mlp"
kind = "linen"                        # a flax.linen module and its variables
factory = "my_models:MLP"
variables = "mlp.msgpack"             # flax.serialization.to_bytes, or an orbax directory
features_layer = "Dense_0"            # or method = "a method returning (logits, features)"

[[model]]
name = "from-pytorch"
kind = "outputs"                      # outputs exported from any framework
[model.outputs.digits]                # one row per example of the dataset's train split
logits = "exported/digits_logits.npy"
features = "exported/digits_features.npy"
"""


def make_zoo(folder: Path) -> Path:
    """Writes the example zoo into ``folder``; returns the path of its ``zoo.toml``."""
    import jax
    import orbax.checkpoint as ocp
    from flax import nnx, serialization

    from leep_jax.data import load_digits, to_float

    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "my_models.py").write_text(MY_MODELS)
    sys.path.insert(0, str(folder))
    try:
        sys.modules.pop("my_models", None)
        my_models = importlib.import_module("my_models")
    finally:
        sys.path.remove(str(folder))

    cnn = my_models.make_cnn(8, rngs=nnx.Rngs(0))
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder / "checkpoints" / "cnn-a", nnx.state(cnn), force=True)
    checkpointer.wait_until_finished()

    variables = my_models.MLP().init(jax.random.key(1), np.zeros((1, 28, 28, 1), np.float32))
    (folder / "mlp.msgpack").write_bytes(serialization.to_bytes(variables))

    images, _ = load_digits("train")
    pixels = to_float(images).reshape(images.shape[0], -1)
    rng = np.random.default_rng(2)
    features = np.tanh(pixels @ rng.normal(size=(pixels.shape[1], 16)) / 8)
    logits = features @ rng.normal(size=(16, 10))
    (folder / "exported").mkdir(exist_ok=True)
    np.save(folder / "exported" / "digits_logits.npy", logits.astype(np.float32))
    np.save(folder / "exported" / "digits_features.npy", features.astype(np.float32))

    (folder / "zoo.toml").write_text(ZOO)
    return folder / "zoo.toml"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the zoo")
    args = parser.parse_args(argv)
    print(f"wrote {make_zoo(args.folder)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
