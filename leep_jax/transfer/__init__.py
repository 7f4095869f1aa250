"""Ground-truth transfer: the training recipe, source-model zoos, and the three methods.

* :mod:`.recipe`: `TrainConfig`, the one value that describes a training run (SGD +
  Nesterov, warmup-cosine schedule, kernel-only weight decay, crop/flip augmentation);
* :mod:`.train`: the jitted train / eval loops (`fit`, `predict`, `extract_features`);
* :mod:`.methods`: `retrain_head` (= `extract_features` + `train_head`), `fine_tune`,
  `train_from_scratch`, and `METHODS`, their names;
* :mod:`.zoo`: source-model specs, train-or-load through the cache;
* :mod:`.presets`: the zoos (`default_zoo`, `quick_zoo`, `tiny_zoo`, and RQ4's
  `selection_zoo`).
"""

from leep_jax.transfer.methods import (
    FINE_TUNE_RECIPE,
    HEAD_RECIPE,
    METHODS,
    SCRATCH_RECIPE,
    Method,
    TransferResult,
    fine_tune,
    retrain_head,
    train_from_scratch,
    train_head,
)
from leep_jax.transfer.presets import default_zoo, quick_zoo, tiny_zoo
from leep_jax.transfer.recipe import TrainConfig, sgd_recipe
from leep_jax.transfer.train import (
    FitHistory,
    evaluate,
    extract_features,
    fit,
    predict,
    predict_logits,
    recalibrate_batch_norm,
)
from leep_jax.transfer.zoo import (
    SourceSpec,
    load_zoo,
    source_metadata,
    train_source_model,
)

__all__ = [
    "FINE_TUNE_RECIPE",
    "HEAD_RECIPE",
    "METHODS",
    "SCRATCH_RECIPE",
    "FitHistory",
    "Method",
    "SourceSpec",
    "TrainConfig",
    "TransferResult",
    "default_zoo",
    "evaluate",
    "extract_features",
    "fine_tune",
    "fit",
    "load_zoo",
    "predict",
    "predict_logits",
    "quick_zoo",
    "recalibrate_batch_norm",
    "retrain_head",
    "sgd_recipe",
    "source_metadata",
    "tiny_zoo",
    "train_from_scratch",
    "train_head",
    "train_source_model",
]
