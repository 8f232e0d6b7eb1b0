"""Predicted country distribution of one LastFM user from the exported GNN.

``python -m trainer.gnn_predict (--job-dir JOB | --export DIR) --data OUT --user-id ID``

Finds the user's sampled subgraph in ``OUT/{train,valid,test}/`` (the pipeline
made one per labelled user), runs the SavedModel's ``serving_default`` on it
(``JOB/export``, or ``--export``: e.g. the job's ``$AIP_MODEL_DIR`` on Vertex AI)
and prints the class probabilities, most likely first.
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
        files = sorted(tf.io.gfile.glob(os.path.join(data, split, "part-*.tfrecord.gz")))
        for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
            example = tf.train.Example.FromString(record.numpy())
            if example.features.feature[schema.CONTEXT_ROOT_ID_KEY].bytes_list.value[0].decode() == user_id:
                return split, record.numpy(), int(example.features.feature[schema.CONTEXT_LABEL_KEY].int64_list.value[0])
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.gnn_predict", description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--job-dir", help="the training job directory (its export/ is used)")
    where.add_argument("--export", help="the SavedModel directory itself")
    parser.add_argument("--data", required=True)
    parser.add_argument("--user-id", required=True)
    parser.add_argument("--top", type=int, default=0, help="print only the top N classes (0: all)")
    args = parser.parse_args(argv)
    import tensorflow as tf
    import tensorflow_gnn  # noqa: F401  (registers GraphTensor types for loading)

    found = find_subgraph(args.data, args.user_id.strip())
    if found is None:
        print(f"gnn_predict: error: user {args.user_id} has no subgraph in {args.data}", file=sys.stderr)
        return 2
    split, record, label = found
    export = args.export or os.path.join(args.job_dir, "export")
    if not tf.io.gfile.exists(os.path.join(export, "saved_model.pb")):
        print(f"gnn_predict: error: no SavedModel in {export}", file=sys.stderr)
        return 2
    serve = tf.saved_model.load(export).signatures["serving_default"]
    probabilities = serve(examples=tf.constant([record]))["probabilities"].numpy()[0]
    order = probabilities.argsort()[::-1]
    if args.top:
        order = order[: args.top]
    print(f"user {args.user_id} ({split} split, true class {label}): predicted class {int(order[0])}")
    for c in order:
        print(f"  class {int(c):2d}  {probabilities[c]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
