"""Local tuning (workflows.tune) and experiment tracking (MLflow, Vertex AI Experiments) on a tiny pipeline output.

Everything runs for real: the MLflow test logs to an ``mlflow server`` (sqlite backend) on
127.0.0.1 that this module starts and stops; the Vertex AI Experiments tracker writes its
requests in a dry run and they are parsed back as ``aiplatform_v1`` protos; the study is an
Optuna study in SQLite, killed by SIGKILL in the middle of a trial and resumed with two
worker processes.
"""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from beam_pipelines import movielens
from tests.conftest import REPO, two_taste_ratings
from trainer import config as config_lib
from trainer import task, tracking
from workflows import tune

# A tiny MF fit: 2 epochs of ~860 ratings; no refit (the shipped MF config refits on train + valid).
FAST = ["train.epochs=2", "train.batch_size=64", "hparams.embedding_dim=4", "train.refit=false"]


def _one_line(code: int, err: str, prefix: str, *needles: str) -> None:
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


class MlflowServer:
    """``mlflow server`` on a free loopback port with a sqlite backend; ``url()`` waits until it answers."""

    def __init__(self, root: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.log = root / "server.log"
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner: faster start
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).with_name("mlflow")), "server", "--backend-store-uri",
                 f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
                 "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def url(self, timeout: float = 240) -> str:
        import urllib.request

        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as response:
                    if response.status == 200:
                        return f"http://127.0.0.1:{self.port}"
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server for this module (started first, so it boots while the pipeline runs)."""
    pytest.importorskip("mlflow.server", reason="pip install mlflow (setup.py extras 'test')")
    server = MlflowServer(tmp_path_factory.mktemp("mlflow"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny MovieLens pipeline output (given split, valid carved from the train side)."""
    root = tmp_path_factory.mktemp("tiny")
    rows = two_taste_ratings(num_users=60, num_items=50, per_user=20, seed=3)
    (root / "base.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for k, (u, i, r, t) in enumerate(rows) if k % 5))
    (root / "test.tsv").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for k, (u, i, r, t) in enumerate(rows) if not k % 5))
    movielens.run(["--input", str(root / "base.tsv"), "--test-input", str(root / "test.tsv"), "--split", "given",
                   "--output", str(root / "data"), "--num-shards", "1"], save_main_session=False)
    return root / "data"


