"""Trainer end to end on a tiny pipeline output: smoke fit, SavedModel round trip, bad input and bad config."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from beam_pipelines import movielens
from trainer import task

from tests.conftest import METRICS_TOP_LEVEL, two_taste_ratings

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
        ["--input", str(root / "base.tsv"), "--test-input", str(root / "test.tsv"), "--split", "given",
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


def test_fit_writes_every_output(trained, tiny):
    metrics = json.loads((trained / "metrics.json").read_text())
    assert set(metrics) == METRICS_TOP_LEVEL
    assert set(metrics["test"]) == set(metrics["valid"]) == {"rmse", "mae", "num_examples"}
    assert metrics["test"]["num_examples"] == 240
    summary = json.loads((tiny["data"] / "dataset.json").read_text())
    assert metrics["valid"]["num_examples"] == summary["splits"]["valid"]["examples"] > 50
    assert len(metrics["history"]["loss"]) == len(metrics["history"]["val_rmse"]) == 30
    best = metrics["selection"]["best_epoch"]
    assert metrics["history"]["val_rmse"][best - 1] == min(metrics["history"]["val_rmse"])
    assert metrics["valid"]["rmse"] == pytest.approx(metrics["history"]["val_rmse"][best - 1], abs=1e-5)
    assert (trained / "plots" / "loss.png").stat().st_size > 1000
    assert (trained / "export" / "saved_model.pb").exists()
    assert (trained / "config.resolved.yaml").read_text().startswith("model: mf")
    assert list((trained / "tensorboard").rglob("events.out.tfevents*"))
    assert (trained / "checkpoints" / "selected.index").exists()
    # Every listed output exists, and what exists is listed.
    outputs = metrics["outputs"]
    assert {"metrics", "export", "plots", "config", "checkpoints", "tensorboard"} <= set(outputs)
    for value in outputs.values():
        for path in value if isinstance(value, list) else [value]:
            assert __import__("os").path.exists(path), path


def test_model_learns_the_planted_structure(trained, tiny):
    metrics = json.loads((trained / "metrics.json").read_text())
    test_ratings = np.array([r for _, _, r, _ in tiny["test"]], dtype=float)
    mean_baseline = float(np.sqrt(np.mean((test_ratings - test_ratings.mean()) ** 2)))
    assert mean_baseline > 1.9
    assert metrics["test"]["rmse"] < 0.5 * mean_baseline


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
    assert float(np.sqrt(np.mean((predicted - actual) ** 2))) == pytest.approx(metrics["test"]["rmse"], abs=1e-4)
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
    assert metrics["test"]["rmse"] < 0.5 * mean_baseline
    assert set(metrics) == METRICS_TOP_LEVEL and "sampler" in metrics["selection"]["rule"]
    assert list((bayesian / "tensorboard").rglob("events.out.tfevents*"))  # the printed TensorBoard path is real
    serve = tf.saved_model.load(str(bayesian / "export")).signatures["serving_default"]
    out = serve(user_id=tf.constant([str(u) for u, _, _, _ in tiny["test"]]),
                item_id=tf.constant([str(i) for _, i, _, _ in tiny["test"]]))
    served = float(np.sqrt(np.mean((out["rating"].numpy() - actual) ** 2)))
    assert served == pytest.approx(metrics["test"]["rmse"], abs=1e-4)


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


# --------------------------------------------------------------------------- config values and data checks
@pytest.mark.parametrize("override, expected", [
    ("train.epochs=abc", "train.epochs: expected an integer, got 'abc'"),
    ("hparams.embedding_dim=16.5", "hparams.embedding_dim: expected an integer, got 16.5"),
    ("train.learning_rate=fast", "train.learning_rate: expected a number, got 'fast'"),
    ("hparams.clip_predictions=maybe", "hparams.clip_predictions: expected true or false"),
    ("train.optimizer=rmsprop", "optimizer must be one of adam, lazy_adam, adagrad, sgd"),
    ("train.monitor=ndcg@10", "train.monitor 'ndcg@10' is not a valid metric of mf (rating); valid: rmse, mae"),
    ("hparams.embeding_dim=8", "unknown key(s) hparams.embeding_dim"),
    ("model=mff", "unknown model 'mff'"),
])
def test_bad_config_values_are_one_line_before_tensorflow(override, expected, tmp_path):
    """Each bad value is one line, exit 2, and TensorFlow is never imported (so it is answered at once)."""
    code = (
        "import sys\n"
        "from trainer import task\n"
        f"rc = task.main(['--config', 'configs/movielens_mf.yaml', '--data', {str(tmp_path)!r}, "
        f"'--job-dir', {str(tmp_path / 'j')!r}, '--set', {override!r}])\n"
        "assert 'tensorflow' not in sys.modules, 'TensorFlow imported before the config was valid'\n"
        "sys.exit(rc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    _assert_one_line_error(result, expected)
    assert len(result.stderr.strip().splitlines()) == 1


def test_discrete_values_sent_as_doubles_are_coerced():
    from trainer import config as config_lib

    config = config_lib.resolve(str(REPO / "configs" / "movielens_mf.yaml"),
                                ["hparams.embedding_dim=16.0", "train.batch_size=512.0", "train.learning_rate=1e-3"])
    assert config["hparams"]["embedding_dim"] == 16 and isinstance(config["hparams"]["embedding_dim"], int)
    assert config["train"]["batch_size"] == 512 and config["train"]["learning_rate"] == 0.001
    args = task.parse_args(["--data", "d", "--job-dir", "j", "--hparams.embedding_dim=32.0", "--train.epochs", "3"])
    assert args.set == ["hparams.embedding_dim=32.0", "train.epochs=3"]


def test_hypertune_metric_must_be_a_valid_metric_of_the_task(tiny, tmp_path):
    result = _run_cli("--config", "configs/movielens_mf.yaml", "--data", str(tiny["data"]),
                      "--job-dir", str(tmp_path / "j"), "--hypertune-metric", "accuracy")
    _assert_one_line_error(result, "--hypertune-metric 'accuracy' is not a valid metric of mf (rating); valid: rmse, mae")


def test_graph_config_on_ratings_output_is_one_line(tiny, tmp_path):
    result = _run_cli("--config", "configs/lastfm_hetero_gnn.yaml", "--data", str(tiny["data"]),
                      "--job-dir", str(tmp_path / "j"))
    _assert_one_line_error(result, "model hetero_gnn trains on lastfm data (python -m beam_pipelines.lastfm), "
                                   f"but {tiny['data']} holds ratings data")


def test_old_train_eval_layout_is_refused_with_what_to_run(tiny, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(tiny["data"], old)
    summary = json.loads((old / "dataset.json").read_text())
    for key in ("splits", "schema"):
        del summary[key]
    (old / "dataset.json").write_text(json.dumps(summary))
    (old / "valid").rename(old / "eval")
    result = _run_cli("--data", str(old), "--job-dir", str(tmp_path / "j"))
    _assert_one_line_error(result, "written by an earlier pipeline version (train/ + eval/, no valid split); "
                                   "rerun python -m beam_pipelines.movielens to write train/ valid/ test/")


def test_truncated_or_missing_shard_is_one_line_before_any_fit(tiny, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny["data"], broken)
    shard = sorted((broken / "train").glob("part-*"))[0]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    result = _run_cli("--data", str(broken), "--job-dir", str(tmp_path / "j"))
    _assert_one_line_error(result, f"{shard} is corrupt or truncated")
    assert "function_node" not in result.stderr  # TensorFlow's graph-function prefix is not the reason
    assert not (tmp_path / "j" / "export").exists()
    shard.unlink()
    _assert_one_line_error(_run_cli("--data", str(broken), "--job-dir", str(tmp_path / "j")),
                           f"train shard {shard} is missing")


def test_trial_id_gives_each_tuning_trial_its_own_directory(tmp_path):
    from trainer import experiment

    paths = experiment.JobPaths.from_env(str(tmp_path / "job"), {"CLOUD_ML_TRIAL_ID": "7"})
    assert paths.job_dir == f"{tmp_path}/job/trials/7" and paths.export == f"{tmp_path}/job/trials/7/export"
    assert experiment.JobPaths.from_env(str(tmp_path / "job"), {}).job_dir == f"{tmp_path}/job"


def test_refit_trains_on_train_and_valid_for_the_chosen_epochs(tiny, tmp_path):
    """train.refit: valid chose the epoch; the exported, tested model is a fresh fit on train + valid."""
    from tests.conftest import run_experiment

    result = run_experiment("movielens_mf.yaml", tiny["data"], tmp_path / "job", "train.epochs=6",
                            "train.batch_size=64", "hparams.embedding_dim=4", "train.refit=true", environ={})
    refit = result.selection["refit"]
    summary = json.loads((tiny["data"] / "dataset.json").read_text())
    assert refit["epochs"] == result.selection["best_epoch"]
    assert refit["train_examples"] == summary["splits"]["train"]["examples"] + summary["splits"]["valid"]["examples"]
    assert set(refit["test_of_the_selection_model"]) == {"rmse", "mae", "num_examples"}
    assert len(result.history["refit_loss"]) == refit["epochs"]
    assert (tmp_path / "job" / "checkpoints" / "refit.index").exists()
    # the valid metrics are the selection model's (it never saw valid), the epoch's logged value
    assert result.valid["rmse"] == pytest.approx(result.history["val_rmse"][result.selection["best_epoch"] - 1])
    import tensorflow as tf

    serve = tf.saved_model.load(str(tmp_path / "job" / "export")).signatures["serving_default"]
    out = serve(user_id=tf.constant([str(u) for u, _, _, _ in tiny["test"]]),
                item_id=tf.constant([str(i) for _, i, _, _ in tiny["test"]]))
    actual = np.array([r for _, _, r, _ in tiny["test"]], dtype=float)
    assert float(np.sqrt(np.mean((out["rating"].numpy() - actual) ** 2))) == pytest.approx(result.test["rmse"], abs=1e-4)


def test_refit_is_refused_where_it_cannot_work(tiny, tmp_path):
    result = _run_cli("--config", "configs/movielens_mf.yaml", "--data", str(tiny["data"] / "nonexistent"),
                      "--job-dir", str(tmp_path / "j"), "--set", "train.refit=true")
    _assert_one_line_error(result, "does not exist")
    no_valid = tmp_path / "no_valid"
    movielens.run(["--input", str(tiny["root"] / "base.tsv"), "--test-input", str(tiny["root"] / "test.tsv"),
                   "--split", "given", "--output", str(no_valid), "--num-shards", "1", "--no-valid"])
    result = _run_cli("--config", "configs/movielens_mf.yaml", "--data", str(no_valid),
                      "--job-dir", str(tmp_path / "j"), "--set", "train.refit=true")
    _assert_one_line_error(result, "train.refit needs a valid split")


class _RecordingTracker:
    """A real in-process tracker (the interface of trainer.tracking.Tracker) that keeps what it was given."""

    def __init__(self):
        self.calls = []

    def start(self, *, config, run_name, tags):
        self.calls.append(("start", run_name, dict(tags)))

    def log_metrics(self, values, step):
        self.calls.append(("metrics", step, dict(values)))

    def finish(self, result):
        self.calls.append(("finish", result.test, result.outputs))


def test_tracker_gets_params_every_epoch_and_the_outputs(tiny, tmp_path):
    from tests.conftest import run_experiment

    tracker = _RecordingTracker()
    result = run_experiment("movielens_mf.yaml", tiny["data"], tmp_path / "job", "train.epochs=3",
                            "train.refit=false", environ={}, tracker=tracker)
    kinds = [c[0] for c in tracker.calls]
    assert kinds == ["start", "metrics", "metrics", "metrics", "finish"]
    assert tracker.calls[0][2]["model"] == "mf"
    assert [c[1] for c in tracker.calls[1:4]] == [1, 2, 3] and "val_rmse" in tracker.calls[1][2]
    assert tracker.calls[-1][1] == result.test and "metrics" in tracker.calls[-1][2]


def test_unknown_tracker_is_one_line(tmp_path):
    result = _run_cli("--config", "configs/movielens_mf.yaml", "--data", str(tmp_path), "--job-dir",
                      str(tmp_path / "j"), "--track", "wandb")
    _assert_one_line_error(result, "--track 'wandb': unknown tracker; known: none")


def test_profiled_steps_are_summarised_by_group(tiny, tmp_path):
    """train.profile_steps traces those steps (Keras' TensorBoard profile_batch); tools/profile_steps.py reads the
    trace back with TensorFlow's own converter and splits the host op time into input / compute / optimizer."""
    job = tmp_path / "job"
    code = task.main([
        "--config", str(REPO / "configs" / "movielens_mf.yaml"), "--data", str(tiny["data"]), "--job-dir", str(job),
        "--set", "train.epochs=1", "--set", "train.batch_size=16", "--set", "train.refit=false",
        "--set", "train.profile_steps=3,6",
    ])
    assert code == 0
    assert list((job / "tensorboard").rglob("*.xplane.pb"))
    out = subprocess.run([sys.executable, "tools/profile_steps.py", str(job / "tensorboard"), "--steps", "4", "--json"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["steps"] == 4 and set(summary["ms"]) == {"collective", "input", "optimizer", "compute"}
    assert summary["ms"]["compute"] > 0 and summary["ms"]["input"] > 0 and summary["ms"]["optimizer"] > 0
    assert summary["ms"]["collective"] == 0  # one process: nothing to all-reduce
    assert sum(summary["share"].values()) == pytest.approx(1.0, abs=0.01)
    (tmp_path / "no-profile").mkdir()
    empty = subprocess.run([sys.executable, "tools/profile_steps.py", str(tmp_path / "no-profile")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert empty.returncode != 0 and "train.profile_steps=FIRST,LAST" in empty.stderr
