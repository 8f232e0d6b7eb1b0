"""Hetero GNN through the one experiment: metrics by hand, config errors, a short fit + SavedModel round trip,
trainer.task, preemption, real-data smoke."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import METRICS_TOP_LEVEL, read_examples, run_experiment
from trainer import classification_metrics

GNN_YAML = str(Path(__file__).resolve().parents[1] / "configs" / "lastfm_hetero_gnn.yaml")


def test_classification_report_by_hand():
    report = classification_metrics.classification_report([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], num_classes=4)
    assert report["accuracy"] == pytest.approx(3 / 5)
    per = report["per_class"]
    assert (per[0]["precision"], per[0]["recall"]) == (0.5, 0.5)
    assert per[1]["precision"] == pytest.approx(2 / 3) and per[1]["recall"] == 1.0
    assert per[2]["f1"] == 0.0 and per[3]["support"] == 0
    assert report["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)  # class 3 absent: not averaged
    assert report["confusion_matrix"][0] == [1, 1, 0, 0]


def test_trainer_task_config_errors_are_one_line(tmp_path, capsys):
    from trainer import task

    common = ["--config", GNN_YAML, "--job-dir", str(tmp_path / "job")]
    for extra, message in (
        (["--data", str(tmp_path), "--set", "hparams.hiden_dim=3"], "unknown key(s) hparams.hiden_dim; valid hparams keys:"),
        (["--data", str(tmp_path), "--set", "hparams.conv=gcn"], "hparams: conv must be 'simple' or 'gatv2'"),
        (["--data", str(tmp_path), "--set", "train.ensemble_size=0"], "train: ensemble_size must be >= 1, got 0"),
        (["--data", str(tmp_path), "--hypertune-metric", "rmse"],
         "--hypertune-metric 'rmse' is not a valid metric of hetero_gnn (graph_classification); valid: accuracy, macro_f1"),
        (["--data", str(tmp_path / "nowhere")], "does not exist; run a pipeline first (python -m beam_pipelines.lastfm"),
    ):
        assert task.main([*common, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("trainer: error: ") and message in err and "\n" not in err, err


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from beam_pipelines import lastfm
    from rawdata import synth

    work = tmp_path_factory.mktemp("gnn")
    paths = synth.write_lastfm(synth.generate_lastfm(300, seed=1, num_classes=3, avg_likes=5,
                                                     follow_homophily=0.8, like_homophily=0.8), str(work))
    lastfm.run(["--edges", paths["edges.csv"], "--targets", paths["target.csv"], "--features", paths["features.json"],
                "--output", str(work / "out"), "--num-classes", "3", "--num-shards", "1"])
    return work


def test_short_fit_learns_and_exports(tiny_data):
    """GATv2 convolutions (the YAML's SimpleConv is fitted by test_trainer_task_runs_the_gnn_yaml)."""
    import tensorflow as tf

    from trainer import gnn_predict

    conv = "gatv2"

    data, job = str(tiny_data / "out"), str(tiny_data / f"job_{conv}")
    result = run_experiment(None, data, job, "model=hetero_gnn", "train.epochs=15", "train.batch_size=32",
                            f"hparams.conv={conv}", "hparams.hidden_dim=32")
    metrics = result.to_json()
    assert metrics["test"]["accuracy"] > 0.6  # 3 classes, strongly planted: chance is ~0.45
    for name in ("confusion_matrix", "label_distribution", "loss"):
        assert os.path.getsize(os.path.join(job, "plots", f"{name}.png")) > 5000
    written = json.load(open(os.path.join(job, "metrics.json")))
    assert set(written) == METRICS_TOP_LEVEL and written["test"]["accuracy"] == metrics["test"]["accuracy"]
    # SavedModel round trip: same probabilities as the in-memory model on a test example.
    split, record, _ = gnn_predict.find_subgraph(data, "0")
    serve = tf.saved_model.load(os.path.join(job, "export")).signatures["serving_default"]
    out = serve(examples=tf.constant([record, record]))
    probabilities = out["probabilities"].numpy()
    assert probabilities.shape == (2, 3) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    assert out["root_id"].numpy()[0] == b"0"
    assert gnn_predict.main(["--job-dir", job, "--data", data, "--user-id", "0"]) == 0


def test_trainer_task_runs_the_gnn_yaml(tiny_data, tmp_path, capsys, monkeypatch):
    from trainer import gnn_predict, task

    job = tmp_path / "job"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(tmp_path / "hp.metrics"))
    code = task.main(["--config", GNN_YAML, "--data", str(tiny_data / "out"), "--job-dir", str(job),
                      "--set", "train.epochs=6", "--set", "train.batch_size=32", "--set", "train.ensemble_size=1",
                      "--hypertune-metric", "accuracy"])
    assert code == 0
    assert "trainer: hetero_gnn test:  accuracy=" in capsys.readouterr().out
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["model"] == "hetero_gnn" and metrics["config"]["hparams"]["use_ids"] is False
    assert metrics["cluster"]["replicas"] == 1 and metrics["cluster"]["steps_per_epoch"] == 8  # 240 train / 32
    assert metrics["test"]["accuracy"] > 0.6  # chance is ~0.45
    assert (job / "export" / "saved_model.pb").exists()
    for name in ("confusion_matrix", "label_distribution", "loss", "network"):
        assert (job / "plots" / f"{name}.png").stat().st_size > 5000
    # The YAML post-processes with Correct and Smooth: the GNN's own numbers are reported beside the final ones.
    assert metrics["config"]["hparams"]["correct_and_smooth"] is True
    stages = metrics["test"]["stages"]
    assert list(stages) == ["gnn", "+ correct and smooth", "+ prior correction"]
    assert stages["+ prior correction"]["accuracy"] == metrics["test"]["accuracy"]
    _check_final_predictions_are_exported(job, tiny_data / "out", metrics)
    capsys.readouterr()
    assert gnn_predict.main(["--job-dir", str(job), "--data", str(tiny_data / "out"), "--user-id", "0"]) == 0
    out = capsys.readouterr().out
    assert "(final: the GNN and its post-processing over the whole graph" in out and "(GNN alone on the user's sampled subgraph)" in out
    assert gnn_predict.main(["--job-dir", str(job), "--user-id", "0", "--top", "2"]) == 0  # the table alone
    assert len(capsys.readouterr().out.splitlines()) == 3
    assert gnn_predict.main(["--job-dir", str(job), "--user-id", "123456"]) == 2
    assert "user 123456 is not a user of the graph" in capsys.readouterr().err
    _check_predict_from_another_file_system(job, tiny_data / "out", capsys)
    # Vertex tuning gets a valid metric after every epoch, and last the chosen epoch's; never a test one.
    records = [json.loads(line) for line in (tmp_path / "hp.metrics").read_text().splitlines()]
    epochs = metrics["selection"]["epochs_run"]
    assert len(records) == epochs + 1
    assert [float(r["accuracy"]) for r in records[:-1]] == pytest.approx(metrics["history"]["val_accuracy"])
    assert float(records[-1]["accuracy"]) == pytest.approx(metrics["valid"]["accuracy"])
    assert int(records[-1]["global_step"]) == epochs * 8


