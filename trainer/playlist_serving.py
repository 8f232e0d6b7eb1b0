"""The playlists SavedModel: ``recommend(user_id)`` -> the top 5 raw playlist ids of the user's KNN candidates.

What the served system does, inside one SavedModel (raw ids in, raw ids out):

1. the raw ``user_id`` -> user index through the pipeline's vocabulary
   (``vocab/users.txt``, an asset of the SavedModel);
2. the user's KNN candidates (``candidates/``: the playlists of the paired
   neighbours, at most 75), minus every playlist of the user's collection
   (owned or followed, train and held out: the whole collection is known at
   serving time);
3. the ranker scores them (``PlaylistRanker.score``) and the top 5 are returned
   with their scores, ``from_candidates`` True;
4. fewer than 5 candidates left: the remaining slots are the most popular
   playlists (most members) not in the collection and not already chosen,
   ``from_candidates`` False, ``score`` = their member count;
5. an unknown user (or one with no candidate left) gets the 5 most popular
   playlists (outside their collection) and ``popular_fallback`` True.

Outputs (batch ``B``): ``playlist_id`` [B, 5] string, ``score`` [B, 5] float32,
``from_candidates`` [B, 5] bool, ``known_user`` [B] bool, ``popular_fallback`` [B]
bool, ``num_candidates`` [B] int32 (candidates scored).

Not TFRS ``factorized_top_k.BruteForce``: it indexes one fixed candidate set
for every query, and here every user has their own (at most 75), so scoring
the user's candidates directly is both exact and cheaper than any index.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import Sequence

import numpy as np
import tensorflow as tf

TOP_K = 5
SIGNATURE = "recommend"


class _Untracked:
    """Holds an object outside TensorFlow's object tracking (a plain attribute of a ``tf.Module`` is not saved)."""

    def __init__(self, model):
        self.model = model


