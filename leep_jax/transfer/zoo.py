"""Source-model zoos: specifications, training with the shared recipe, and the cache.

No pretrained weights can be downloaded here, so the project trains its own source
models. A `SourceSpec` says everything that determines one: architecture and width,
source dataset and label set, training subset, recipe and seed. `train_source_model`
trains it once and saves it (orbax, `leep_jax.models.save_model`) under
``cache_dir()/models/<name>`` with the spec as metadata; later calls load it instead. A
cached model whose stored spec differs from the requested one is retrained (or, with
``on_mismatch="error"``, refused), so a changed spec never silently reuses stale weights.

The zoos themselves (`default_zoo`, `tiny_zoo`, `quick_zoo`) are in
`leep_jax.transfer.presets`. `load_zoo` trains what is missing, one model at a time,
saving each as soon as it is done, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from leep_jax.data import load_dataset
from leep_jax.models import build_model, count_params, load_metadata, load_model, save_model
from leep_jax.models.checkpoint import model_checkpoint_path
from leep_jax.transfer.train import TrainConfig, evaluate, fit

__all__ = [
    "SourceSpec",
    "load_zoo",
    "source_checkpoint_path",
    "source_metadata",
    "train_source_model",
]

# Bumped when the training code changes what a spec produces, so caches retrain.
ZOO_FORMAT = 1

OnMismatch = Literal["retrain", "error"]


@dataclasses.dataclass(frozen=True)
class SourceSpec:
    """Everything that determines one trained source model.

    Attributes:
        name: unique identifier, also the checkpoint directory name.
        architecture: a `leep_jax.models.build_model` name (``"resnet20"``,
            ``"small_cnn"``, ``"resnet18"``).
        classes: source-dataset class ids the model is trained on; source label ``z``
            stands for ``classes[z]``, so the model has ``len(classes)`` outputs.
        model_kwargs: extra constructor arguments, e.g. ``{"width": 2}``
            (``in_channels`` comes from the data).
        dataset: a `leep_jax.data.load_dataset` name.
        train_examples: size of the random training subset drawn from the chosen
            classes (None: all of them).
        test_examples: at most this many test examples of the chosen classes score the
            source accuracy stored with the checkpoint (None: all).
        epochs: passes over the training subset.
        batch_size: examples per step.
        learning_rate: peak learning rate (linear warmup, then cosine decay).
        weight_decay: L2 coefficient on kernels.
        crop_padding: random-crop padding in pixels.
        flip: random horizontal flips.
        seed: seeds the subset, the initialisation, the data order and augmentation.
    """

    name: str
    architecture: str
    classes: tuple[int, ...]
    model_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = "fashion_mnist"
    train_examples: int | None = None
    test_examples: int | None = 2000
    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 0.1
    weight_decay: float = 5e-4
    crop_padding: int = 2
    flip: bool = False
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))
        object.__setattr__(self, "model_kwargs", dict(self.model_kwargs))
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"spec name must be one path component, got {self.name!r}")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise ValueError(f"spec {self.name!r}: need >= 2 distinct classes, got {self.classes}")
        if "num_classes" in self.model_kwargs or "rngs" in self.model_kwargs:
            raise ValueError(
                f"spec {self.name!r}: model_kwargs may not set num_classes or rngs "
                "(they follow from classes and seed)"
            )
        for field in ("train_examples", "test_examples"):
            value = getattr(self, field)
            if value is not None and value < 1:
                raise ValueError(f"spec {self.name!r}: {field} must be >= 1 or None, got {value}")
        self.train_config()  # validates the recipe fields

    def train_config(self) -> TrainConfig:
        """The recipe this spec trains with."""
        return TrainConfig(
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            weight_decay=self.weight_decay,
            schedule="warmup_cosine",
            crop_padding=self.crop_padding,
            flip=self.flip,
            seed=self.seed,
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-normalised dict (lists for tuples) with the zoo format version."""
        record = dataclasses.asdict(self)
        record["zoo_format"] = ZOO_FORMAT
        return json.loads(json.dumps(record))


def source_checkpoint_path(spec: SourceSpec) -> Path:
    """Where the spec's model is cached: ``cache_dir()/models/<spec.name>``."""
    return model_checkpoint_path(spec.name)


