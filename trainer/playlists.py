"""The playlists pipeline output as the trainer reads it, and the playlist ranking metrics.

Owns reading and checking ``beam_pipelines.playlists``'s output (layout:
``schemas.playlists`` and the pipeline's docstring) into NumPy arrays once per
job, and the two evaluation protocols every playlist ranker (and the
popularity baseline) is measured by:

* **sampled** (``valid/``, ``test/``): each held-out positive against the
  pipeline's 50 fixed negatives (never in the user's collection): MRR,
  Hit@K = HR@K, NDCG@K by ``trainer.metrics.sampled_ranking_metrics`` (ties
  count against the model).
* **production path** (``knn_*``): what the served system does. For each
  held-out example, the user's KNN candidates (``candidates/``, at most 75,
  never a train-side playlist of the user) are ranked by the model, with the
  user's *other* held-out playlist removed (it is neither the positive nor a
  negative: the user has it). If the positive is among the candidates its rank
  is the number of other candidates scoring at least as high (ties against the
  model); if it is not, it counts as a miss at every cut-off and adds 0 to the
  MRR. So ``knn_hit@K`` = P(positive in candidates and ranked < K), bounded by
  ``knn_candidate_recall``; ``knn_in_*`` are the same metrics over only the
  examples whose positive is a candidate (how well the ranker orders the
  candidates it is given). ``candidate_ranking_metrics`` is the pure function.

Nothing here trains; the arrays are what ``trainer.tasks.playlist_ranking``,
the models (playlist -> tracks tables), the serving export and
``baselines.playlist_popularity`` share.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import tensorflow as tf

from schemas import playlists as S
from trainer import data as data_lib
from trainer import metrics, ranking

PIPELINE = data_lib.PIPELINES["playlists"]
EVAL_SPLITS = ("valid", "test")
KS = (1, 5, 10)
READ_BATCH = 65536


@dataclasses.dataclass(frozen=True)
class CSR:
    """Rows of int64 values in compressed sparse row layout: row ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""

    offsets: np.ndarray
    values: np.ndarray

    @property
    def num_rows(self) -> int:
        return len(self.offsets) - 1

    def row(self, i: int) -> np.ndarray:
        """The values of row ``i``."""
        return self.values[self.offsets[i]:self.offsets[i + 1]]

    def lengths(self) -> np.ndarray:
        """``[num_rows]`` values per row."""
        return np.diff(self.offsets)

    def dense(self, rows: np.ndarray, width: int | None = None, fill: int = -1) -> np.ndarray:
        """``[len(rows), width]`` the rows' values, left-aligned, padded with ``fill`` (width: the longest row)."""
        rows = np.asarray(rows, np.int64)
        lengths = self.lengths()[rows]
        width = int(lengths.max(initial=0)) if width is None else width
        out = np.full((len(rows), width), fill, np.int64)
        column = np.arange(width)[None, :]
        inside = column < lengths[:, None]
        out[inside] = self.values[(self.offsets[rows][:, None] + column)[inside]]
        return out

    @classmethod
    def from_rows(cls, row_index: np.ndarray, lengths: np.ndarray, values: np.ndarray, num_rows: int) -> "CSR":
        """Rows given in any order (``row_index[j]`` has ``lengths[j]`` values, back to back in ``values``) -> CSR.

        Rows not given are empty; a row given twice is an error (``ValueError``).
        """
        row_index, lengths = np.asarray(row_index, np.int64), np.asarray(lengths, np.int64)
        if len(np.unique(row_index)) != len(row_index):
            raise ValueError("a row is listed twice")
        if len(row_index) and (row_index.min() < 0 or row_index.max() >= num_rows):
            raise ValueError(f"row index outside 0..{num_rows - 1}")
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        full = np.zeros(num_rows, np.int64)
        full[row_index] = lengths
        offsets = np.concatenate([[0], np.cumsum(full)]).astype(np.int64)
        order = np.argsort(row_index, kind="stable")
        gather = (np.repeat(starts[order] - offsets[row_index[order]], lengths[order])
                  + np.arange(int(lengths.sum()))) if len(row_index) else np.zeros(0, np.int64)
        return cls(offsets, np.asarray(values, np.int64)[gather])


@dataclasses.dataclass(frozen=True)
class EvalRows:
    """One held-out split: a row per example (one per user that has a held-out playlist there).

    Attributes:
      users: ``[U]`` user indices.
      positives: ``[U]`` the held-out playlist.
      negatives: ``[U, N]`` the fixed sampled negatives, padded with -1 (a user short of negatives).
      positive_in_candidates: ``[U]`` bool, as the pipeline wrote it.
    """

    users: np.ndarray
    positives: np.ndarray
    negatives: np.ndarray
    positive_in_candidates: np.ndarray

    @property
    def size(self) -> int:
        return int(self.users.size)

    def sampled_candidates(self) -> tuple[np.ndarray, np.ndarray]:
        """``(items [U, 1 + N], valid [U, 1 + N])``: the positive in column 0, then the negatives."""
        items = np.concatenate([self.positives[:, None], self.negatives], axis=1)
        valid = items >= 0
        return np.where(valid, items, self.positives[:, None]), valid


