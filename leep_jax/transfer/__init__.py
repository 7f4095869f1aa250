"""Ground-truth transfer: the training recipe, source-model zoos, and the three methods.

* :mod:`.train`: the shared recipe (SGD + Nesterov, warmup-cosine schedule, kernel-only
  weight decay, crop/flip augmentation) and the compiled train / eval loops;
* :mod:`.methods`: `retrain_head`, `fine_tune`, `train_from_scratch`;
* :mod:`.zoo`: source-model specs, `default_zoo`, train-or-load through the cache.
"""

from leep_jax.transfer.methods import (
    TransferResult,
    fine_tune,
    retrain_head,
    train_from_scratch,
)
from leep_jax.transfer.train import (
    FitHistory,
    TrainConfig,
    evaluate,
    fit,
    predict,
    predict_logits,
    recalibrate_batch_norm,
    sgd_recipe,
)
from leep_jax.transfer.zoo import (
    SourceSpec,
    default_zoo,
    load_zoo,
    source_metadata,
    tiny_zoo,
    train_source_model,
)

__all__ = [
    "FitHistory",
    "SourceSpec",
    "TrainConfig",
    "TransferResult",
    "default_zoo",
    "evaluate",
    "fine_tune",
    "fit",
    "load_zoo",
    "predict",
    "predict_logits",
    "recalibrate_batch_norm",
    "retrain_head",
    "sgd_recipe",
    "source_metadata",
    "tiny_zoo",
    "train_from_scratch",
    "train_source_model",
]
