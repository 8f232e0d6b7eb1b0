"""SavedModel export: serving signatures that take RAW ids.

The tf.Transform layer (vocabularies computed by the pipeline) is inside the
SavedModel, so clients send the same ids that are in the raw files and there is
no training/serving skew. An id the pipeline never saw maps to the OOV index and
gets the model's defined fallback; the outputs say which ids were known.
"""
from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from beam_pipelines import features as F


class RatingServer(tf.Module):
    """``serving_default`` / ``score``: (user_id, item_id) strings -> predicted rating."""

    def __init__(self, model: tf.keras.Model, transform_output, num_users: int, num_items: int):
        super().__init__()
        self.model = model
        self.tft_layer = transform_output.transform_features_layer()
        self.num_users = num_users
        self.num_items = num_items

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name=F.USER_ID),
            tf.TensorSpec([None], tf.string, name=F.ITEM_ID),
        ]
    )
    def score(self, user_id, item_id):
        transformed = self.tft_layer({F.USER_ID: user_id, F.ITEM_ID: item_id})
        users = transformed[F.USER_INDEX]
        items = transformed[F.ITEM_INDEX]
        rating = self.model({F.USER_INDEX: users, F.ITEM_INDEX: items}, training=False)
        return {"rating": rating, "known_user": users < self.num_users, "known_item": items < self.num_items}


def export_rating_model(model, info, export_dir: str, is_lead: bool) -> str:
    """Writes the SavedModel; non-lead workers write to a temporary directory.

    Every worker must call this under MultiWorkerMirroredStrategy (saving runs
    collectives); only the lead's copy is kept.

    Returns:
      The export directory that was kept ("" on non-lead workers).
    """
    server = RatingServer(model, info.transform_output(), info.num_users, info.num_items)
    target = export_dir if is_lead else tempfile.mkdtemp(prefix="export-worker-")
    if is_lead and tf.io.gfile.exists(target):
        tf.io.gfile.rmtree(target)
    tf.saved_model.save(server, target, signatures={"serving_default": server.score, "score": server.score})
    if not is_lead:
        shutil.rmtree(target, ignore_errors=True)
        return ""
    return target


def load_for_serving(export_dir: str):
    """Loads an export and returns its ``serving_default`` function."""
    if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
        raise FileNotFoundError(f"no SavedModel in {export_dir}")
    return tf.saved_model.load(export_dir).signatures["serving_default"]
