"""Rating prediction (explicit feedback): MF, Bayesian MF.

Inputs: the ratings pipeline's ``train/`` (shuffled, disjoint shards per
worker). The model owns its loss (a TFRS Ranking task with MSE). Evaluation:
RMSE and MAE over every row of ``valid`` or ``test`` with the pure functions of
``trainer.metrics``. Export: ``trainer.export.RatingServer``, a SavedModel whose
``serving_default`` / ``score`` take raw ``user_id`` and ``item_id`` strings
(the tf.Transform layer inside) and answer unknown ids (``known_user`` /
``known_item``).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from schemas import ratings as F
from trainer import data, export, metrics
from trainer.tasks.base import Metric, Task, traced

EVAL_KEYS = (F.USER_INDEX, F.ITEM_INDEX, F.RATING)


class RatingTask(Task):
    """RMSE/MAE rating prediction on the movielens pipeline's output."""

    kind = "rating"
    supports_refit = True
    schema = "ratings"
    pipeline = data.PIPELINES["ratings"]
    metrics = (Metric("rmse", "min"), Metric("mae", "min"))
    default_monitor = "rmse"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._module = self.spec.module()
        self.info = data.load_data_info(self.data_dir, self._module.REQUIRED_FEATURES, model=self.spec.name)
        self.dataset = data.Dataset(self.info.data_dir, self.info.summary)

    @property
    def data(self) -> data.DataInfo:
        return self.info

    def train_provider(self, per_replica_batch: int, splits: tuple[str, ...] = ("train",)) -> data.ShardedBatches:
        return data.ShardedBatches(self.info, splits, per_replica_batch, seed=self.train.seed,
                                   shuffle_buffer=self.train.shuffle_buffer, keys=self._module.REQUIRED_FEATURES)

    def build_model(self, global_batch_size: int):
        return self._module.build_model(self.hparams, self.info, global_batch_size)

    def warm_up(self, model) -> None:
        model(next(iter(data.local_dataset(self.info, "train", 2, keys=self._module.REQUIRED_FEATURES))))

    def evaluate(self, model, split: str) -> dict[str, Any]:
        """RMSE and MAE over every row of ``split`` (``{}`` when it has none)."""
        if not self.info.rows(split):
            return {}
        predict = traced(model, "predict", lambda: tf.function(lambda features: model(features, training=False)))
        predictions, targets = [], []
        for batch in data.local_dataset(self.info, split, self.train.eval_batch_size, keys=EVAL_KEYS):
            predictions.append(predict(batch).numpy())
            targets.append(batch[F.RATING].numpy())
        predicted, actual = np.concatenate(predictions), np.concatenate(targets)
        return {"rmse": metrics.rmse(predicted, actual), "mae": metrics.mae(predicted, actual),
                "num_examples": int(actual.size)}

    def export(self, model, export_dir: str) -> None:
        export.export_rating_model(model, self.info, export_dir)
