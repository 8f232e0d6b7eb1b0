"""The playlists data contract: raw id rules, output folders, vocabularies and feature keys.

Used by ``beam_pipelines.playlists`` and ``beam_pipelines.knn_pairing`` (which
write these files), ``rawdata.playlist_synth`` (which writes raw ids by the same
rules), and the playlist trainer and serving model (which read them). Nothing
here imports TensorFlow at import time.

Raw ids (what the vocabularies hold, one per line, sorted by code point; index =
line number, 0-based):

* user id: the input's ``user_id`` (Pichl: 32-hex hash of a Spotify user name),
  or ``mpd:<pid>`` for a Million Playlist Dataset playlist, which has no user:
  each MPD playlist is owned by a user of its own. A user id never contains
  ``/`` or white space.
* playlist id: ``<owner user id>/<playlist name>``. The owner holds no ``/``, so
  the first ``/`` splits the id unambiguously; the name may hold anything else.
  Names are cleaned once, the same way everywhere (``clean_text``): surrounding
  white space stripped, control characters and line/paragraph separators
  replaced by a space, so every id fits on one line of a vocabulary file.
* track id: ``<artist><US><track name>`` (US = ``\\x1f``, the ASCII unit
  separator, which ``clean_text`` never leaves in a name) for the Pichl layout,
  whose tracks have no ids; the ``track_uri`` (``spotify:track:...``) for MPD.

Indices: ``user_index``, ``playlist_index``, ``track_index`` are 0-based line
numbers of the vocabulary files; an id outside the vocabulary has no index
(the serving model maps it to the vocabulary size, its OOV index).
"""
from __future__ import annotations

import re

# --------------------------------------------------------------------------- raw ids
PLAYLIST_ID_SEPARATOR = "/"
TRACK_KEY_SEPARATOR = "\x1f"
MPD_OWNER_PREFIX = "mpd:"
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clean_text(text: str) -> str:
    """A name as it enters an id: stripped, control characters and line breaks made spaces."""
    if text.isprintable():  # the common case, and str.isprintable is much cheaper than the regex
        return text.strip()
    return _UNSAFE.sub(" ", text).strip()


def playlist_id(owner: str, name: str) -> str:
    """The raw playlist id of ``owner``'s playlist ``name`` (``name`` is cleaned here)."""
    return f"{owner}{PLAYLIST_ID_SEPARATOR}{clean_text(name)}"


def split_playlist_id(raw: str) -> tuple[str, str]:
    """``owner/name`` -> ``(owner, name)``; the name may contain ``/``.

    Raises:
      ValueError: no ``/``, or an empty owner or name.
    """
    owner, separator, name = raw.partition(PLAYLIST_ID_SEPARATOR)
    if not separator or not owner or not name:
        raise ValueError(f"playlist id {raw[:60]!r} is not <owner>/<name>")
    return owner, name


def track_id(artist: str, track_name: str) -> str:
    """The raw track id of a Pichl-layout row (artist and title are cleaned here)."""
    return f"{clean_text(artist)}{TRACK_KEY_SEPARATOR}{clean_text(track_name)}"


def mpd_owner(pid: int) -> str:
    """The user id that owns MPD playlist ``pid`` (the MPD has no user ids)."""
    return f"{MPD_OWNER_PREFIX}{pid}"


# --------------------------------------------------------------------------- output layout
SPLITS = ("train", "valid", "test")
PLAYLIST_TRACKS_DIR = "playlist_tracks"  # every playlist's tracks (content, see the pipeline docstring)
CANDIDATES_DIR = "candidates"  # per user: the KNN candidates (up to 75 playlists)
NEIGHBOURS_DIR = "neighbours"  # per user: the neighbours the pairing rule took
PAIRING_DIR = "pairing"  # pairing_report.json and the three histograms
PAIRING_REPORT = "pairing_report.json"
VOCAB_DIR = "vocab"
USER_VOCAB = "users.txt"
PLAYLIST_VOCAB = "playlists.txt"
TRACK_VOCAB = "tracks.txt"

# --------------------------------------------------------------------------- feature keys
# train/: one example per (user, collection playlist) kept for training.
USER_INDEX = "user_index"
PLAYLIST_INDEX = "playlist_index"
IS_OWNER = "is_owner"  # 1: the user owns the playlist, 0: follows it
# valid/, test/: one example per user with a held-out playlist.
NEGATIVE_PLAYLIST_INDEX = "negative_playlist_index"  # fixed sampled negatives, never in the user's collection
POSITIVE_IN_CANDIDATES = "positive_in_candidates"  # 1 when the held-out playlist is among the KNN candidates
# playlist_tracks/: one example per playlist.
TRACK_INDEX = "track_index"  # the playlist's distinct tracks, in playlist order
# candidates/: one example per user.
CANDIDATE_PLAYLIST_INDEX = "candidate_playlist_index"
NUM_REACHABLE = "num_reachable"  # playlists reachable through the neighbours (before sampling)
# neighbours/: one example per user.
NEIGHBOUR_USER_INDEX = "neighbour_user_index"  # most similar first
NEIGHBOUR_SIMILARITY = "neighbour_similarity"  # cosine, same order


def train_feature_spec():
    """tf.io feature spec of ``train/`` examples."""
    import tensorflow as tf

    return {
        USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
        PLAYLIST_INDEX: tf.io.FixedLenFeature([], tf.int64),
        IS_OWNER: tf.io.FixedLenFeature([], tf.int64),
    }


def eval_feature_spec():
    """tf.io feature spec of ``valid/`` and ``test/`` examples (negatives: up to ``num_negatives``)."""
    import tensorflow as tf

    return {
        USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
        PLAYLIST_INDEX: tf.io.FixedLenFeature([], tf.int64),
        IS_OWNER: tf.io.FixedLenFeature([], tf.int64),
        NEGATIVE_PLAYLIST_INDEX: tf.io.VarLenFeature(tf.int64),
        POSITIVE_IN_CANDIDATES: tf.io.FixedLenFeature([], tf.int64),
    }


def playlist_tracks_feature_spec():
    """tf.io feature spec of ``playlist_tracks/`` examples."""
    import tensorflow as tf

    return {PLAYLIST_INDEX: tf.io.FixedLenFeature([], tf.int64), TRACK_INDEX: tf.io.VarLenFeature(tf.int64)}


def candidates_feature_spec():
    """tf.io feature spec of ``candidates/`` examples."""
    import tensorflow as tf

    return {
        USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
        CANDIDATE_PLAYLIST_INDEX: tf.io.VarLenFeature(tf.int64),
        NUM_REACHABLE: tf.io.FixedLenFeature([], tf.int64),
    }


def neighbours_feature_spec():
    """tf.io feature spec of ``neighbours/`` examples."""
    import tensorflow as tf

    return {
        USER_INDEX: tf.io.FixedLenFeature([], tf.int64),
        NEIGHBOUR_USER_INDEX: tf.io.VarLenFeature(tf.int64),
        NEIGHBOUR_SIMILARITY: tf.io.VarLenFeature(tf.float32),
    }
