"""The zoo file of ``leep-jax sweep``: a TOML list of the user's source models.

Each ``[[model]]`` table has a unique ``name`` and a ``kind``; relative paths and the
factories' modules are looked up beside the zoo file first::

    [[model]]
    name = "cnn-a"
    kind = "nnx"                              # NNX factory + orbax checkpoint
    factory = "my_models:make_cnn"            # package.module:callable
    kwargs = { width = 8, num_classes = 10 }
    checkpoint = "checkpoints/cnn-a"
    preprocess = { channels = 1, size = 28 }  # optional, see below

    [[model]]
    name = "mlp"
    kind = "linen"                            # flax.linen module + variables
    factory = "my_models:MLP"
    kwargs = { hidden = 32 }
    variables = "mlp.msgpack"                 # flax.serialization msgpack, or orbax dir
    features_layer = "Dense_0"                # or method = "logits_and_features"
    apply_kwargs = { train = false }          # optional

    [[model]]
    name = "exported"
    kind = "outputs"                          # precomputed, from any framework
    from_logits = true                        # false: probabilities
    [model.outputs.digits]                    # per target dataset
    logits = "exported/digits_logits.npy"     # [rows of the dataset's train split, Z]
    features = "exported/digits_features.npy" # [rows, D]

``preprocess`` keys: ``channels`` (1 or 3), ``size`` (square resize), ``mean`` and
``std`` (one or three numbers; images are in [0, 1] before normalisation). Outputs are
keyed by the dataset as ``--target`` names it; TOML needs quotes around a key with a
colon: ``[model.outputs."tfds:cifar10"]``.

A malformed file raises :class:`ZooFileError` naming the model and the key; problems
that only show when a model is loaded (a missing checkpoint, a factory that does not
import) are the sweep's failures, recorded per model.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from leep_jax.models.adapters import (
    BuiltinModel,
    LinenModel,
    ModelEntry,
    NnxModel,
    PrecomputedOutputs,
    Preprocess,
)

__all__ = ["BUILTIN_ZOOS", "ZooFileError", "builtin_zoo", "load_zoo_file", "resolve_zoo"]

BUILTIN_ZOOS = ("default", "tiny")
_IMAGE_SIZE = 28  # the built-in zoo is trained on 28x28 FashionMNIST

_KEYS = {
    "nnx": ({"factory", "checkpoint"}, {"kwargs"}),
    "linen": ({"factory", "variables"}, {"kwargs", "method", "features_layer", "apply_kwargs"}),
    "outputs": ({"outputs"}, {"from_logits"}),
}
_COMMON = {"name", "kind", "preprocess"}


class ZooFileError(ValueError):
    """A zoo file that cannot be read as a list of models (one line names the problem)."""


def builtin_zoo(name: str) -> list[ModelEntry]:
    """The entries of the built-in zoo ``"default"`` or ``"tiny"``."""
    from leep_jax.transfer import presets

    specs = presets.default_zoo() if name == "default" else presets.tiny_zoo()
    return [BuiltinModel(spec, Preprocess(channels=1, size=_IMAGE_SIZE)) for spec in specs]


def resolve_zoo(zoo: str) -> list[ModelEntry]:
    """A built-in zoo by name, or the models of a zoo file."""
    if zoo in BUILTIN_ZOOS:
        return builtin_zoo(zoo)
    return load_zoo_file(zoo)


def _get(table: dict, key: str, kind: type | tuple[type, ...], where: str) -> Any:
    value = table[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise ZooFileError(f"{where}: {key} must be a {names}, got {value!r}")
    return value


def _preprocess(value: Any, where: str) -> Preprocess:
    if value is None:
        return Preprocess()
    if not isinstance(value, dict):
        raise ZooFileError(f"{where}: preprocess must be a table, got {value!r}")
    unknown = set(value) - {"channels", "size", "mean", "std"}
    if unknown:
        raise ZooFileError(f"{where}: unknown preprocess key {sorted(unknown)[0]!r}")
    try:
        return Preprocess(**value)
    except (ValueError, TypeError) as error:
        raise ZooFileError(f"{where}: {error}") from None


def _model(table: Any, index: int, base: Path) -> ModelEntry:
    where = f"model {index + 1}"
    if not isinstance(table, dict):
        raise ZooFileError(f"{where}: must be a table")
    if "name" not in table:
        raise ZooFileError(f"{where}: missing key 'name'")
    name = _get(table, "name", str, where)
    where = f"model {name!r}"
    if not name.strip():
        raise ZooFileError(f"model {index + 1}: name is empty")
    kind = table.get("kind")
    if kind not in _KEYS:
        raise ZooFileError(f"{where}: kind must be one of {', '.join(_KEYS)}, got {kind!r}")
    required, optional = _KEYS[kind]
    missing = sorted(required - set(table))
    if missing:
        raise ZooFileError(f"{where}: missing key {missing[0]!r} for kind {kind!r}")
    unknown = sorted(set(table) - required - optional - _COMMON)
    if unknown:
        raise ZooFileError(f"{where}: unknown key {unknown[0]!r} for kind {kind!r}")
    preprocess = _preprocess(table.get("preprocess"), where)

    def path(value: Any, key: str) -> Path:
        if not isinstance(value, str) or not value:
            raise ZooFileError(f"{where}: {key} must be a path string, got {value!r}")
        return (base / Path(value).expanduser()).resolve()

    if kind == "outputs":
        outputs = _get(table, "outputs", dict, where)
        if not outputs:
            raise ZooFileError(f"{where}: outputs is empty")
        files = {}
        for dataset, pair in outputs.items():
            if not isinstance(pair, dict) or set(pair) != {"logits", "features"}:
                raise ZooFileError(
                    f"{where}: outputs.{dataset} must be a table with logits and features"
                )
            files[dataset] = (path(pair["logits"], "logits"), path(pair["features"], "features"))
        from_logits = _get(table, "from_logits", bool, where) if "from_logits" in table else True
        return PrecomputedOutputs(name, files, from_logits, preprocess=preprocess)

    factory = _get(table, "factory", str, where)
    module, sep, attribute = factory.partition(":")
    if not (module and sep and attribute):
        raise ZooFileError(f"{where}: factory must look like 'package.module:callable'")
    kwargs = _get(table, "kwargs", dict, where) if "kwargs" in table else {}
    if kind == "nnx":
        return NnxModel(
            name, factory, path(table["checkpoint"], "checkpoint"), kwargs, preprocess, base
        )
    method = _get(table, "method", str, where) if "method" in table else "__call__"
    layer = _get(table, "features_layer", str, where) if "features_layer" in table else None
    apply_kwargs = _get(table, "apply_kwargs", dict, where) if "apply_kwargs" in table else {}
    return LinenModel(
        name,
        factory,
        path(table["variables"], "variables"),
        kwargs,
        method,
        layer,
        apply_kwargs,
        preprocess,
        base,
    )


def load_zoo_file(path: str | Path) -> list[ModelEntry]:
    """The models of a TOML zoo file, in file order.

    Raises:
      ZooFileError: unreadable or invalid TOML, no models, a repeated name, a missing,
        unknown or mistyped key (the message names the model and the key).
    """
    path = Path(path).expanduser()
    try:
        document = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ZooFileError(
            f"zoo {str(path)!r} is neither a built-in zoo ({', '.join(BUILTIN_ZOOS)}) nor a file"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise ZooFileError(f"cannot read zoo file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ZooFileError(f"zoo file {path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - {"model"})
    if unknown:
        raise ZooFileError(f"zoo file {path}: unknown top-level key {unknown[0]!r}")
    tables = document.get("model")
    if not isinstance(tables, list) or not tables:
        raise ZooFileError(f"zoo file {path} lists no models (add [[model]] tables)")
    base = path.resolve().parent
    models = [_model(table, i, base) for i, table in enumerate(tables)]
    names = [m.name for m in models]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ZooFileError(f"zoo file {path}: model name {repeated[0]!r} appears twice")
    return models