@dataclasses.dataclass(frozen=True)
class PlaylistData:
    """A checked playlists pipeline output, as arrays.

    Attributes:
      dataset: the checked ``dataset.json`` contract (splits, shard files).
      num_users, num_playlists, num_tracks: vocabulary sizes (index = line of the vocabulary file).
      train_items: every train (user, playlist) membership, sorted keys + playlist popularity.
      train_users, train_playlists: the train memberships, as the pipeline listed them.
      playlist_tracks: playlist -> its distinct tracks (every playlist, held-out ones included).
      candidates: user -> KNN candidate playlists (ascending; empty for a user with none).
      evals: ``valid`` and ``test`` rows.
      vocab: ``users``, ``playlists``, ``tracks`` -> vocabulary file path.
    """

    dataset: data_lib.Dataset
    num_users: int
    num_playlists: int
    num_tracks: int
    train_items: ranking.TrainItems
    train_users: np.ndarray
    train_playlists: np.ndarray
    playlist_tracks: CSR
    candidates: CSR
    evals: dict[str, EvalRows]
    vocab: dict[str, str]

    @property
    def data_dir(self) -> str:
        return self.dataset.data_dir

    def held_out(self, split: str) -> np.ndarray:
        """``[num_users]`` each user's held-out playlist of ``split``, -1 when none."""
        out = np.full(self.num_users, -1, np.int64)
        rows = self.evals[split]
        out[rows.users] = rows.positives
        return out

    def collection_keys(self) -> np.ndarray:
        """Sorted ``user * (num_playlists + 1) + playlist`` of every membership: train and held out (serving excludes them)."""
        users = np.concatenate([self.train_users, *(self.evals[s].users for s in EVAL_SPLITS)])
        playlists = np.concatenate([self.train_playlists, *(self.evals[s].positives for s in EVAL_SPLITS)])
        return np.unique(users * (self.num_playlists + 1) + playlists)

    def user_tracks(self) -> CSR:
        """User -> the distinct tracks of their *train* collection (held-out playlists never reach it)."""
        playlists = self.playlist_tracks
        lengths = playlists.lengths()[self.train_playlists]
        users = np.repeat(self.train_users, lengths)
        starts = np.repeat(playlists.offsets[self.train_playlists] - np.concatenate([[0], np.cumsum(lengths)[:-1]]),
                           lengths)
        tracks = playlists.values[starts + np.arange(int(lengths.sum()))]
        keys = np.unique(users * np.int64(self.num_tracks + 1) + tracks)
        key_users = keys // (self.num_tracks + 1)
        offsets = np.concatenate([[0], np.cumsum(np.bincount(key_users, minlength=self.num_users))]).astype(np.int64)
        return CSR(offsets, keys % (self.num_tracks + 1))

    def knn_candidates(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The production-path rows of ``split`` (see the module docstring).

        Returns:
          ``(items [U, 1 + C], valid [U, 1 + C], in_candidates [U])``: column 0 is
          the positive, the other columns the user's candidates without the
          positive and without the user's other held-out playlist (padding
          invalid); ``in_candidates`` says whether the positive is a candidate.
        """
        rows = self.evals[split]
        other = self.held_out("test" if split == "valid" else "valid")[rows.users]
        dense = self.candidates.dense(rows.users)
        if dense.shape[1] == 0:
            dense = np.full((rows.size, 1), -1, np.int64)
        is_positive = dense == rows.positives[:, None]
        in_candidates = is_positive.any(axis=1)
        others = (dense >= 0) & ~is_positive & (dense != other[:, None])
        items = np.concatenate([rows.positives[:, None], np.where(others, dense, rows.positives[:, None])], axis=1)
        valid = np.concatenate([np.ones((rows.size, 1), bool), others], axis=1)
        return items, valid, in_candidates


# --------------------------------------------------------------------------- metrics (pure NumPy)
def candidate_ranking_metrics(scores: np.ndarray, valid: np.ndarray, in_candidates: np.ndarray,
                              ks: tuple[int, ...] = KS, prefix: str = "knn_") -> dict[str, float]:
    """Ranking metrics over per-user candidate sets that may not hold the positive.

    Args:
      scores: ``[U, 1 + C]`` scores; column 0 is the positive, the others the candidates.
      valid: ``[U, 1 + C]`` bool; False marks padding (column 0 is always scored).
      in_candidates: ``[U]`` bool; False: the positive is not a candidate, a miss at every cut-off.
      ks: cut-offs.
      prefix: prepended to every key.

    Returns:
      ``{prefix + "hr@K" / "hit@K" / "ndcg@K", "mrr"}`` over all U examples (a miss adds 0),
      ``prefix + "in_" + the same`` over the examples whose positive is a candidate,
      ``prefix + "candidate_recall"`` (their share), ``num_users`` and ``mean_candidates``.

    Raises:
      ValueError: no examples, or shapes that do not match.
    """
    in_candidates = np.asarray(in_candidates, bool)
    ranks = metrics.positive_ranks(scores, valid).astype(np.float64)
    if ranks.shape != in_candidates.shape:
        raise ValueError(f"{in_candidates.shape[0]} in_candidates flags for {ranks.shape[0]} rows")
    ranks = np.where(in_candidates, ranks, np.inf)  # 1 / (inf + 1) = 0 and inf < k is False: a miss everywhere
    result: dict[str, float] = {}
    inside = ranks[in_candidates]
    for name, values in (("", ranks), ("in_", inside)):
        if values.size == 0:
            continue
        for k in ks:
            result[f"{prefix}{name}hr@{k}"] = metrics.hit_rate(values, k)
            result[f"{prefix}{name}hit@{k}"] = result[f"{prefix}{name}hr@{k}"]
            result[f"{prefix}{name}ndcg@{k}"] = metrics.ndcg(values, k)
        result[f"{prefix}{name}mrr"] = metrics.mrr(values)
    result[f"{prefix}candidate_recall"] = float(in_candidates.mean())
    result[f"{prefix}num_users"] = int(ranks.size)
    # Candidates per example, the positive counted when it is one.
    result[f"{prefix}mean_candidates"] = float((np.asarray(valid, bool)[:, 1:].sum(axis=1) + in_candidates).mean())
    return result


def evaluate_scores(score, rows: EvalRows, knn: tuple[np.ndarray, np.ndarray, np.ndarray]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Both protocols for one split, given a scoring function.

    Args:
      score: ``(users [U], items [U, C]) -> scores [U, C]`` (NumPy in and out).
      rows: the split's examples.
      knn: ``PlaylistData.knn_candidates(split)``.

    Returns:
      ``(metrics, ranks)``: the sampled metrics (``mrr``, ``hit@K``, ...) and the
      ``knn_*`` metrics in one dict; ``ranks`` holds ``sampled`` and ``knn`` 0-based
      ranks of the positive (``knn``: -1 when the positive is not a candidate) for plots.
    """
    if rows.size == 0:
        return {}, {}
    items, valid = rows.sampled_candidates()
    sampled_scores = score(rows.users, items)
    result: dict[str, Any] = metrics.sampled_ranking_metrics(sampled_scores, valid)
    knn_items, knn_valid, in_candidates = knn
    knn_scores = score(rows.users, knn_items)
    result.update(candidate_ranking_metrics(knn_scores, knn_valid, in_candidates))
    knn_ranks = np.where(in_candidates, metrics.positive_ranks(knn_scores, knn_valid), -1)
    return result, {"sampled": metrics.positive_ranks(sampled_scores, valid), "knn": knn_ranks}