# --- tracking ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_mlflow_and_vertex_experiments_get_params_every_epoch_and_the_outputs(mlflow_server, tiny, tmp_path,
                                                                           monkeypatch):
    """One fit as a Vertex tuning trial would run it (trial id set, hypertune metric), tracked by both trackers."""
    from mlflow.tracking import MlflowClient

    from trainer import tracking_vertex

    url = mlflow_server.url()
    requests_file = tmp_path / "vertex.jsonl"
    for key, value in {"MLFLOW_TRACKING_URI": url, "MLFLOW_EXPERIMENT_NAME": "tiny-mf", "GCP_PROJECT": "test-project",
                       "GCP_REGION": "europe-west4", "VERTEX_TENSORBOARD": "123", "VERTEX_EXPERIMENT": "tiny-mf",
                       "VERTEX_EXPERIMENTS_DRY_RUN": str(requests_file), "CLOUD_ML_TRIAL_ID": "7",
                       "CLOUD_ML_HP_METRIC_FILE": str(tmp_path / "hp.metrics")}.items():
        monkeypatch.setenv(key, value)
    for key in ("AIP_MODEL_DIR", "AIP_CHECKPOINT_DIR", "AIP_TENSORBOARD_LOG_DIR", "TF_CONFIG"):
        monkeypatch.delenv(key, raising=False)
    job = tmp_path / "job"
    argv = ["--config", str(REPO / "configs" / "movielens_mf.yaml"), "--data", str(tiny), "--job-dir", str(job),
            "--track", "mlflow,vertex", "--hypertune-metric", "rmse", "--set", "train.epochs=3"]
    for item in FAST[1:]:
        argv += ["--set", item]
    assert task.main(argv) == 0

    # The trial id puts every output under JOB/trials/<id>/ (what a Vertex trial or a local study trial writes).
    trial_dir = job / "trials" / "7"
    metrics = json.loads((trial_dir / "metrics.json").read_text())
    assert metrics["outputs"]["job_dir"] == str(trial_dir) and (trial_dir / "export" / "saved_model.pb").exists()
    assert sorted(p.name for p in job.iterdir()) == ["trials"]
    hypertune = [json.loads(line) for line in (tmp_path / "hp.metrics").read_text().splitlines()]
    assert [float(r["rmse"]) for r in hypertune] == pytest.approx([*metrics["history"]["val_rmse"], metrics["valid"]["rmse"]])
    assert {r["trial"] for r in hypertune} == {"7"}

    # MLflow: params, tags, the per-epoch curves, final metrics and the files.
    client = MlflowClient(url)
    (run,) = client.search_runs([client.get_experiment_by_name("tiny-mf").experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "7"
    assert run.data.params["train.epochs"] == "3" and run.data.params["hparams.embedding_dim"] == "4"
    assert run.data.tags["model"] == "mf" and run.data.tags["trial"] == "7" and run.data.tags["best_epoch"]
    for name in ("val_rmse", "loss"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == [1, 2, 3]
        assert [m.value for m in history] == pytest.approx(metrics["history"][name])
    assert run.data.metrics["test.rmse"] == pytest.approx(metrics["test"]["rmse"])
    assert run.data.metrics["valid.rmse"] == pytest.approx(metrics["valid"]["rmse"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.json", "config.resolved.yaml", "plots",
                                                                       "saved_model"}
    assert "saved_model/saved_model.pb" in {a.path for a in client.list_artifacts(run.info.run_id, "saved_model")}
    downloaded = client.download_artifacts(run.info.run_id, "metrics.json", str(tmp_path))
    assert json.loads(Path(downloaded).read_text()) == metrics

    # Vertex AI Experiments: every request parses as its aiplatform_v1 type, in the SDK's layout.
    requests = tracking_vertex.read_dry_run(str(requests_file))
    methods = [m for m, _ in requests]
    assert methods[:3] == ["CreateContext", "CreateContext", "AddContextChildren"]
    experiment, run_context = requests[0][1], requests[1][1]
    store = "projects/test-project/locations/europe-west4/metadataStores/default"
    assert experiment.context_id == "tiny-mf" and experiment.context.schema_title == "system.Experiment"
    assert run_context.parent == store and run_context.context.schema_title == "system.ExperimentRun"
    assert run_context.context_id.startswith("tiny-mf-trial-7-")
    assert run_context.context.metadata["_params"]["train.epochs"] == 3
    assert run_context.context.metadata["_state"] == "RUNNING"
    board_run = next(r for m, r in requests if m == "CreateTensorboardRun")
    assert board_run.parent == "projects/test-project/locations/europe-west4/tensorboards/123/experiments/tiny-mf"
    writes = [r for m, r in requests if m == "WriteTensorboardRunData"]
    assert len(writes) == 3
    curve = [next(s.values[0] for s in w.time_series_data if s.tensorboard_time_series_id == "val-rmse") for w in writes]
    assert [p.step for p in curve] == [1, 2, 3]
    assert [p.scalar.value for p in curve] == pytest.approx(metrics["history"]["val_rmse"])
    artifacts = {r.artifact.schema_title: r.artifact for m, r in requests if m == "CreateArtifact"}
    assert artifacts["system.Model"].uri == f"file://{trial_dir}/export"
    final = requests[-1][1]
    assert methods[-1] == "UpdateContext" and final.context.name == f"{store}/contexts/{run_context.context_id}"
    assert final.context.metadata["_state"] == "COMPLETE"
    assert final.context.metadata["_metrics"]["test.rmse"] == pytest.approx(metrics["test"]["rmse"])


def test_a_run_that_ends_without_a_result_is_closed(mlflow_server, tmp_path):
    """A pruned trial (RunStopped) ends KILLED / CANCELLED, an error FAILED; a tracker that never started does nothing."""
    from mlflow.tracking import MlflowClient

    from trainer.tracking_mlflow import MlflowTracker
    from trainer.tracking_vertex import VertexExperimentsTracker, read_dry_run

    url = mlflow_server.url()
    config = config_lib.resolve(str(REPO / "configs" / "movielens_bpr.yaml"))
    tracker = MlflowTracker(tracking_uri=url, experiment="aborted")
    tracker.abort(ValueError("never started"))  # nothing to close
    statuses = {}
    for error in (tracking.RunStopped("pruned after epoch 2"), ValueError("loss became nan")):
        tracker.start(config=config, run_name=type(error).__name__, tags={"model": "bpr"})
        run_id = tracker.run_id
        with pytest.raises(type(error)), tracking.closing(tracker):
            tracker.log_metrics({"val_hr@10": 0.5, "loss": 0.7}, 1)
            raise error
        statuses[type(error).__name__] = MlflowClient(url).get_run(run_id)
    assert statuses["RunStopped"].info.status == "KILLED" and statuses["ValueError"].info.status == "FAILED"
    assert statuses["ValueError"].data.tags["error"] == "loss became nan"
    assert statuses["RunStopped"].data.metrics["val_hr_at_10"] == 0.5  # MLflow names cannot hold '@'

    path = tmp_path / "requests.jsonl"
    vertex = VertexExperimentsTracker(environ={"GCP_PROJECT": "p", "GCP_REGION": "us-central1"}, dry_run=str(path))
    vertex.start(config=config, run_name="job", tags={"model": "bpr"})
    vertex.log_metrics({"loss": 0.7}, 1)  # no TensorBoard: no time series request
    vertex.abort(tracking.RunStopped("pruned"))
    (*_, (method, last)) = read_dry_run(str(path))
    assert method == "UpdateContext" and last.context.metadata["_state"] == "CANCELLED"
    assert [m for m, _ in read_dry_run(str(path))] == ["CreateContext", "CreateContext", "AddContextChildren", "UpdateContext"]


@pytest.mark.parametrize("environ, message", [
    ({"GCP_REGION": "us-central1"}, "--track vertex needs the Google Cloud project and region: set GCP_PROJECT"),
    ({"CLOUD_ML_PROJECT_ID": "p", "CLOUD_ML_REGION": "r", "VERTEX_TENSORBOARD": "a/b"}, "VERTEX_TENSORBOARD 'a/b'"),
    ({"GCP_PROJECT": "p", "GCP_REGION": "r", "VERTEX_EXPERIMENT": "My_Exp"}, "VERTEX_EXPERIMENT 'My_Exp' must be"),
])
def test_vertex_tracker_settings_are_one_line(environ, message):
    from trainer import tracking_vertex

    with pytest.raises(tracking.TrackingError) as raised:
        tracking_vertex.settings_from_env(environ)
    assert message in str(raised.value) and "\n" not in str(raised.value)


def test_tracker_names_are_checked_before_anything_runs():
    tracking.check_name("mlflow,vertex")
    with pytest.raises(config_lib.ConfigError, match="--track 'wandb': unknown tracker; known: none, mlflow, vertex"):
        tracking.check_name("mlflow,wandb")
    assert type(tracking.make_tracker("none")) is tracking.Tracker


# --- the local tuner -----------------------------------------------------------------------------

def test_a_trial_worse_than_the_median_is_pruned():
    """TrialReporter hands each epoch's valid value to a real Optuna study; the median pruner stops a bad trial."""
    import optuna

    definition = {"pruner": "median", "prune_after": 2}
    study = optuna.create_study(direction="maximize", pruner=tune._pruner(definition))
    for curve in ([0.30, 0.40, 0.45], [0.32, 0.41, 0.46], [0.31, 0.42, 0.47]):
        trial = study.ask()
        reporter = tune.TrialReporter(trial, "mrr", prune=True)
        for epoch, value in enumerate(curve, start=1):
            reporter.log_metrics({"val_mrr": value, "loss": 0.5}, epoch)
        study.tell(trial, curve[-1])
    trial = study.ask()
    reporter = tune.TrialReporter(trial, "mrr", prune=True)
    reporter.log_metrics({"val_mrr": 0.10}, 1)  # before --prune-after epochs: never pruned
    with pytest.raises(tune.TrialPruned, match="pruned after epoch 2: valid mrr 0.1100"):
        reporter.log_metrics({"val_mrr": 0.11}, 2)
    assert isinstance(tune.TrialPruned("x"), tracking.RunStopped)  # trackers close the run as stopped
    good = study.ask()
    keep = tune.TrialReporter(good, "mrr", prune=True)
    keep.log_metrics({"val_mrr": 0.45}, 2)
    assert keep.curve == {2: 0.45}


def test_trial_values_become_trainer_overrides():
    import optuna

    space = {"parameters": [
        {"id": "hparams.embedding_dim", "type": "discrete", "values": [64.0, 128.0]},
        {"id": "train.learning_rate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"},
        {"id": "hparams.num_negatives", "type": "integer", "min": 1, "max": 8},
        {"id": "train.optimizer", "type": "categorical", "values": ["adam", "adagrad"]},
        {"id": "hparams.l2_embedding", "type": "double", "min": 0.1, "max": 0.9, "scale": "reverse_log"},
    ]}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(5):
        overrides = dict(o.split("=", 1) for o in tune.suggest(study.ask(), space))
        assert overrides["hparams.embedding_dim"] in ("64", "128")  # whole discrete values as integers
        assert 1e-4 <= float(overrides["train.learning_rate"]) <= 1e-2
        assert overrides["hparams.num_negatives"].isdigit() and overrides["train.optimizer"] in ("adam", "adagrad")
        assert 0.1 <= float(overrides["hparams.l2_embedding"]) <= 0.9
        config_lib.resolve(str(REPO / "configs" / "movielens_bpr.yaml"), [f"{k}={v}" for k, v in overrides.items()])


def test_a_resumed_session_does_not_replay_the_first_sessions_draws(tmp_path):
    """Same seed, new process: the sampler is seeded past the trials already stored (once a kill had a resumed
    TPE session propose exactly the point the interrupted trial had, so it ran twice)."""
    definition = {"space": {"algorithm": "RANDOM_SEARCH", "parameters": [
        {"id": "train.learning_rate", "type": "double", "min": 1e-4, "max": 1e-2, "scale": "log"},
        {"id": "hparams.l2_embedding", "type": "double", "min": 0.01, "max": 0.3}]},
        "seed": 0, "trials": 6, "parallel": 1, "goal": "MINIMIZE", "pruner": "none", "prune_after": 1}
    seen = []
    for _session in range(3):  # each _load is what a new tune process does
        study = tune._load(tmp_path, definition)
        for _ in range(2):
            trial = study.ask()
            seen.append(tuple(tune.suggest(trial, definition["space"])))
            study.tell(trial, 1.0)
    assert len(set(seen)) == 6, seen


def test_every_shipped_search_space_fits_its_config():
    """configs/X_tune.yaml (or X_ASPECT_tune.yaml, a narrower space over X.yaml): a valid space whose metric the
    model reports and whose every bound the trainer takes."""
    from cloud import search_space

    spaces = sorted((REPO / "configs").glob("*_tune.yaml"))
    assert {p.name for p in spaces} >= {f"movielens_{m}_tune.yaml" for m in
                                        ("mf", "bpr", "gmf", "mlp", "neumf", "neumf_pretrained")}
    for path in spaces:
        config_path = path.with_name(path.name.replace("_tune.yaml", ".yaml"))
        if not config_path.exists():
            config_path = path.with_name(path.name.rsplit("_", 2)[0] + ".yaml")
        space = search_space.load_search_space(path)
        config = config_lib.resolve(str(config_path))
        search_space.check_metric(space, config["model"])
        for parameter in space["parameters"]:
            for value in tune._bounds(parameter):
                resolved = config_lib.resolve(str(config_path), [f"{parameter['id']}={value}"])
                section, key = parameter["id"].split(".")
                assert resolved[section][key] == (yaml.safe_load(value) if isinstance(value, str) else value), (
                    path.name, parameter["id"], value)


def _space(path: Path) -> Path:
    path.write_text(yaml.safe_dump({
        "metric": {"id": "rmse", "goal": "MINIMIZE"}, "max_trial_count": 4,
        "parameters": [{"id": "hparams.embedding_dim", "type": "discrete", "values": [2, 4]},
                       {"id": "train.learning_rate", "type": "double", "min": 0.005, "max": 0.05, "scale": "log"}]}))
    return path


def test_bad_study_is_one_line(tiny, tmp_path, capsys):
    space = _space(tmp_path / "space.yaml")
    base = ["--config", str(REPO / "configs" / "movielens_mf.yaml"), "--study", str(space), "--study-dir",
            str(tmp_path / "s"), "--dry-run"]
    cases = [
        (["--data", str(tmp_path)], f"--data {tmp_path} has no dataset.json"),
        (["--data", str(tiny), "--trials", "0"], "--trials and --parallel must be >= 1"),
    ]
    space_text = space.read_text()
    for extra, message in cases:
        code = tune.main([*base, *extra])
        _one_line(code, capsys.readouterr().err, "tune: error: ", message)
    space.write_text(space_text.replace("rmse", "mrr").replace("MINIMIZE", "MAXIMIZE"))
    code = tune.main([*base, "--data", str(tiny)])
    _one_line(code, capsys.readouterr().err, "tune: error: ", "metric 'mrr' is not reported for model mf (rating task)")
    space.write_text(space_text.replace("hparams.embedding_dim", "hparams.embedding_size"))
    code = tune.main([*base, "--data", str(tiny)])
    _one_line(code, capsys.readouterr().err, "tune: error: ", "parameter hparams.embedding_size = 2",
              "unknown key(s) hparams.embedding_size")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_study_is_killed_resumed_in_parallel_and_reports(tiny, tmp_path, capsys):
    """A 4-trial study: dry-run plan, SIGKILL in trial 1, resume with 2 workers, table, plot, best config, final run."""
    import optuna

    study_dir = tmp_path / "study"
    argv = ["--config", str(REPO / "configs" / "movielens_mf.yaml"), "--study", str(_space(tmp_path / "space.yaml")),
            "--data", str(tiny), "--study-dir", str(study_dir), *[a for s in FAST for a in ("--set", s)]]

    # The dry run through the operator's command names every trial's own directory and runs nothing.
    result = subprocess.run([str(REPO / "run-cloud.sh"), "tune", "configs/movielens_mf.yaml", "--local", *argv[2:],
                             "--dry-run"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    plan = json.loads(result.stdout)
    assert plan["trial_job_dirs"] == [f"{study_dir}/trials/{n}/" for n in range(4)]
    assert plan["objective"] == "valid rmse (MINIMIZE)" and "train.monitor=rmse" in plan["fixed"]
    assert not study_dir.exists()

    # Session 1: killed (SIGKILL, no clean-up of any kind) once trial 1 is running.
    first = subprocess.Popen([sys.executable, "-m", "workflows.tune", *argv], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        for line in first.stdout:
            if line.startswith("[tune] trial 0:"):
                break
        storage = f"sqlite:///{study_dir / tune.DB_FILE}"
        deadline = time.monotonic() + 120
        while not any(t.state.name == "RUNNING" and t.number == 1
                      for t in optuna.load_study(study_name=tune.STUDY_NAME, storage=storage).trials):
            assert time.monotonic() < deadline and first.poll() is None
            time.sleep(0.2)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=30)

    # Session 2: the same command with two worker processes finishes the study.
    assert tune.main([*argv, "--parallel", "2"]) == 0
    out = capsys.readouterr().out
    assert "trial(s) 1 were interrupted and run again" in out
    study = optuna.load_study(study_name=tune.STUDY_NAME, storage=storage)
    trials = study.trials
    interrupted = [t for t in trials if t.user_attrs.get("interrupted")]
    counted = [t for t in trials if not t.user_attrs.get("interrupted")]
    assert [t.number for t in interrupted] == [1] and len(counted) == 4
    retry = next(t for t in counted if t.user_attrs.get("retry_of") == 1)
    assert retry.params == interrupted[0].params
    for trial in counted:  # each trial wrote its own directory, the one the dry run named
        assert trial.state.name in ("COMPLETE", "PRUNED"), trial
        assert trial.user_attrs["job_dir"] == f"{study_dir}/trials/{trial.number}"
        if trial.state.name == "COMPLETE":
            written = json.loads((study_dir / "trials" / str(trial.number) / "metrics.json").read_text())
            assert written["valid"]["rmse"] == pytest.approx(trial.value)
            assert written["config"]["train"]["monitor"] == "rmse"
    best = min((t for t in counted if t.state.name == "COMPLETE"), key=lambda t: t.value)
    with open(study_dir / tune.RESULTS_FILE) as handle:
        table = list(csv.DictReader(handle))
    assert [int(r["trial"]) for r in table] == [t.number for t in trials] and table[1]["state"] == "interrupted"
    assert (study_dir / tune.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    chosen = config_lib.resolve(str(study_dir / tune.BEST_FILE))
    for override in best.user_attrs["overrides"]:
        key, value = override.split("=", 1)
        section, name = key.split(".")
        assert chosen[section][name] == pytest.approx(float(value))
    summary = json.loads((study_dir / tune.SUMMARY_FILE).read_text())
    assert summary["best"]["trial"] == best.number and summary["best"]["valid"] == pytest.approx(best.value)
    assert set(summary["final"]["test"]) >= {"rmse", "mae"} and summary["wall_seconds"]["sessions"] == 2
    final = json.loads((study_dir / "final" / "metrics.json").read_text())
    assert final["config"] == chosen and final["test"]["rmse"] == pytest.approx(summary["final"]["test"]["rmse"])

    # Another study in the same directory is refused; the finished one resumes to nothing new.
    code = tune.main([*argv, "--set", "train.epochs=3", "--no-final"])
    _one_line(code, capsys.readouterr().err, "tune: error: ", f"{study_dir} holds another study (its fixed differs)")
