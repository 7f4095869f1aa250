"""Users' source models for sweeps: Flax NNX, Flax Linen, or outputs computed elsewhere.

A sweep (:mod:`leep_jax.experiments.sweep`) scores each model through the one scoring
engine (:mod:`leep_jax.streaming.engine`), which wants a hashable, static
``forward(params, images) -> (logits [b, Z], features [b, D])`` and the weights as a
pytree. Each adapter here turns one kind of model into that pair:

* :class:`NnxModel`: an NNX model factory (``"package.module:callable"`` plus keyword
  arguments) and an orbax checkpoint of its state. The model runs in eval mode through
  :class:`~leep_jax.streaming.score_model.ModuleForward`, so models of one architecture
  (equal ``nnx.split`` graphs) share one compiled step; a sweep builds each
  architecture once (:class:`SharedModules`).
* :class:`LinenModel`: a ``flax.linen`` module factory and its variables (a
  ``flax.serialization`` msgpack file or an orbax checkpoint), with the method that
  returns ``(logits, features)`` or the layer whose output is the features. One module
  object per distinct factory and arguments (:class:`SharedModules`), so models that
  differ only in their variables share one compiled step.
* :class:`PrecomputedOutputs`: ``.npy`` logits and features per target dataset, from
  any framework, one row per example of the dataset's training split.
* :class:`BuiltinModel` and :class:`InMemoryModel`: the project's zoo
  (:mod:`leep_jax.transfer.zoo`) and NNX models already in memory.

Every entry carries its input :class:`Preprocess` (channels, size, normalisation) and a
JSON-able ``describe()`` that the results store keeps beside the scores.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from leep_jax.streaming import engine
from leep_jax.streaming.score_model import ModuleForward

__all__ = [
    "BuiltinModel",
    "InMemoryModel",
    "LinenForward",
    "LinenModel",
    "Loaded",
    "ModelEntry",
    "NnxModel",
    "PrecomputedOutputs",
    "Preprocess",
    "SharedModules",
    "import_callable",
]


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """How a model wants its input images (applied once per target and preprocessing).

    Images start as NHWC floats in [0, 1]; then ``channels`` (grey <-> RGB), ``size``
    (bilinear resize to ``size x size``), and ``(x - mean) / std`` per channel.

    Attributes:
      channels: 1 or 3, or None to keep the target's channels.
      size: height and width, or None to keep the target's.
      mean: per-channel (or one) mean subtracted, or None.
      std: per-channel (or one) standard deviation divided by, or None.
    """

    channels: int | None = None
    size: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def __post_init__(self):
        if self.channels not in (None, 1, 3):
            raise ValueError(f"preprocess channels must be 1 or 3, got {self.channels!r}")
        if self.size is not None and (not isinstance(self.size, int) or self.size < 1):
            raise ValueError(f"preprocess size must be a positive int, got {self.size!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is None:
                continue
            value = tuple(float(v) for v in np.atleast_1d(value))
            if len(value) not in (1, 3) or not all(np.isfinite(value)):
                raise ValueError(f"preprocess {name} must be 1 or 3 finite numbers, got {value}")
            object.__setattr__(self, name, value)
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"preprocess std must be positive, got {self.std}")

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


class Loaded(NamedTuple):
    """A model ready for the engine."""

    forward: engine.Forward  # hashable: (params, images) -> (logits, features)
    params: Any  # the weights, a pytree of arrays
    from_logits: bool = True


def import_callable(target: str, search_dir: str | Path | None = None) -> Callable:
    """The callable named ``"package.module:attribute"`` (``search_dir`` is tried first).

    Raises:
      ValueError: a malformed name. ImportError / AttributeError: it does not resolve.
    """
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"factory must look like 'package.module:callable', got {target!r}")
    added = search_dir is not None and str(search_dir) not in sys.path
    if added:
        sys.path.insert(0, str(search_dir))
    try:
        value: Any = importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(str(search_dir))
    for part in attribute.split("."):
        value = getattr(value, part)
    if not callable(value):
        raise ValueError(f"{target} is not callable")
    return value


class _OrbaxReader:
    """Reads orbax checkpoint directories into raw pytrees (nested dicts of NumPy arrays).

    A leep_jax checkpoint (:func:`leep_jax.models.save_model`) keeps its arrays in the
    ``state`` item; a plain ``ocp.StandardCheckpointer().save(path, tree)`` keeps them
    at the top. Only this process reads, into host NumPy arrays: under jax.distributed
    orbax would otherwise synchronise every process and restore onto the global device
    topology, while each process of a sweep loads models of its own.

    Reading a checkpoint's metadata (to ask for NumPy leaves) costs more than restoring
    its few arrays, so the restore arguments are kept per ``like`` key (an architecture):
    the next checkpoint of that kind is restored with them, and read afresh only if
    that fails.
    """

    def __init__(self):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        only_me = ocp.options.MultiprocessingOptions(
            primary_host=None, active_processes={jax.process_index()}
        )
        self._checkpointer = ocp.Checkpointer(
            ocp.PyTreeCheckpointHandler(multiprocessing_options=only_me),
            multiprocessing_options=only_me,
        )
        self._restore_args: dict[str, Any] = {}

    def restore(self, path: Path, like: str | None = None) -> Any:
        if not path.is_dir():
            raise FileNotFoundError(f"no orbax checkpoint directory at {path}")
        if (path / "state").is_dir() and (path / "metadata").is_dir():
            path = path / "state"
        path = path.resolve()
        restore = self._checkpointer.restore
        # orbax logs warnings about a leep_jax checkpoint's item read on its own and about
        # the options above, once per model: keep a sweep's stderr for what matters.
        absl_logger = logging.getLogger("absl")
        level = absl_logger.level
        absl_logger.setLevel(logging.ERROR)
        try:
            known = self._restore_args.get(like) if like is not None else None
            if known is not None:
                try:
                    return restore(path, args=self._ocp.args.PyTreeRestore(restore_args=known))
                except Exception:  # another layout than the last of its kind: read metadata
                    pass
            tree = self._checkpointer.metadata(path)
            tree = getattr(tree, "item_metadata", tree)
            tree = getattr(tree, "tree", tree)
            as_numpy = jax.tree.map(lambda _: self._ocp.RestoreArgs(restore_type=np.ndarray), tree)
            restored = restore(path, args=self._ocp.args.PyTreeRestore(restore_args=as_numpy))
            if like is not None:
                self._restore_args[like] = as_numpy
            return restored
        finally:
            absl_logger.setLevel(level)


def _pure(tree: Any) -> Any:
    """Nested dicts of arrays; a saved ``nnx.State`` keeps ``{"value": array}`` leaves."""
    if isinstance(tree, Mapping):
        if set(tree) == {"value"}:
            return _pure(tree["value"])
        return {k: _pure(v) for k, v in tree.items()}
    return tree


@dataclasses.dataclass(frozen=True)
class NnxModel:
    """An NNX model built by ``factory(**kwargs)`` and filled from an orbax checkpoint.

    ``rngs=nnx.Rngs(0)`` is passed when the factory takes ``rngs`` and ``kwargs`` does
    not; the model is built abstractly (no initialisation work) and every array comes
    from the checkpoint.
    """

    name: str
    factory: str
    checkpoint: Path
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: Preprocess = Preprocess()
    search_dir: Path | None = None
    kind = "nnx"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "checkpoint": str(self.checkpoint),
            "preprocess": self.preprocess.describe(),
        }

    def architecture(self) -> str:
        """What models built alike share: the factory, its search folder and arguments."""
        return repr((self.factory, str(self.search_dir), sorted(self.kwargs.items())))

    def build(self) -> nnx.Module:
        """The abstract model (shapes only) from the factory."""
        factory = import_callable(self.factory, self.search_dir)
        kwargs = dict(self.kwargs)
        try:
            function = factory.__init__ if isinstance(factory, type) else factory
            takes_rngs = "rngs" in inspect.signature(function).parameters
        except (TypeError, ValueError):
            takes_rngs = False
        rngs = takes_rngs and "rngs" not in kwargs
        # The Rngs are made inside eval_shape's trace: one made outside cannot be used there.
        model = nnx.eval_shape(lambda: factory(**kwargs, **({"rngs": nnx.Rngs(0)} if rngs else {})))
        if not isinstance(model, nnx.Module):
            raise ValueError(
                f"factory {self.factory} returned {type(model).__name__}, not an nnx.Module"
            )
        return model

    def load(self, shared: SharedModules | None = None) -> Loaded:
        shared = shared or SharedModules()
        forward, abstract = shared.nnx(self)
        state = jax.tree.map(lambda x: x, abstract)  # a new State, the same abstract leaves
        restored = _pure(shared.restore_orbax(self.checkpoint, like=self.architecture()))
        try:
            nnx.replace_by_pure_dict(state, restored)
        except (KeyError, ValueError, TypeError) as error:
            raise ValueError(
                f"checkpoint {self.checkpoint} does not fit the model: {error}"
            ) from None
        missing = [x for x in jax.tree.leaves(state) if isinstance(x, jax.ShapeDtypeStruct)]
        if missing:
            raise ValueError(
                f"checkpoint {self.checkpoint} lacks {len(missing)} of the model's arrays"
            )
        expected = jax.tree.map(np.shape, nnx.to_pure_dict(abstract))
        got = jax.tree.map(np.shape, nnx.to_pure_dict(state))
        if expected != got:
            raise ValueError(f"checkpoint {self.checkpoint} has other array shapes than the model")
        return Loaded(forward, jax.tree.map(jnp.asarray, state))


@dataclasses.dataclass(frozen=True, eq=False)
class LinenForward:
    """``(variables, images) -> (logits, features)`` of one Linen module (hashable by identity).

    With ``features_layer`` (a submodule path such as ``"Dense_0"`` or
    ``"encoder/pool"``), ``method`` returns the logits and the layer's output, captured
    in the same pass (``capture_intermediates``), is the features (flattened to
    ``[b, -1]``). Without it, ``method`` must return ``(logits, features)``.
    """

    module: Any
    method: str = "__call__"
    features_layer: str | None = None
    apply_kwargs: tuple[tuple[str, Any], ...] = ()

    def __call__(self, variables, images):
        kwargs = dict(self.apply_kwargs)
        method = None if self.method == "__call__" else self.method
        if self.features_layer is None:
            return self.module.apply(variables, images, method=method, **kwargs)
        path = tuple(self.features_layer.split("/"))

        def wanted(module, method_name):
            return method_name == "__call__" and tuple(module.path) == path

        logits, state = self.module.apply(
            variables,
            images,
            method=method,
            capture_intermediates=wanted,
            mutable=["intermediates"],
            **kwargs,
        )
        node = state["intermediates"]
        for name in path:
            if name not in node:
                raise ValueError(f"no layer {self.features_layer!r} ran in the forward pass")
            node = node[name]
        features = node["__call__"][0]
        return logits, features.reshape(features.shape[0], -1)


class SharedModules:
    """What the models of one sweep share, made once per architecture.

    * one :class:`LinenForward` per distinct Linen (factory, kwargs, method, layer), and
      one :class:`~leep_jax.streaming.score_model.ModuleForward` per distinct NNX
      (factory, kwargs): sharing the object lets every model of one architecture share
      one compiled step (the engine's jit caches look the forward up by hash and
      equality, and identity answers equality at once);
    * the abstract NNX state of each architecture (building the model under
      ``nnx.eval_shape`` traces its constructor: ~0.25 s per SmallCNN on 2 CPUs, more
      than restoring its checkpoint);
    * one orbax reader, which keeps the restore arguments per architecture.

    Not thread-safe: a sweep loads its models in one background thread.
    """

    def __init__(self):
        self._linen: dict[str, LinenForward] = {}
        self._nnx: dict[str, tuple[ModuleForward, nnx.State]] = {}
        self._orbax: _OrbaxReader | None = None

    def linen(self, entry: LinenModel) -> LinenForward:
        key = entry.architecture()
        if key not in self._linen:
            module = import_callable(entry.factory, entry.search_dir)(**entry.kwargs)
            self._linen[key] = LinenForward(
                module,
                entry.method,
                entry.features_layer,
                tuple(sorted(entry.apply_kwargs.items())),
            )
        return self._linen[key]

    def nnx(self, entry: NnxModel) -> tuple[ModuleForward, nnx.State]:
        """``(forward, abstract state)``: the state's leaves are ``jax.ShapeDtypeStruct``."""
        key = entry.architecture()
        if key not in self._nnx:
            graphdef, abstract = nnx.split(entry.build())
            self._nnx[key] = ModuleForward(graphdef), abstract
        return self._nnx[key]

    def restore_orbax(self, path: Path, like: str | None = None) -> Any:
        if self._orbax is None:
            self._orbax = _OrbaxReader()
        return self._orbax.restore(path, like)


