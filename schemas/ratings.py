"""Feature keys and vocabulary names shared by the pipelines and the trainer.

The raw schema (what the Beam stage hands to tf.Transform) is declared here once;
the transformed schema is whatever tf.Transform writes to
``OUTPUT/transformed_metadata`` and the trainer reads it from there.
"""
# Raw rating columns, in the order of the record batches handed to tf.Transform.
USER_ID = "user_id"
ITEM_ID = "item_id"
RATING = "rating"
TIMESTAMP = "timestamp"
NEGATIVE_ITEM_IDS = "negative_item_ids"  # leave-one-out eval rows only; else empty
RAW_RATING_COLUMNS = (USER_ID, ITEM_ID, RATING, TIMESTAMP, NEGATIVE_ITEM_IDS)

# Transformed features (written to train/ and eval/ TFRecords).
USER_INDEX = "user_index"
ITEM_INDEX = "item_index"
NEGATIVE_ITEM_INDEX = "negative_item_index"
RATING_MEAN = "rating_mean"  # train-side statistics computed by tf.Transform,
RATING_MIN = "rating_min"  # broadcast so the trainer and the serving model read
RATING_MAX = "rating_max"  # them from the transform graph itself.

# tf.Transform vocabulary file names (frequency-ordered; the OOV bucket is index = size).
USER_VOCAB = "user_id"
ITEM_VOCAB = "item_id"


def raw_rating_feature_spec():
    """tf.io feature spec of the raw rating rows."""
    import tensorflow as tf

    return {
        USER_ID: tf.io.FixedLenFeature([], tf.string),
        ITEM_ID: tf.io.FixedLenFeature([], tf.string),
        RATING: tf.io.FixedLenFeature([], tf.float32),
        TIMESTAMP: tf.io.FixedLenFeature([], tf.int64),
        NEGATIVE_ITEM_IDS: tf.io.VarLenFeature(tf.string),
    }
