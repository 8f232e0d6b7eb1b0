"""Writes the train split of a pipeline output back as raw ``user<TAB>item<TAB>rating<TAB>timestamp`` rows.

Used to carve a validation split out of the TRAINING side only: rerun the
pipeline on this file (e.g. ``--split leave_one_out``, which then holds out each
user's latest *train* interaction) and tune on that, never on the test candidates::

    python -m workflows.train_side --data /tmp/ml100k_loo --output /tmp/ml100k_trainside.tsv
    python -m beam_pipelines.movielens --input /tmp/ml100k_trainside.tsv --format tab \\
        --split leave_one_out --num-negatives 99 --output /tmp/ml100k_val
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import trainer  # noqa: F401  (Keras 2 before TensorFlow)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.train_side", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="a pipeline output directory")
    parser.add_argument("--output", required=True, help="the tab-separated file to write (local or gs://)")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from schemas import ratings as F
    from trainer import data

    info = data.load_data_info(args.data)
    transform_output = info.transform_output()
    users = [v.decode() if isinstance(v, bytes) else str(v) for v in transform_output.vocabulary_by_name(F.USER_VOCAB)]
    items = [v.decode() if isinstance(v, bytes) else str(v) for v in transform_output.vocabulary_by_name(F.ITEM_VOCAB)]
    rows = 0
    with tf.io.gfile.GFile(args.output, "w") as handle:
        for batch in data.local_dataset(info, "train", 65536, keys=(F.USER_INDEX, F.ITEM_INDEX, F.RATING, F.TIMESTAMP)):
            for u, i, r, t in zip(*(batch[k].numpy() for k in (F.USER_INDEX, F.ITEM_INDEX, F.RATING, F.TIMESTAMP))):
                handle.write(f"{users[u]}\t{items[i]}\t{r:g}\t{t}\n")
                rows += 1
    print(f"train_side: {rows} rows -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