@dataclasses.dataclass(frozen=True)
class LinenModel:
    """A ``flax.linen`` module from ``factory(**kwargs)`` with variables from a file.

    ``variables`` is a ``flax.serialization.to_bytes`` msgpack file (``.msgpack``) or an
    orbax checkpoint directory, holding the variables dict (``{"params": ...,
    "batch_stats": ...}``) or just the params.
    """

    name: str
    factory: str
    variables: Path
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    method: str = "__call__"
    features_layer: str | None = None
    apply_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    preprocess: Preprocess = Preprocess()
    search_dir: Path | None = None
    kind = "linen"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "factory": self.factory,
            "kwargs": dict(self.kwargs),
            "variables": str(self.variables),
            "method": self.method,
            "features_layer": self.features_layer,
            "apply_kwargs": dict(self.apply_kwargs),
            "preprocess": self.preprocess.describe(),
        }

    def architecture(self) -> str:
        """What models built alike share: factory, search folder, arguments, method, layer."""
        kwargs, apply_kwargs = sorted(self.kwargs.items()), sorted(self.apply_kwargs.items())
        return repr((self.factory, str(self.search_dir), kwargs, self.method,
                     self.features_layer, apply_kwargs))  # fmt: skip

    def load(self, shared: SharedModules | None = None) -> Loaded:
        from flax import serialization

        shared = shared or SharedModules()
        forward = shared.linen(self)
        if self.variables.is_dir():
            variables = shared.restore_orbax(self.variables, like=self.architecture())
        elif self.variables.is_file():
            variables = serialization.msgpack_restore(self.variables.read_bytes())
        else:
            raise FileNotFoundError(f"no variables file or directory at {self.variables}")
        if not isinstance(variables, Mapping):
            raise ValueError(f"{self.variables} does not hold a dict of variables")
        if "params" not in variables:
            variables = {"params": variables}
        return Loaded(forward, jax.tree.map(jnp.asarray, dict(variables)))


