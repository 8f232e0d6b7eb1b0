"""The trainer and its exports under hostile conditions (issue 11).

* A shard that breaks after ``read_dataset`` checked it (a copy still running, a
  failing disk) ends the run with one ``DataError`` line, during the fit or the
  evaluation, and nothing is exported; so does a shard replaced by a shorter
  valid one, which TensorFlow reads without any error.
* Every serving signature of the MF, NCF (GMF) and BPR exports gives a defined
  answer for empty strings, very long ids, control bytes and batches of 100k ids:
  unknown ids get the documented fallback, ``k`` is clipped into ``1..items``, an
  empty batch gives empty outputs. ``recommend`` runs in steps of users; the
  export here is made with small steps so a 100k batch crosses thousands of step
  boundaries, and every row must equal the answer for that user alone.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from beam_pipelines import movielens
from tests.conftest import run_experiment, two_taste_ratings
from trainer import tracking

pytestmark = pytest.mark.slow  # three short fits and a pipeline run
TINY = ["train.epochs=1", "train.batch_size=64", "train.shuffle_buffer=1000", "train.refit=false"]
EDGE_IDS = ["", " ", "x" * 100_000, "\x00\x7f\u00ff", "1" * 40, "-1", "１"]  # "１": a full-width digit
BATCH = 100_000


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    rows = two_taste_ratings(num_users=40, num_items=30, per_user=10, seed=11)
    (root / "u.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
    data = root / "data"
    movielens.run(["--input", str(root / "u.tsv"), "--format", "tab", "--split", "leave_one_out",
                   "--num-negatives", "10", "--output", str(data), "--num-shards", "2"])
    return {"root": root, "data": data, "users": sorted({str(u) for u, *_ in rows}, key=int),
            "items": sorted({str(i) for _, i, *_ in rows}, key=int)}


@pytest.fixture(scope="module")
def exports(tiny):
    """MF, GMF and BPR fitted for one epoch; ``recommend`` exported with steps of 8 users."""
    import tensorflow as tf

    from trainer import export

    saved = export.RECOMMEND_SCORES_PER_STEP
    export.RECOMMEND_SCORES_PER_STEP = 8 * (len(tiny["items"]) + 1)  # 8 users per step (items + the OOV row)
    try:
        jobs = {}
        for name in ("mf", "gmf", "bpr"):
            tf.keras.backend.clear_session()
            run_experiment(f"movielens_{name}.yaml", tiny["data"], tiny["root"] / f"job-{name}", *TINY, environ={})
            jobs[name] = tf.saved_model.load(str(tiny["root"] / f"job-{name}" / "export"))
    finally:
        export.RECOMMEND_SCORES_PER_STEP = saved
    return jobs


# --------------------------------------------------------------------------- a shard breaks after the check
class _BreakAtStart(tracking.Tracker):
    """Breaks a shard when the run starts: after ``read_dataset`` checked it, before any read."""

    def __init__(self, shard, how: str):
        self.shard, self.how = shard, how

    def start(self, **_):
        if self.how == "cut":
            data = self.shard.read_bytes()
            self.shard.write_bytes(data[: len(data) // 2])
            return
        import tensorflow as tf

        from tests.conftest import read_records

        records = read_records(self.shard)
        with tf.io.TFRecordWriter(str(self.shard), options="GZIP") as writer:  # a valid, shorter shard
            for record in records[: len(records) // 2]:
                writer.write(record)


@pytest.mark.parametrize("split, how, expected", [
    ("train", "cut", "failed during training or evaluation"),  # mid-fit
    ("test", "cut", "failed during training or evaluation"),  # the test evaluation, after the fit
])
def test_a_shard_that_breaks_mid_run_is_one_error_and_no_export(tiny, tmp_path, split, how, expected):
    from trainer import data

    broken = tmp_path / "data"
    shutil.copytree(tiny["data"], broken)
    shard = max((broken / split).glob("part-*"), key=lambda p: p.stat().st_size)
    job = tmp_path / "job"
    with pytest.raises(data.DataError) as caught:
        run_experiment("movielens_mf.yaml", broken, job, *TINY, environ={}, tracker=_BreakAtStart(shard, how))
    message = str(caught.value)
    assert expected in message and str(broken) in message, message
    assert "nothing was exported" in message and "\n" not in message
    assert not (job / "export").exists() and not (job / "metrics.json").exists()


def test_a_shard_replaced_by_a_shorter_valid_one_is_caught(tiny, tmp_path):
    """TensorFlow reads such a shard without any error; the (length, mtime) check after training catches it.

    (The experiment calls ``shard_stats`` once the output is checked and ``check_unchanged`` before it
    exports; a full fit is not needed to show the check.)
    """
    from trainer import data

    copy = tmp_path / "data"
    shutil.copytree(tiny["data"], copy)
    dataset = data.read_dataset(str(copy), schema="ratings", model="mf")
    before = data.shard_stats(dataset)
    data.check_unchanged(dataset, before)  # nothing changed
    shard = max((copy / "train").glob("part-*"), key=lambda p: p.stat().st_size)
    _BreakAtStart(shard, "shorter").start()
    with pytest.raises(data.DataError, match=f"{shard} changed while training read it"):
        data.check_unchanged(dataset, before)
    shard.unlink()
    with pytest.raises(data.DataError, match="changed while training read it"):
        data.check_unchanged(dataset, before)


# --------------------------------------------------------------------------- serving input at the edges
def test_rating_export_answers_edge_ids_and_a_100k_batch(exports, tiny):
    import tensorflow as tf

    serve = exports["mf"].signatures["serving_default"]
    out = serve(user_id=tf.constant(EDGE_IDS), item_id=tf.constant(EDGE_IDS[::-1]))
    assert not out["known_user"].numpy().any() and not out["known_item"].numpy().any()
    ratings = out["rating"].numpy()
    assert np.isfinite(ratings).all() and np.ptp(ratings) < 1e-6  # unknown pairs: the global bias alone
    users = np.array(tiny["users"] + EDGE_IDS, dtype=object)[np.arange(BATCH) % (len(tiny["users"]) + len(EDGE_IDS))]
    items = np.array(tiny["items"], dtype=object)[np.arange(BATCH) % len(tiny["items"])]
    big = serve(user_id=tf.constant(users.tolist()), item_id=tf.constant(items.tolist()))
    assert big["rating"].shape == (BATCH,) and np.isfinite(big["rating"].numpy()).all()
    assert big["known_user"].numpy().sum() == sum(u in set(tiny["users"]) for u in users)
    empty = serve(user_id=tf.constant([], tf.string), item_id=tf.constant([], tf.string))
    assert empty["rating"].shape == (0,)


@pytest.mark.parametrize("name", ["gmf", "bpr"])
def test_ranking_exports_answer_edge_ids_k_and_100k_batches(exports, tiny, name):
    import tensorflow as tf

    loaded = exports[name]
    score, recommend = loaded.signatures["score"], loaded.signatures["recommend"]
    out = score(user_id=tf.constant(EDGE_IDS), item_id=tf.constant(EDGE_IDS))
    assert not out["known_user"].numpy().any() and np.isfinite(out["score"].numpy()).all()

    popular = recommend(user_id=tf.constant(EDGE_IDS), k=tf.constant(5))
    assert popular["item_id"].shape == (len(EDGE_IDS), 5)
    assert popular["popular_fallback"].numpy().all()
    assert len({tuple(row) for row in popular["item_id"].numpy().tolist()}) == 1  # the same popular items
    num_items = len(tiny["items"])
    for k, expected in ((0, 1), (-7, 1), (10**6, num_items)):
        assert recommend(user_id=tf.constant(["1", ""]), k=tf.constant(k))["item_id"].shape == (2, expected)
    assert recommend(user_id=tf.constant([], tf.string), k=tf.constant(3))["item_id"].shape == (0, 3)

    pool = tiny["users"] + EDGE_IDS
    users = [pool[i % len(pool)] for i in range(BATCH)]
    big = recommend(user_id=tf.constant(users), k=tf.constant(4))
    assert big["item_id"].shape == (BATCH, 4) and np.isfinite(big["score"].numpy()).all()
    # Steps of 8 users: each user's row equals its answer alone, wherever the step boundaries fell.
    alone = {u: recommend(user_id=tf.constant([u]), k=tf.constant(4)) for u in pool}
    for row in (0, 7, 8, 9, 4095, BATCH - 1):
        expected = alone[users[row]]
        assert big["item_id"].numpy()[row].tolist() == expected["item_id"].numpy()[0].tolist()
        np.testing.assert_allclose(big["score"].numpy()[row], expected["score"].numpy()[0], rtol=1e-5, atol=1e-6)
    pairs = score(user_id=tf.constant(users), item_id=tf.constant([tiny["items"][i % num_items] for i in range(BATCH)]))
    assert pairs["score"].shape == (BATCH,) and np.isfinite(pairs["score"].numpy()).all()
