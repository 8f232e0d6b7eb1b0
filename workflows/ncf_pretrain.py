"""NeuMF with pre-training in one command: GMF, then MLP, then NeuMF initialised from both.

He et al. 2017 (sec. 3.4.1): train GMF and MLP to convergence, then start NeuMF
from their weights with the logit layer ``[alpha * h_gmf, (1 - alpha) * h_mlp]``.
Prints and writes the same table as ``workflows.leaderboard``::

    python -m workflows.ncf_pretrain --data /tmp/ml100k_loo --job-root /tmp/ncf [--set k=v] \\
        [--gmf-config configs/movielens_gmf.yaml] [--mlp-config ...] [--neumf-config ...]

Per-stage overrides: ``--gmf-config configs/movielens_gmf.yaml@train.epochs=5``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from workflows import leaderboard


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workflows.ncf_pretrain", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--job-root", required=True)
    parser.add_argument("--gmf-config", default="configs/movielens_gmf.yaml")
    parser.add_argument("--mlp-config", default="configs/movielens_mlp.yaml")
    parser.add_argument("--neumf-config", default="configs/movielens_neumf_pretrained.yaml")
    parser.add_argument("--set", action="append", default=[], help="override for all three stages")
    args = parser.parse_args(argv)
    from trainer import config as config_lib
    from trainer import data

    try:
        leaderboard.run_board(args.job_root, [(args.gmf_config, args.data), (args.mlp_config, args.data)], args.set,
                              pretrained_neumf=[(args.neumf_config, args.data)])
    except (config_lib.ConfigError, data.DataError) as error:
        print(f"ncf_pretrain: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