@dataclasses.dataclass(frozen=True)
class PrecomputedOutputs:
    """Logits (or probabilities) and features computed elsewhere, as ``.npy`` files.

    ``outputs`` maps a target dataset name (``"digits"``, ``"fashion_mnist"``,
    ``"tfds:NAME"``, or the ``.npz`` path as written in ``--target``) to its
    ``(predictions_path, features_path)``; each file has one row per example of that
    dataset's training split (all rows of an ``.npz``), in the dataset's order, so one
    export serves every class subset of the dataset.
    """

    name: str
    outputs: Mapping[str, tuple[Path, Path]]
    from_logits: bool = True
    kind = "outputs"
    preprocess: Preprocess = Preprocess()

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "outputs": {k: [str(p) for p in v] for k, v in self.outputs.items()},
            "from_logits": self.from_logits,
        }

    def arrays(self, dataset: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(predictions, features)`` rows of ``dataset``, or ValueError naming the problem."""
        if dataset not in self.outputs:
            raise ValueError(f"no outputs given for target dataset {dataset!r}")
        result = []
        for what, path in zip(("predictions", "features"), self.outputs[dataset], strict=True):
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.ndim != 2:
                raise ValueError(f"{what} {path} must be 2-D [rows, k], got shape {array.shape}")
            if rows.size and int(rows.max()) >= array.shape[0]:
                raise ValueError(
                    f"{what} {path} has {array.shape[0]} rows; the target needs row "
                    f"{int(rows.max())} of dataset {dataset!r}"
                )
            result.append(np.asarray(array[rows]))
        return result[0], result[1]

    def load(self, shared: SharedModules | None = None) -> Loaded:
        del shared
        return Loaded(engine.given_outputs, None, self.from_logits)


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A model of the project's zoo (:mod:`leep_jax.transfer.zoo`), trained on first use."""

    spec: Any  # leep_jax.transfer.zoo.SourceSpec
    preprocess: Preprocess = Preprocess()
    kind = "builtin"

    @property
    def name(self) -> str:
        return self.spec.name

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "spec": self.spec.to_dict(),
            "preprocess": self.preprocess.describe(),
        }

    def load(self, shared: SharedModules | None = None) -> Loaded:
        from leep_jax.transfer.zoo import train_source_model

        del shared
        model = train_source_model(self.spec)
        graphdef, state = nnx.split(model)
        return Loaded(ModuleForward(graphdef), state)


@dataclasses.dataclass(frozen=True, eq=False)
class InMemoryModel:
    """An NNX model already in memory (the Python API and benchmarks)."""

    name: str
    model: nnx.Module
    preprocess: Preprocess = Preprocess()
    kind = "memory"

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "class": type(self.model).__name__,
            "preprocess": self.preprocess.describe(),
        }

    def load(self, shared: SharedModules | None = None) -> Loaded:
        del shared
        graphdef, state = nnx.split(self.model)
        return Loaded(ModuleForward(graphdef), state)


ModelEntry = NnxModel | LinenModel | PrecomputedOutputs | BuiltinModel | InMemoryModel
