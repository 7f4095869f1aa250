"""Saving and loading source models with orbax, and where they live on disk.

A checkpoint is one orbax directory with two items, written together and committed
atomically (orbax writes to a temporary directory and renames it when complete, so an
interrupted save leaves no loadable half checkpoint):

* ``state``: the model's variables (parameters and BatchNorm running statistics) as a
  nested dict of arrays;
* ``metadata``: JSON with the architecture's registry name, its constructor arguments
  and the caller's free-form metadata (training configuration, source classes, ...),
  which is what lets :func:`load_model` rebuild the model without being told what it is.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from leep_jax.models.common import SourceModel, build_model

FORMAT_VERSION = 1
CACHE_ENV_VAR = "LEEP_JAX_CACHE"


def cache_dir() -> Path:
    """The project's cache directory: ``$LEEP_JAX_CACHE`` if set, else ``~/.cache/leep_jax``.

    The directory is not created here; :func:`save_model` creates parents as needed.
    """
    override = os.environ.get(CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    return Path.home() / ".cache" / "leep_jax"


def model_checkpoint_path(name: str) -> Path:
    """Where the cached source model called ``name`` lives: ``cache_dir() / "models" / name``.

    Args:
        name: a model identifier such as ``"resnet20-cifar10-seed0"``; one path component.

    Raises:
        ValueError: if ``name`` is empty, ``.``/``..``, or contains a path separator.
    """
    if not name or name in (".", "..") or "/" in name or os.sep in name:
        raise ValueError(
            f"model checkpoint name must be a single, non-empty path component, got {name!r}"
        )
    return cache_dir() / "models" / name


def _json_default(value: Any) -> Any:
    # NumPy scalars and arrays show up naturally in training configs and class lists.
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray | jax.Array):
        return np.asarray(value).tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"object of type {type(value).__name__} is not JSON serialisable")


def _model_identity(model: SourceModel) -> tuple[str, dict[str, Any]]:
    name = getattr(model, "name", None)
    config = getattr(model, "config", None)
    if not isinstance(name, str) or not callable(config):
        raise ValueError(
            f"{type(model).__name__} is not a registered leep_jax source model "
            "(it needs a registry `name` and a `config()` method)"
        )
    return name, config()


def _describe(name: str, config: dict[str, Any]) -> str:
    arguments = ", ".join(f"{key}={value!r}" for key, value in sorted(config.items()))
    return f"{name}({arguments})"


def _checkpointer() -> ocp.Checkpointer:
    # Synchronous: when save_model returns, the checkpoint is committed.
    return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def save_model(
    model: SourceModel,
    path: str | os.PathLike[str],
    *,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Saves a model's variables and metadata as one atomic orbax checkpoint.

    Args:
        model: a registered source model (:func:`leep_jax.models.build_model` names).
        path: the checkpoint directory to create (parents are created).
        metadata: free-form JSON-serialisable information stored alongside (NumPy
            scalars and arrays are converted to Python numbers and lists).
        overwrite: replace an existing checkpoint at ``path``. The old checkpoint is
            removed before the new one is committed, so an interruption can leave no
            checkpoint, but never a partial one.

    Returns:
        The absolute checkpoint path.

    Raises:
        ValueError: if the model is not a registered architecture, ``metadata`` is not
            JSON-serialisable, or ``path`` exists and ``overwrite`` is false.
    """
    name, config = _model_identity(model)
    try:
        # The round trip normalises NumPy values, so what load returns equals what was saved.
        user_metadata = json.loads(json.dumps(metadata or {}, default=_json_default))
    except (TypeError, ValueError) as error:
        raise ValueError(f"metadata must be JSON-serialisable: {error}") from error
    if not isinstance(user_metadata, dict):
        raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
    path = Path(path).expanduser().resolve()
    if path.exists() and not overwrite:
        raise ValueError(f"checkpoint {path} already exists (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)

    record = {
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "config": config,
        "metadata": user_metadata,
    }
    state = nnx.to_pure_dict(nnx.state(model))
    _checkpointer().save(
        path,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), metadata=ocp.args.JsonSave(record)
        ),
        force=overwrite,
    )
    return path


