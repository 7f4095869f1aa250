"""Flax NNX source models, their registry and checkpoints.

Every model follows one contract (see :mod:`leep_jax.models.common`): ``features(x)``
``[n, h, w, c] -> [n, feature_dim]``, a linear ``head``, ``__call__ = head(features(x))``,
and ``forward(model, x) -> (logits, features)`` in one pass. `score_zoo` scores many
models on one target set, looped or vmapped over stacked weights.
"""

from leep_jax.models.checkpoint import (
    cache_dir,
    load_metadata,
    load_model,
    model_checkpoint_path,
    restore_model,
    save_model,
)
from leep_jax.models.cnn import SmallCNN
from leep_jax.models.common import (
    SourceModel,
    build_model,
    check_images,
    count_params,
    forward,
    model_names,
)
from leep_jax.models.resnet import ResNet18, ResNet20
from leep_jax.models.zoo_scores import score_zoo, zoo_strategy

__all__ = [
    "ResNet18",
    "ResNet20",
    "SmallCNN",
    "SourceModel",
    "build_model",
    "cache_dir",
    "check_images",
    "count_params",
    "forward",
    "load_metadata",
    "load_model",
    "model_checkpoint_path",
    "model_names",
    "restore_model",
    "save_model",
    "score_zoo",
    "zoo_strategy",
]
