"""Trainer end to end on a tiny pipeline output: smoke fit, SavedModel round trip, bad input."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from beam_pipelines import movielens
from trainer import task

from tests.conftest import two_taste_ratings

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    rows = two_taste_ratings(num_users=60, num_items=50, per_user=20, seed=3)  # ratings 5 or 1
    train = [r for i, r in enumerate(rows) if i % 5]
    test = [r for i, r in enumerate(rows) if not i % 5]
    (root / "base.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in train))
    (root / "test.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in test))
    data = root / "data"
    movielens.run(
        ["--input", str(root / "base.tsv"), "--eval-input", str(root / "test.tsv"), "--split", "given",
         "--output", str(data), "--num-shards", "2"],
        save_main_session=False,
    )
    return {"root": root, "data": data, "test": test}


@pytest.fixture(scope="module")
def trained(tiny):
    job = tiny["root"] / "job"
    code = task.main([
        "--config", str(REPO / "configs" / "movielens_mf.yaml"), "--data", str(tiny["data"]), "--job-dir", str(job),
        "--set", "train.epochs=30", "--set", "train.batch_size=64", "--set", "train.learning_rate=0.02",
        "--set", "hparams.embedding_dim=4", "--set", "hparams.l2_embedding=0.001", "--set", "hparams.init_stddev=0.1",
    ])
    assert code == 0
    return job


def test_fit_writes_every_output(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics["eval"]) == {"rmse", "mae", "num_examples"}
    assert metrics["eval"]["num_examples"] == 240
    assert len(metrics["history"]["loss"]) == 30
    assert (trained / "plots" / "loss.png").stat().st_size > 1000
    assert (trained / "export" / "saved_model.pb").exists()
    assert (trained / "config.resolved.yaml").read_text().startswith("model: mf")
    assert list((trained / "tensorboard").rglob("events.out.tfevents*"))
    assert list((trained / "checkpoints").glob("epoch-030*"))


def test_model_learns_the_planted_structure(trained, tiny):
    metrics = json.loads((trained / "metrics.json").read_text())
    test_ratings = np.array([r for _, _, r, _ in tiny["test"]], dtype=float)
    mean_baseline = float(np.sqrt(np.mean((test_ratings - test_ratings.mean()) ** 2)))
    assert mean_baseline > 1.9
    assert metrics["eval"]["rmse"] < 0.5 * mean_baseline


def test_savedmodel_round_trip_with_raw_ids(trained, tiny):
    import tensorflow as tf

    serve = tf.saved_model.load(str(trained / "export")).signatures["serving_default"]
    users = tf.constant([str(u) for u, _, _, _ in tiny["test"]])
    items = tf.constant([str(i) for _, i, _, _ in tiny["test"]])
    out = serve(user_id=users, item_id=items)
    predicted = out["rating"].numpy()
    actual = np.array([r for _, _, r, _ in tiny["test"]], dtype=float)
    metrics = json.loads((trained / "metrics.json").read_text())
    # The served model from raw ids reproduces the trainer's own evaluation.
    assert float(np.sqrt(np.mean((predicted - actual) ** 2))) == pytest.approx(metrics["eval"]["rmse"], abs=1e-4)
    assert out["known_user"].numpy().all()


def test_unknown_ids_get_a_defined_answer(trained):
    import tensorflow as tf

    serve = tf.saved_model.load(str(trained / "export")).signatures["serving_default"]
    out = serve(user_id=tf.constant(["999999", "1", "999999"]), item_id=tf.constant(["2", "888888", "888888"]))
    ratings = out["rating"].numpy()
    assert np.isfinite(ratings).all() and ((ratings >= 1.0) & (ratings <= 5.0)).all()
    assert out["known_user"].numpy().tolist() == [False, True, False]
    assert out["known_item"].numpy().tolist() == [True, False, False]
    summary = json.loads((trained.parent / "data" / "dataset.json").read_text())
    # Neither id known: the answer is the global bias alone, which starts at the
    # train mean that tf.Transform computed and stays close to it.
    assert ratings[2] == pytest.approx(summary["rating_stats"]["mean"], abs=0.5)


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "trainer.task", *args], capture_output=True, text=True, cwd=REPO)


def _assert_one_line_error(result, expected):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert expected in result.stderr


def test_missing_and_unfinished_data_dirs(tmp_path):
    _assert_one_line_error(_run_cli("--data", str(tmp_path / "nope"), "--job-dir", str(tmp_path / "j")), "does not exist")
    (tmp_path / "empty").mkdir()
    _assert_one_line_error(_run_cli("--data", str(tmp_path / "empty"), "--job-dir", str(tmp_path / "j")), "dataset.json is missing")


def test_schema_mismatch_is_one_clear_line(tiny, tmp_path):
    from tensorflow_metadata.proto.v0 import schema_pb2
    from google.protobuf import text_format

    broken = tmp_path / "broken"
    shutil.copytree(tiny["data"], broken)
    schema_path = broken / "transformed_metadata" / "schema.pbtxt"
    schema = text_format.Parse(schema_path.read_text(), schema_pb2.Schema())
    kept = [f for f in schema.feature if f.name != "rating"]
    del schema.feature[:]
    schema.feature.extend(kept)
    schema_path.write_text(text_format.MessageToString(schema))
    result = _run_cli("--data", str(broken), "--job-dir", str(tmp_path / "j"))
    _assert_one_line_error(result, "schema mismatch")
    assert "rating" in result.stderr


def test_non_finite_loss_is_one_clear_line(tiny, tmp_path):
    result = _run_cli(
        "--data", str(tiny["data"]), "--job-dir", str(tmp_path / "j"),
        "--set", "train.epochs=5", "--set", "train.batch_size=16", "--set", "train.optimizer=sgd",
        "--set", "train.learning_rate=1e6",
    )
    _assert_one_line_error(result, "loss became")


def test_unknown_config_key_is_one_clear_line(tiny, tmp_path):
    result = _run_cli("--data", str(tiny["data"]), "--job-dir", str(tmp_path / "j"), "--set", "train.epoch=2")
    _assert_one_line_error(result, "valid train keys")


# --------------------------------------------------------------------------- Bayesian MF (Gibbs sampling)
@pytest.fixture(scope="module")
def bayesian(tiny):
    job = tiny["root"] / "bayesian_job"
    code = task.main([
        "--config", str(REPO / "configs" / "movielens_bayesian_mf.yaml"), "--data", str(tiny["data"]),
        "--job-dir", str(job), "--set", "hparams.embedding_dim=4", "--set", "hparams.sweeps=40",
        "--set", "hparams.burn_in=10", "--set", "hparams.kept_samples=8",
    ])
    assert code == 0
    return job


def test_bayesian_mf_learns_and_serves_raw_ids(bayesian, tiny):
    import tensorflow as tf

    metrics = json.loads((bayesian / "metrics.json").read_text())
    assert len(metrics["history"]["rmse"]) == len(metrics["history"]["val_rmse"]) == 40
    assert (bayesian / "plots" / "loss.png").stat().st_size > 1000
    actual = np.array([r for _, _, r, _ in tiny["test"]], dtype=float)
    mean_baseline = float(np.sqrt(np.mean((actual - actual.mean()) ** 2)))
    assert metrics["eval"]["rmse"] < 0.5 * mean_baseline
    serve = tf.saved_model.load(str(bayesian / "export")).signatures["serving_default"]
    out = serve(user_id=tf.constant([str(u) for u, _, _, _ in tiny["test"]]),
                item_id=tf.constant([str(i) for _, i, _, _ in tiny["test"]]))
    served = float(np.sqrt(np.mean((out["rating"].numpy() - actual) ** 2)))
    assert served == pytest.approx(metrics["eval"]["rmse"], abs=1e-4)


def test_exported_bayesian_mf_is_the_mean_over_kept_samples():
    import tensorflow as tf

    from schemas import ratings as F
    from trainer.models import bayesian_mf, mf

    rng = np.random.default_rng(0)
    samples, users, items, k = 5, 3, 4, 2
    user_rows = rng.normal(size=(samples, users, k + 1)).astype(np.float32)
    item_rows = rng.normal(size=(samples, items, k + 1)).astype(np.float32)
    model = mf.MatrixFactorization(mf.Config(embedding_dim=samples * k), users, items, rating_mean=3.0,
                                   rating_range=(1.0, 5.0), global_batch_size=1)
    u, i = np.repeat(np.arange(users), items), np.tile(np.arange(items), users)
    features = {F.USER_INDEX: tf.constant(u), F.ITEM_INDEX: tf.constant(i)}
    model(features)
    bayesian_mf._write_posterior_mean(model, user_rows, item_rows)  # noqa: SLF001
    per_sample = 3.0 + user_rows[:, u, 0] + item_rows[:, i, 0] + np.sum(user_rows[:, u, 1:] * item_rows[:, i, 1:], -1)
    np.testing.assert_allclose(model(features, training=True).numpy(), per_sample.mean(0), rtol=1e-5, atol=1e-5)


def test_bayesian_mf_refuses_several_workers(tiny, tmp_path):
    import os

    tf_config = json.dumps({"cluster": {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]},
                            "task": {"type": "chief", "index": 0}})
    result = subprocess.run(
        [sys.executable, "-m", "trainer.task", "--config", str(REPO / "configs" / "movielens_bayesian_mf.yaml"),
         "--data", str(tiny["data"]), "--job-dir", str(tmp_path / "j")],
        capture_output=True, text=True, cwd=REPO, env={**os.environ, "TF_CONFIG": tf_config}, timeout=300,
    )
    _assert_one_line_error(result, "Gibbs sampling in one process")