def _check_final_predictions_are_exported(job, data, metrics):
    """``by_user_id`` of the export gives the test users the predictions whose accuracy metrics.json reports."""
    import tensorflow as tf

    rows = read_examples(data / "test" / "part-*.tfrecord.gz")
    ids = [row["context/root_id"][0] for row in rows]
    labels = np.array([row["context/label"][0] for row in rows])
    loaded = tf.saved_model.load(str(job / "export"))
    out = loaded.signatures["by_user_id"](user_id=tf.constant(ids + [b"999999"]))
    assert out["known"].numpy().tolist() == [True] * len(ids) + [False]
    assert out["class"].numpy()[-1] == -1 and not out["probabilities"].numpy()[-1].any()
    np.testing.assert_allclose(out["probabilities"].numpy()[:-1].sum(axis=1), 1.0, atol=1e-5)
    assert (out["class"].numpy()[:-1] == labels).mean() == pytest.approx(metrics["test"]["accuracy"])


def _check_predict_from_another_file_system(job, data, capsys):
    """gnn_predict reads everything through tf.io.gfile: the export and the data copied to TF's ram:// file system.

    (TF's gs:// file system has no emulator endpoint; ram:// is another scheme that no
    os.path / open() call can read, so the command works on any tf.io.gfile path.)
    """
    import tensorflow as tf

    from trainer import gnn_predict

    def copy_tree(source, target):
        for directory, _, files in tf.io.gfile.walk(str(source)):
            relative = os.path.relpath(directory, str(source))
            into = target if relative == "." else f"{target}/{relative}"  # ram:// keeps "./" in names
            tf.io.gfile.makedirs(into)
            for name in files:
                tf.io.gfile.copy(f"{directory}/{name}", f"{into}/{name}", overwrite=True)

    copy_tree(job / "export", "ram://gnn/export")
    copy_tree(data / "test", "ram://gnn/data/test")
    user = read_examples(data / "test" / "part-*.tfrecord.gz")[0]["context/root_id"][0].decode()
    assert gnn_predict.main(["--export", "ram://gnn/export", "--data", "ram://gnn/data", "--user-id", user]) == 0
    assert f"user {user} (test split, true class" in capsys.readouterr().out