# --------------------------------------------------------------------------- reading
def _read(files: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    """Every example of ``files``: fixed features as ``[n]`` arrays, var-len ones as ``(lengths, values)``."""
    fixed: dict[str, list[np.ndarray]] = {}
    ragged: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
    if files:
        for batch in data_lib.parsed_dataset(files, spec, READ_BATCH, shuffle=False):
            for key, value in batch.items():
                if isinstance(value, tf.SparseTensor):
                    as_ragged = tf.RaggedTensor.from_sparse(value)
                    lengths, values = ragged.setdefault(key, ([], []))
                    lengths.append(as_ragged.row_lengths().numpy())
                    values.append(as_ragged.flat_values.numpy())
                else:
                    fixed.setdefault(key, []).append(value.numpy())
    out: dict[str, Any] = {}
    for key, feature in spec.items():
        if isinstance(feature, tf.io.VarLenFeature):
            lengths, values = ragged.get(key, ([], []))
            out[key] = (np.concatenate(lengths).astype(np.int64) if lengths else np.zeros(0, np.int64),
                        np.concatenate(values).astype(np.int64) if values else np.zeros(0, np.int64))
        else:
            out[key] = np.concatenate(fixed[key]).astype(np.int64) if key in fixed else np.zeros(0, np.int64)
    return out


def _table_files(dataset: data_lib.Dataset, name: str) -> list[str]:
    """The listed shard files of a table (``playlist_tracks``, ``candidates``); every one must exist."""
    entry = dataset.summary.get("tables", {}).get(name)
    if entry is None:
        raise data_lib.DataError(f"{dataset.data_dir}/dataset.json lists no {name} table; rerun {PIPELINE}")
    files = [f"{dataset.data_dir}/{f}" for f in entry["files"]]
    missing = [f for f in files if not tf.io.gfile.exists(f)]
    if missing:
        raise data_lib.DataError(f"{name} shard {missing[0]} is missing; the output is incomplete, rerun {PIPELINE}")
    return files


def _eval_rows(dataset: data_lib.Dataset, split: str) -> EvalRows:
    read = _read(dataset.files(split), S.eval_feature_spec())
    lengths, values = read[S.NEGATIVE_PLAYLIST_INDEX]
    rows = CSR(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), values)
    negatives = rows.dense(np.arange(rows.num_rows))
    if negatives.shape[1] == 0:
        negatives = np.full((rows.num_rows, 1), -1, np.int64)
    return EvalRows(users=read[S.USER_INDEX], positives=read[S.PLAYLIST_INDEX], negatives=negatives,
                    positive_in_candidates=read[S.POSITIVE_IN_CANDIDATES].astype(bool))


