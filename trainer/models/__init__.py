"""Model registry: an explicit map from config names to model builders.

Each model module exposes a frozen ``Config`` dataclass (its hyperparameters and
defaults), ``build_model(config, data_info, global_batch_size)`` and the
transformed features it reads. ``kind`` tells the experiment which evaluation
protocol and serving signature apply.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from trainer.models import bayesian_mf, bpr, gmf, mf, mlp, neumf


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    config_class: type
    build_model: Callable[..., Any]
    required_features: tuple[str, ...]
    # "rating": RMSE/MAE on eval, serving signature score(user_id, item_id).
    # "ranking": implicit feedback; trains on positives + fresh sampled negatives,
    # evaluates HR/NDCG/MRR on the pipeline's fixed candidates, serves score + recommend.
    kind: str
    # None: Keras fit() with the optimizer from the train section. Otherwise the
    # model's own training, fit(model, config, data_info, on_sweep) -> history
    # (a sampler has no gradient loop; single process only).
    fit: Callable[..., Any] | None = None


REGISTRY: dict[str, ModelSpec] = {
    "mf": ModelSpec("mf", mf.Config, mf.build_model, mf.REQUIRED_FEATURES, "rating"),
    "bayesian_mf": ModelSpec("bayesian_mf", bayesian_mf.Config, bayesian_mf.build_model, bayesian_mf.REQUIRED_FEATURES,
                             "rating", fit=bayesian_mf.fit),
    "gmf": ModelSpec("gmf", gmf.Config, gmf.build_model, gmf.REQUIRED_FEATURES, "ranking"),
    "mlp": ModelSpec("mlp", mlp.Config, mlp.build_model, mlp.REQUIRED_FEATURES, "ranking"),
    "neumf": ModelSpec("neumf", neumf.Config, neumf.build_model, neumf.REQUIRED_FEATURES, "ranking"),
    "bpr": ModelSpec("bpr", bpr.Config, bpr.build_model, bpr.REQUIRED_FEATURES, "ranking"),
}