def test_same_seed_same_run_the_gnn_monitor_and_the_ensemble_of_seeds(tiny_data, tmp_path):
    """Fits of seeds 0 and 1 with the epoch chosen on the GNN's own valid accuracy (``train.monitor=gnn_accuracy``),
    then ``train.ensemble_size=2``: its members are those two fits again (one seed gives the same run: runner.run's
    own input maps would not), and its export serves the mean of their probabilities."""
    import tensorflow as tf

    overrides = ["train.epochs=3", "train.batch_size=32", "hparams.hidden_dim=16", "train.monitor=gnn_accuracy",
                 "train.ensemble_size=1", "hparams.cs_correct_alpha=0.5", "hparams.prior_correction=0.2"]
    first = run_experiment("lastfm_hetero_gnn.yaml", tiny_data / "out", tmp_path / "a", *overrides)
    other = run_experiment("lastfm_hetero_gnn.yaml", tiny_data / "out", tmp_path / "c", *overrides, "train.seed=1")
    assert other.history["loss"] != first.history["loss"]
    chosen_by = {"gnn_accuracy": [], "accuracy": []}
    for single in (first, other):
        history, best = single.history, single.selection["best_epoch"]
        assert single.selection["monitor"] == "gnn_accuracy"
        for metric, values in chosen_by.items():
            values.append(history[f"val_{metric}"].index(max(history[f"val_{metric}"])) + 1)
        assert best == chosen_by["gnn_accuracy"][-1]
        # That epoch's model, post-processed: the final valid numbers are its epoch's, the GNN's its own.
        assert single.valid["gnn_accuracy"] == pytest.approx(history["val_gnn_accuracy"][best - 1])
        assert single.valid["gnn_accuracy"] == single.valid["stages"]["gnn"]["accuracy"]
        assert single.valid["accuracy"] == pytest.approx(history["val_accuracy"][best - 1])
    # On this data (with C&S 0.5 / 0.7, prior 0.2) the final valid accuracy is flat over the epochs while the GNN's
    # is not: the two monitors keep different epochs, so this test tells them apart.
    assert chosen_by["gnn_accuracy"] != chosen_by["accuracy"], chosen_by

    ensemble = run_experiment("lastfm_hetero_gnn.yaml", tiny_data / "out", tmp_path / "e", *overrides,
                              "train.ensemble_size=2")
    members = ensemble.selection["ensemble"]["members"]
    assert [m["seed"] for m in members] == [0, 1]
    for member, single in zip(members, (first, other)):
        assert member["best_epoch"] == single.selection["best_epoch"]
        assert member["history"].keys() == single.history.keys()
        for name, values in single.history.items():  # float sums may differ in the last bits, nothing more
            assert member["history"][name] == pytest.approx(values, rel=1e-5), name
    assert (tmp_path / "e" / "checkpoints" / "selected-member-1.index").exists()
    records = tf.constant([record.numpy() for record in tf.data.TFRecordDataset(
        tf.io.gfile.glob(str(tiny_data / "out" / "test" / "part-*")), compression_type="GZIP").take(8)])
    served = {name: tf.saved_model.load(str(tmp_path / name / "export")).signatures["serving_default"](
        examples=records)["probabilities"].numpy() for name in ("a", "c", "e")}
    np.testing.assert_allclose(served["e"], (served["a"] + served["c"]) / 2, atol=1e-5)
    assert not np.allclose(served["a"], served["c"], atol=1e-3)


