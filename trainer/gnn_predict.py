"""Predicted country distribution of one LastFM user from the exported GNN.

``python -m trainer.gnn_predict (--job-dir JOB | --export DIR) [--data OUT] --user-id ID [--top N]``

Every path may be local or gs:// (all reads go through ``tf.io.gfile``). Two answers:

* the final prediction, when the export has the ``by_user_id`` signature (a model
  trained with post-processing, Correct and Smooth or prior correction: the
  distribution of every user of the graph that its metrics measured); no ``--data`` needed;
* the GNN alone on the user's sampled subgraph (``serving_default``), found in
  ``OUT/{train,valid,test}/`` (the pipeline made one per labelled user in a split),
  when ``--data`` is given, or when the export has no ``by_user_id``.

Each prints the class probabilities, most likely first (``--top``: only the first N).
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from schemas import lastfm as schema  # noqa: E402


def find_subgraph(data: str, user_id: str) -> tuple[str, bytes, int] | None:
    """(split, serialized example, label) of ``user_id``'s subgraph, or None."""
    import tensorflow as tf

    for split in ("train", "valid", "test"):
        files = sorted(tf.io.gfile.glob(f"{data.rstrip('/')}/{split}/part-*.tfrecord.gz"))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            if example.features.feature[schema.CONTEXT_ROOT_ID_KEY].bytes_list.value[0].decode() == user_id:
                return split, record.numpy(), int(example.features.feature[schema.CONTEXT_LABEL_KEY].int64_list.value[0])
    return None


def _print_distribution(probabilities, top: int) -> None:
    order = probabilities.argsort()[::-1]
    for c in order[:top] if top else order:
        print(f"  class {int(c):2d}  {probabilities[c]:.4f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.gnn_predict", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--job-dir", help="the training job directory (its export/ is used)")
    where.add_argument("--export", help="the SavedModel directory itself (e.g. $AIP_MODEL_DIR)")
    parser.add_argument("--data", help="the pipeline output (for the GNN's answer on the user's subgraph)")
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--top", type=int, default=0, help="print only the top N classes (0: all)")
    args = parser.parse_args(argv)
    import tensorflow as tf
    import tensorflow_gnn  # noqa: F401  (registers GraphTensor types for loading)

    user = args.user_id.strip()
    export = (args.export or f"{args.job_dir.rstrip('/')}/export").rstrip("/")
    if not tf.io.gfile.exists(f"{export}/saved_model.pb"):
        print(f"gnn_predict: error: no SavedModel in {export}", file=sys.stderr)
        return 2
    loaded = tf.saved_model.load(export)  # kept referenced: the signatures use its variables
    signatures = loaded.signatures
    answered = False
    if "by_user_id" in signatures:
        out = signatures["by_user_id"](user_id=tf.constant([user]))
        if bool(out["known"].numpy()[0]):
            print(f"user {user}: predicted class {int(out['class'].numpy()[0])} "
                  "(final: the GNN and its post-processing over the whole graph, as the metrics measured)")
            _print_distribution(out["probabilities"].numpy()[0], args.top)
            answered = True
        elif not args.data:
            print(f"gnn_predict: error: user {user} is not a user of the graph the model in {export} was trained on",
                  file=sys.stderr)
            return 2
    elif not args.data:
        print(f"gnn_predict: error: {export} has no by_user_id signature (trained without post-processing); "
              "give --data OUT to classify the user's subgraph", file=sys.stderr)
        return 2
    if args.data:
        found = find_subgraph(args.data, user)
        if found is None:
            if answered:
                return 0
            print(f"gnn_predict: error: user {user} has no subgraph in {args.data}", file=sys.stderr)
            return 2
        split, record, label = found
        probabilities = signatures["serving_default"](examples=tf.constant([record]))["probabilities"].numpy()[0]
        print(f"user {user} ({split} split, true class {label}): predicted class {int(probabilities.argmax())} "
              "(GNN alone on the user's sampled subgraph)")
        _print_distribution(probabilities, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
