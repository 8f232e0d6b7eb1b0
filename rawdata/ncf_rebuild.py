"""Rebuilds the NCF paper's ML-1M train file from MovieLens ``ratings.dat``.

He et al. (2017) published ``ml-1m.test.rating`` / ``ml-1m.test.negative`` but
the train file is ``ratings.dat`` re-indexed: NCF user = UserID - 1, NCF item =
the order in which a MovieID first appears in ``ratings.dat`` (item 0 = the
movie on the first line), minus each user's held-out test row, listed by user in
descending timestamp order. When only a prefix of ``ratings.dat`` is at hand
(``../shared/data/ml-1m-partial``), pass ``--last-complete-user`` so the cut-off
user is dropped, and the test files are cut to the same users.

Usage::

    python -m rawdata.ncf_rebuild --ratings ../shared/data/ml-1m-partial/ratings.dat.prefix.gz \\
        --test-rating ../shared/data/ncf/ml-1m.test.rating --test-negative ../shared/data/ncf/ml-1m.test.negative \\
        --last-complete-user 2998 --output /tmp/ncf-ml-1m
"""
from __future__ import annotations

import argparse
import gzip
import os
import sys
from typing import Sequence


def _open(path: str):
    return gzip.open(path, "rt", encoding="latin-1") if path.endswith(".gz") else open(path, encoding="latin-1")


def rebuild(ratings_path: str, test_rating_path: str, last_complete_user: int | None) -> tuple[list[str], set[int]]:
    """Returns the NCF train lines and the NCF users they cover.

    Raises:
      ValueError: a user's held-out test row is not among that user's ratings.
    """
    item_index: dict[str, int] = {}
    by_user: dict[int, list[tuple[int, int, str]]] = {}
    with _open(ratings_path) as handle:
        for line in handle:
            fields = line.rstrip("\n").split("::")
            if len(fields) != 4:
                continue
            user_id, movie, rating, timestamp = int(fields[0]), fields[1], fields[2], int(fields[3])
            item = item_index.setdefault(movie, len(item_index))
            if last_complete_user is not None and user_id > last_complete_user:
                continue
            by_user.setdefault(user_id - 1, []).append((timestamp, item, rating))
    held_out: dict[int, tuple[int, int]] = {}
    with open(test_rating_path) as handle:
        for line in handle:
            user, item, _, timestamp = line.split("\t")
            held_out[int(user)] = (int(item), int(timestamp))
    lines = []
    for user in sorted(by_user):
        rows = by_user[user]
        test_item, test_time = held_out[user]
        matches = [r for r in rows if r[1] == test_item and r[0] == test_time]
        if not matches:
            raise ValueError(f"NCF user {user}: held-out item {test_item} at {test_time} is not in {ratings_path}")
        rows.remove(matches[0])
        for timestamp, item, rating in sorted(rows, key=lambda r: -r[0]):
            lines.append(f"{user}\t{item}\t{rating}\t{timestamp}\n")
    return lines, set(by_user)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawdata.ncf_rebuild", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", required=True, help="ratings.dat (or a gzip of a prefix of it)")
    parser.add_argument("--test-rating", required=True)
    parser.add_argument("--test-negative", required=True)
    parser.add_argument("--last-complete-user", type=int, help="MovieLens UserID of the last complete user")
    parser.add_argument("--output", required=True)
    args = parser.parse_args(argv)
    try:
        lines, users = rebuild(args.ratings, args.test_rating, args.last_complete_user)
    except (OSError, ValueError, KeyError) as error:
        print(f"ncf_rebuild: error: {error}", file=sys.stderr)
        return 2
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "ml-1m.train.rating"), "w") as handle:
        handle.writelines(lines)
    for source, name in ((args.test_rating, "ml-1m.test.rating"), (args.test_negative, "ml-1m.test.negative")):
        with open(source) as handle, open(os.path.join(args.output, name), "w") as out:
            # Both test files hold one line per NCF user, in user order.
            out.writelines(line for number, line in enumerate(handle) if number in users)
    print(f"ncf_rebuild: {len(lines)} train rows for {len(users)} users -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
