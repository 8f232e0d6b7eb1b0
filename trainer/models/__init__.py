"""Model registry: an explicit map from config names to model builders.

Each model module exposes a frozen ``Config`` dataclass (its hyperparameters and
defaults), ``build_model(config, data_info, global_batch_size)`` and the
transformed features it reads. ``kind`` tells the experiment which evaluation
protocol and serving signature apply.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from trainer.models import mf


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    config_class: type
    build_model: Callable[..., Any]
    required_features: tuple[str, ...]
    kind: str  # "rating": RMSE/MAE on eval, serving signature score(user_id, item_id)


REGISTRY: dict[str, ModelSpec] = {
    "mf": ModelSpec("mf", mf.Config, mf.build_model, mf.REQUIRED_FEATURES, "rating"),
}