def load_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Reads a checkpoint's metadata without loading its arrays.

    Returns:
        ``{"format_version", "architecture", "config", "metadata"}``: the registry name,
        the constructor arguments and the free-form metadata given to :func:`save_model`.

    Raises:
        FileNotFoundError: if there is no checkpoint directory at ``path``.
        ValueError: if the directory is not a leep_jax model checkpoint, or is the
            temporary directory of an interrupted save.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"no model checkpoint at {path}")
    if not ocp.utils.is_checkpoint_finalized(path):
        raise ValueError(f"{path} is an unfinished (interrupted) checkpoint save")
    if not (path / "metadata").is_dir() or not (path / "state").is_dir():
        raise ValueError(
            f"{path} is not a leep_jax model checkpoint (expected 'state' and 'metadata' items)"
        )
    restored = _checkpointer().restore(
        path, args=ocp.args.Composite(metadata=ocp.args.JsonRestore())
    )
    record = restored["metadata"]
    version = record.get("format_version") if isinstance(record, dict) else None
    if version != FORMAT_VERSION:
        raise ValueError(
            f"{path} has checkpoint format version {version!r}; this leep_jax reads "
            f"version {FORMAT_VERSION}"
        )
    return record


def _restore_state(path: Path, model: SourceModel) -> None:
    """Reads the arrays into ``model`` in place, placed like the model's own arrays."""
    state = nnx.state(model)
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(
            leaf.shape, leaf.dtype, sharding=getattr(leaf, "sharding", None)
        ),
        nnx.to_pure_dict(state),
    )
    restored = _checkpointer().restore(
        path, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
    )
    nnx.replace_by_pure_dict(state, restored["state"])
    nnx.update(model, state)


def load_model(path: str | os.PathLike[str]) -> SourceModel:
    """Rebuilds the saved architecture from the checkpoint's metadata and loads its state.

    The model is built abstractly (no initialisation work) and filled with the saved
    parameters and BatchNorm running statistics, so its outputs equal the saved model's
    bit for bit on the same device.

    Returns:
        The model in evaluation mode (``model.eval()``: BatchNorm uses its running
        statistics); call ``model.train()`` before fine-tuning it.

    Raises:
        FileNotFoundError: if there is no checkpoint at ``path``.
        ValueError: if the checkpoint is not a leep_jax model checkpoint or names an
            unknown architecture.
    """
    path = Path(path).expanduser().resolve()
    record = load_metadata(path)
    # Abstract arrays (shapes and dtypes only) stand in until the saved ones replace them.
    model = nnx.eval_shape(
        lambda: build_model(record["architecture"], rngs=nnx.Rngs(0), **record["config"])
    )
    _restore_state(path, model)
    model.eval()
    return model


def restore_model(model: SourceModel, path: str | os.PathLike[str]) -> SourceModel:
    """Loads a checkpoint into an existing model of the same architecture, in place.

    The restored arrays take the placement (sharding) of the model's current arrays.
    The model's train/eval mode is left as it was.

    Returns:
        ``model``, for chaining.

    Raises:
        FileNotFoundError: if there is no checkpoint at ``path``.
        ValueError: if the checkpoint holds another architecture or other constructor
            arguments (class count, channels, width); the message names both.
    """
    path = Path(path).expanduser().resolve()
    record = load_metadata(path)
    name, config = _model_identity(model)
    if record["architecture"] != name or record["config"] != config:
        raise ValueError(
            f"checkpoint {path} holds {_describe(record['architecture'], record['config'])} "
            f"but the model is {_describe(name, config)}"
        )
    _restore_state(path, model)
    return model