def load_playlist_data(data_dir: str, *, model: str, verify_records: bool = True) -> PlaylistData:
    """Reads and checks a ``beam_pipelines.playlists`` output.

    Args:
      data_dir: the pipeline's ``--output`` (local or gs://).
      model: the model's name (for the messages).
      verify_records: read every split shard to its end first (``data.read_dataset``).

    Returns:
      The ``PlaylistData``.

    Raises:
      trainer.data.DataError: one line naming what is wrong and what to run.
    """
    dataset = data_lib.read_dataset(data_dir, schema="playlists", model=model, verify_records=verify_records)
    vocabulary = dataset.summary.get("vocabulary", {})
    sizes = {kind: int(vocabulary.get(kind, 0)) for kind in ("users", "playlists", "tracks")}
    vocab = {kind: f"{dataset.data_dir}/{path}" for kind, path in vocabulary.get("files", {}).items()}
    for kind in sizes:
        if kind not in vocab or not tf.io.gfile.exists(vocab[kind]):
            raise data_lib.DataError(f"{dataset.data_dir}: the {kind} vocabulary is missing; rerun {PIPELINE}")
    train = _read(dataset.files("train"), S.train_feature_spec())
    users, playlists = train[S.USER_INDEX], train[S.PLAYLIST_INDEX]
    tracks = _read(_table_files(dataset, S.PLAYLIST_TRACKS_DIR), S.playlist_tracks_feature_spec())
    candidates = _read(_table_files(dataset, S.CANDIDATES_DIR), S.candidates_feature_spec())
    try:
        playlist_tracks = CSR.from_rows(tracks[S.PLAYLIST_INDEX], *tracks[S.TRACK_INDEX], sizes["playlists"])
        candidate_rows = CSR.from_rows(candidates[S.USER_INDEX], *candidates[S.CANDIDATE_PLAYLIST_INDEX],
                                       sizes["users"])
    except ValueError as error:
        raise data_lib.DataError(f"{dataset.data_dir}: a table does not match the vocabularies ({error}); "
                                 f"rerun {PIPELINE}") from None
    if len(tracks[S.PLAYLIST_INDEX]) != sizes["playlists"]:
        raise data_lib.DataError(f"{dataset.data_dir}: {S.PLAYLIST_TRACKS_DIR}/ holds {len(tracks[S.PLAYLIST_INDEX])} "
                                 f"playlists, the vocabulary {sizes['playlists']}; rerun {PIPELINE}")
    evals = {split: _eval_rows(dataset, split) for split in EVAL_SPLITS}
    result = PlaylistData(
        dataset=dataset, num_users=sizes["users"], num_playlists=sizes["playlists"], num_tracks=sizes["tracks"],
        train_items=ranking.TrainItems.from_pairs(users, playlists, sizes["users"], sizes["playlists"]),
        train_users=users, train_playlists=playlists, playlist_tracks=playlist_tracks, candidates=candidate_rows,
        evals=evals, vocab=vocab,
    )
    for split in EVAL_SPLITS:  # the pipeline's flag and the candidates table must tell the same story
        _, _, in_candidates = result.knn_candidates(split)
        if not np.array_equal(in_candidates, evals[split].positive_in_candidates):
            raise data_lib.DataError(f"{dataset.data_dir}: {split}/ positive_in_candidates disagrees with "
                                     f"{S.CANDIDATES_DIR}/; rerun {PIPELINE}")
    return result