def _select(
    images: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[int],
    limit: int | None,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Examples of ``classes`` relabelled to their index in ``classes``, at most ``limit``."""
    lookup = np.full(max(int(labels.max()), max(classes)) + 1, -1, np.int32)
    lookup[list(classes)] = np.arange(len(classes), dtype=np.int32)
    rows = np.flatnonzero(lookup[labels] >= 0)
    missing = sorted(set(classes) - set(np.unique(labels[rows]).tolist()))
    if missing:
        raise ValueError(f"classes {missing} have no examples")
    if limit is not None and limit < rows.size:
        rows = np.sort(rng.choice(rows, size=limit, replace=False))
    return images[rows], lookup[labels[rows]]


def _differences(stored: Any, wanted: dict[str, Any]) -> str:
    if not isinstance(stored, dict):
        return "no spec stored"
    keys = sorted(set(stored) | set(wanted))
    return ", ".join(
        f"{k}: cached {stored.get(k)!r} vs wanted {wanted.get(k)!r}"
        for k in keys
        if stored.get(k) != wanted.get(k)
    )


def source_metadata(spec: SourceSpec) -> dict[str, Any] | None:
    """The metadata stored with the spec's cached model, or None if none is cached.

    Keys: ``spec`` (`SourceSpec.to_dict`), ``source_test_accuracy``,
    ``source_test_accuracy_curve`` (after each epoch), ``num_params``,
    ``source_train_examples``, ``num_steps``, ``train_time_s`` (models cached by older
    versions lack the curve and the parameter count).
    """
    path = source_checkpoint_path(spec)
    if not path.exists():
        return None
    return load_metadata(path)["metadata"]


def train_source_model(
    spec: SourceSpec, *, progress: bool = False, on_mismatch: OnMismatch = "retrain"
) -> nnx.Module:
    """The trained source model of ``spec``: loaded from the cache, or trained and saved.

    Args:
        spec: what to train.
        progress: show a progress bar while training.
        on_mismatch: what to do when a checkpoint of that name exists but was trained
            from another spec (or is unreadable): ``"retrain"`` replaces it,
            ``"error"`` raises.

    Returns:
        The model in eval mode.

    Raises:
        ValueError: for a mismatched cache with ``on_mismatch="error"``, or bad specs.
    """
    if on_mismatch not in ("retrain", "error"):
        raise ValueError(f"on_mismatch must be 'retrain' or 'error', got {on_mismatch!r}")
    path = source_checkpoint_path(spec)
    wanted = spec.to_dict()
    if path.exists():
        try:
            stored = load_metadata(path)["metadata"].get("spec")
            problem = _differences(stored, wanted)
        except ValueError as error:  # unfinished save, foreign directory, old format
            problem = str(error)
        if not problem:
            return load_model(path)
        if on_mismatch == "error":
            raise ValueError(
                f"cached source model {spec.name!r} at {path} was trained from another "
                f"spec ({problem}); delete it or pass on_mismatch='retrain'"
            )

    start = time.perf_counter()
    rng = np.random.default_rng(spec.seed)
    train_images, train_labels = _select(
        *load_dataset(spec.dataset, "train"), spec.classes, spec.train_examples, rng
    )
    test_images, test_labels = _select(
        *load_dataset(spec.dataset, "test"), spec.classes, spec.test_examples, rng
    )
    model = build_model(
        spec.architecture,
        rngs=nnx.Rngs(spec.seed),
        num_classes=len(spec.classes),
        in_channels=int(train_images.shape[-1]),
        **spec.model_kwargs,
    )
    history = fit(
        model,
        train_images,
        train_labels,
        spec.train_config(),
        eval_images=test_images,
        eval_labels=test_labels,
        progress=progress,
        desc=spec.name,
    )
    accuracy = evaluate(model, test_images, test_labels)
    metadata = {
        "spec": wanted,
        "source_test_accuracy": accuracy,
        # After each epoch: whether training had converged shows in its last values.
        "source_test_accuracy_curve": list(history.test_accuracy),
        "num_params": count_params(model),
        "source_train_examples": int(train_labels.size),
        "num_steps": history.num_steps,
        "train_time_s": time.perf_counter() - start,
    }
    save_model(model, path, metadata=metadata, overwrite=path.exists())
    return model


def load_zoo(
    specs: Sequence[SourceSpec] | None = None,
    *,
    progress: bool = False,
    on_mismatch: OnMismatch = "retrain",
) -> dict[str, nnx.Module]:
    """Trained models for ``specs`` (default: `presets.default_zoo`), training the missing ones.

    Each model is saved as soon as it is trained, so an interrupted call resumes with
    the models still missing.

    Returns:
        ``{spec.name: model}`` in the order of ``specs``, every model in eval mode.

    Raises:
        ValueError: for duplicate names or a mismatched cache with
            ``on_mismatch="error"``.
    """
    if specs is None:
        from leep_jax.transfer.presets import default_zoo  # presets build on SourceSpec

        specs = default_zoo()
    specs = list(specs)
    names = [spec.name for spec in specs]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"duplicate source model names: {duplicates}")
    models = {}
    for spec in tqdm(specs, desc="source zoo", disable=not progress):
        models[spec.name] = train_source_model(spec, progress=progress, on_mismatch=on_mismatch)
    return models