def test_vertex_output_dirs_are_honoured(tiny_data, tmp_path, monkeypatch, capsys):
    """AIP_MODEL_DIR / AIP_CHECKPOINT_DIR / AIP_TENSORBOARD_LOG_DIR win over --job-dir, as for the other models."""
    from trainer import gnn_predict

    dirs = {name: tmp_path / name for name in ("model", "checkpoints", "tensorboard")}
    monkeypatch.setenv("AIP_MODEL_DIR", str(dirs["model"]))
    monkeypatch.setenv("AIP_CHECKPOINT_DIR", str(dirs["checkpoints"]))
    monkeypatch.setenv("AIP_TENSORBOARD_LOG_DIR", str(dirs["tensorboard"]))
    data, job = str(tiny_data / "out"), tmp_path / "job"
    metrics = run_experiment("lastfm_hetero_gnn.yaml", data, job, "train.epochs=3", "train.batch_size=32",
                             "hparams.hidden_dim=16", "train.ensemble_size=1").to_json()
    assert metrics["outputs"]["export"] == str(dirs["model"])
    assert metrics["outputs"]["tensorboard"] == str(dirs["tensorboard"])
    assert "backup" not in metrics["outputs"]  # deleted at the end of a finished fit: not listed
    assert (dirs["model"] / "saved_model.pb").exists() and not (job / "export").exists()
    assert list(dirs["tensorboard"].rglob("events.out.tfevents.*"))
    assert (job / "metrics.json").exists() and (job / "plots" / "loss.png").exists()
    # A finished fit leaves no backup or selection state behind (a relaunch starts afresh).
    assert not [p for p in (dirs["checkpoints"] / "backup").rglob("*") if p.is_file()]
    assert (dirs["checkpoints"] / "kept" / "selected.index").exists()
    assert metrics["history"]["epoch"] == [1, 2, 3] and metrics["selection"]["resumed_after_epoch"] == 0
    best, monitor = metrics["selection"]["best_epoch"], metrics["selection"]["monitor"]
    assert metrics["history"][f"val_{monitor}"][best - 1] == max(metrics["history"][f"val_{monitor}"])
    assert metrics["valid"]["accuracy"] == pytest.approx(metrics["history"]["val_accuracy"][best - 1])
    assert gnn_predict.main(["--export", str(dirs["model"]), "--data", data, "--user-id", "0"]) == 0
    assert "predicted class" in capsys.readouterr().out
    assert gnn_predict.main(["--job-dir", str(job), "--data", data, "--user-id", "0"]) == 2
    assert capsys.readouterr().err.strip() == f"gnn_predict: error: no SavedModel in {job / 'export'}"


@pytest.mark.slow  # ~40 s: a killed run and its relaunch
def test_killed_run_resumes_and_selects_over_the_whole_run(tiny_data, tmp_path):
    """SIGKILL mid-fit, relaunch: training resumes from the backup and the best epoch is chosen over both parts."""
    import signal
    import subprocess

    from tests.test_multiworker import PYTHON, Output, Processes, _env, run_module

    epochs = 14
    job = tmp_path / "job"
    args = ["--config", GNN_YAML, "--data", str(tiny_data / "out"), "--job-dir", str(job),
            "--set", f"train.epochs={epochs}", "--set", f"train.patience={epochs}", "--set", "train.batch_size=32",
            "--set", "hparams.hidden_dim=16", "--set", "train.ensemble_size=1"]
    processes = Processes()
    try:
        first = processes.start([PYTHON, "-m", "trainer.task", *args], env=_env(tmp_path),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out = Output(first)
        # "Epoch 6/" is printed after every callback of epoch 5 ended: backup and selection state are written.
        out.wait_for(r"Epoch 6/", 120)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)
        state = json.loads((job / "backup" / "selection" / "state.json").read_text())
        before = sorted(int(e) for e in state["records"])
        assert before[:5] == [1, 2, 3, 4, 5] and not (job / "metrics.json").exists()

        code, text = run_module(processes, "trainer.task", args, _env(tmp_path), timeout=150)
    finally:
        processes.kill_all()
    assert code == 0, text[-4000:]
    resumed_at = int(re.search(r"^Epoch (\d+)/", text, re.M).group(1))
    assert resumed_at > 5, text[-3000:]  # from the backup, not from epoch 1
    metrics = json.loads((job / "metrics.json").read_text())
    history, selection = metrics["history"], metrics["selection"]
    assert selection["resumed_after_epoch"] == resumed_at - 1
    # The history is the whole run's: the first process's epochs, then the relaunch's.
    assert history["epoch"][:5] == [1, 2, 3, 4, 5] and history["epoch"][-1] == epochs
    assert set(range(resumed_at, epochs + 1)) <= set(history["epoch"])
    assert selection["epochs_run"] == len(history["epoch"]) >= epochs - 1  # a kill between the two writes loses one
    monitored = history[f"val_{selection['monitor']}"]
    best = monitored.index(max(monitored))
    assert selection["best_epoch"] == history["epoch"][best]
    assert not (job / "backup" / "selection").exists()