class PlaylistServer(tf.Module):
    """``recommend(user_id)`` over the model's scores of each user's KNN candidates (see the module docstring).

    Args:
      model: a trained ``trainer.models.playlist_bpr.PlaylistRanker``.
      data: the ``trainer.playlists.PlaylistData`` it was trained on.
    """

    def __init__(self, model, data):
        super().__init__()
        # The export tracks the model's variables, not the Keras model: through the model it would
        # also save the optimizer and its Adam slots (3x the embeddings: 1.1 GB instead of 0.3 GB
        # for the id-only BPR at 100k users). ``recommend`` calls ``model.score`` through a plain
        # (untracked) holder; every variable it reads is one of these.
        self.model_variables = list(model.variables)
        self._ranker = _Untracked(model)
        self.num_users = data.num_users
        self.num_playlists = data.num_playlists
        self.user_index = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(data.vocab["users"], tf.string, tf.lookup.TextFileIndex.WHOLE_LINE,
                                          tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER), default_value=-1)
        self.playlist_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(data.vocab["playlists"], tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER,
                                          tf.string, tf.lookup.TextFileIndex.WHOLE_LINE), default_value="")
        # Variables rather than constants: stored once in variables/, not inlined into the graph.
        self.candidate_offsets = tf.Variable(data.candidates.offsets, trainable=False, name="candidate_offsets")
        self.candidate_values = tf.Variable(data.candidates.values, trainable=False, name="candidate_values")
        keys = data.collection_keys()
        self.collection_keys = tf.Variable(keys, trainable=False, name="collection_keys")
        stride = self.num_playlists + 1
        members = np.bincount(keys % stride, minlength=self.num_playlists)[: self.num_playlists]
        largest = int(np.bincount(keys // stride).max(initial=0))
        # Enough popular playlists that TOP_K remain after removing any collection and the chosen candidates.
        popular = np.argsort(-members, kind="stable")[: largest + 2 * TOP_K].astype(np.int64)
        padding = max(0, 2 * TOP_K - len(popular))  # a tiny catalogue: -1 marks "no playlist left"
        self.popular = tf.constant(np.concatenate([popular, np.full(padding, -1, np.int64)]))
        self.popular_members = tf.constant(np.concatenate([members[popular], np.zeros(padding)]).astype(np.float32))

    def _in_collection(self, users, playlists):
        """``users [B]``, ``playlists [B, C]`` -> bool ``[B, C]``: the user has the playlist."""
        query = users[:, None] * (self.num_playlists + 1) + playlists
        flat = tf.reshape(query, [-1])
        keys = self.collection_keys
        position = tf.minimum(tf.searchsorted(keys, flat, out_type=tf.int64), tf.size(keys, out_type=tf.int64) - 1)
        return tf.reshape(tf.equal(tf.gather(keys, position), flat), tf.shape(query))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id")])
    def recommend(self, user_id):
        users = self.user_index.lookup(user_id)
        known = users >= 0
        safe = tf.where(known, users, tf.zeros_like(users))
        batch = tf.shape(users)[0]
        starts = tf.gather(self.candidate_offsets, safe)
        lengths = (tf.gather(self.candidate_offsets, safe + 1) - starts) * tf.cast(known, tf.int64)
        positions = tf.ragged.range(starts, starts + lengths)
        candidates = tf.gather(self.candidate_values, positions).to_tensor(default_value=-1)  # [B, C]
        candidates = tf.concat([candidates, tf.fill([batch, TOP_K], tf.constant(-1, tf.int64))], 1)  # C >= TOP_K
        usable = (candidates >= 0) & ~self._in_collection(safe, tf.maximum(candidates, 0)) & known[:, None]
        scores = self._ranker.model.score(safe, tf.maximum(candidates, 0))
        scores = tf.where(usable, scores, tf.fill(tf.shape(scores), float("-inf")))
        top_scores, top_columns = tf.math.top_k(scores, k=TOP_K)
        top_items = tf.gather(candidates, top_columns, batch_dims=1)
        chosen = tf.reduce_sum(tf.cast(top_scores > float("-inf"), tf.int32), axis=1)  # [B] usable candidates picked

        popular = tf.broadcast_to(self.popular[None, :], [batch, tf.size(self.popular)])
        taken = tf.reduce_any(tf.equal(popular[:, :, None], top_items[:, None, :])
                              & (tf.range(TOP_K)[None, None, :] < chosen[:, None, None]), axis=2)
        free = (popular >= 0) & (~self._in_collection(safe, tf.maximum(popular, 0)) | ~known[:, None]) & ~taken
        popular_key = tf.where(free, self.popular_members[None, :] + 1.0, tf.zeros_like(popular, tf.float32))
        keys, popular_columns = tf.math.top_k(popular_key, k=TOP_K)  # most members first; ties: earlier first
        # A slot no free playlist can fill (a catalogue smaller than collection + 5) stays empty: id "", score -inf.
        popular_items = tf.where(keys > 0, tf.gather(popular, popular_columns, batch_dims=1), -tf.ones_like(keys, tf.int64))
        popular_scores = tf.where(keys > 0, keys - 1.0, tf.fill(tf.shape(keys), float("-inf")))

        slot = tf.range(TOP_K)[None, :]
        from_candidates = slot < chosen[:, None]
        fill = tf.maximum(slot - chosen[:, None], 0)
        items = tf.where(from_candidates, top_items, tf.gather(popular_items, fill, batch_dims=1))
        values = tf.where(from_candidates, top_scores, tf.gather(popular_scores, fill, batch_dims=1))
        return {
            "playlist_id": self.playlist_id.lookup(items),
            "score": values,
            "from_candidates": from_candidates,
            "known_user": known,
            "popular_fallback": chosen == 0,
            "num_candidates": tf.reduce_sum(tf.cast(usable, tf.int32), axis=1),
        }


def export_playlist_model(model, data, export_dir: str) -> None:
    """Writes the SavedModel (``serving_default`` = ``recommend``) to ``export_dir``, replacing an earlier one.

    Under MultiWorkerMirroredStrategy every worker calls this (saving runs collectives);
    the experiment gives non-lead workers a temporary directory.
    """
    server = PlaylistServer(model, data)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.saved_model.save(server, export_dir, signatures={"serving_default": server.recommend,
                                                        SIGNATURE: server.recommend})


@dataclasses.dataclass(frozen=True)
class Recommendations:
    """What ``recommend`` answered for one user, decoded.

    Attributes:
      user_id: the raw user id asked for.
      known_user: the id is in the pipeline's user vocabulary.
      popular_fallback: no candidate could be served: every playlist is a popular one.
      num_candidates: the user's candidates scored (not in their collection).
      playlists: up to ``TOP_K`` ``(raw playlist id, score, from_candidates)``, best first;
        ``from_candidates`` False: a popular playlist filling a slot (score = its member count).
    """

    user_id: str
    known_user: bool
    popular_fallback: bool
    num_candidates: int
    playlists: list[tuple[str, float, bool]]


class Recommender:
    """A playlists export's ``recommend`` signature on raw user ids (keeps the loaded SavedModel alive).

    Args:
      export_dir: ``JOB/export`` of a playlist ranker (local or gs://).

    Raises:
      FileNotFoundError: no SavedModel there.
      KeyError: a SavedModel without a ``recommend`` signature (not a playlists export).
    """

    def __init__(self, export_dir: str):
        if not tf.io.gfile.exists(os.path.join(export_dir, "saved_model.pb")):
            raise FileNotFoundError(f"no SavedModel in {export_dir}")
        self._loaded = tf.saved_model.load(export_dir)  # the signature reads its variables: keep it referenced
        signatures = self._loaded.signatures
        if SIGNATURE not in signatures:
            raise KeyError(f"{export_dir} has no {SIGNATURE!r} signature (signatures: {', '.join(signatures)}); "
                           "is it a playlist ranker's export?")
        self.signature = signatures[SIGNATURE]

    def __call__(self, user_ids: Sequence[str]) -> list[Recommendations]:
        """Recommendations for each raw user id, in order."""
        out = {k: v.numpy() for k, v in self.signature(user_id=tf.constant(list(user_ids), tf.string)).items()}
        answers = []
        for row, user in enumerate(user_ids):
            slots = [(out["playlist_id"][row, j].decode("utf-8"), float(out["score"][row, j]),
                      bool(out["from_candidates"][row, j])) for j in range(out["playlist_id"].shape[1])]
            answers.append(Recommendations(
                user_id=user, known_user=bool(out["known_user"][row]),
                popular_fallback=bool(out["popular_fallback"][row]),
                num_candidates=int(out["num_candidates"][row]),
                playlists=[slot for slot in slots if slot[0]]))  # "" marks a slot no playlist could fill
        return answers


def describe(answer: Recommendations) -> list[str]:
    """The console lines of one user's recommendations."""
    if not answer.known_user:
        head = f"user {answer.user_id}: unknown user -> the most popular playlists (popular_fallback)"
    elif answer.popular_fallback:
        head = f"user {answer.user_id}: no candidate left to score -> the most popular playlists (popular_fallback)"
    else:
        head = f"user {answer.user_id}: {answer.num_candidates} KNN candidates scored"
    lines = [head]
    for rank, (playlist, score, from_candidates) in enumerate(answer.playlists, 1):
        source = "candidate, model score" if from_candidates else "popular, members"
        lines.append(f"  {rank}. {playlist}  {score:.4f}  ({source})")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m trainer.playlist_serving --export JOB/export USER_ID [USER_ID ...]``: prints recommendations."""
    parser = argparse.ArgumentParser(prog="python -m trainer.playlist_serving",
                                     description="Top-5 playlist recommendations of a playlist ranker's export.")
    parser.add_argument("--export", required=True, help="JOB/export of playlists_bpr / playlists_tracks_bpr")
    parser.add_argument("user_id", nargs="+", help="raw user ids (vocab/users.txt of the pipeline output)")
    args = parser.parse_args(argv)
    try:
        recommender = Recommender(args.export)
    except (FileNotFoundError, KeyError) as error:
        print(f"playlist_serving: error: {error.args[0]}", file=sys.stderr)
        return 2
    for answer in recommender(args.user_id):
        print("\n".join(describe(answer)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
