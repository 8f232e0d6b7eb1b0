"""``--track mlflow``: every run of the one experiment as an MLflow run.

The tracking server is MLflow's usual ``MLFLOW_TRACKING_URI`` (e.g. ``http://127.0.0.1:5000``;
unset: MLflow's own default, a local ``sqlite:///mlflow.db``), the experiment
``MLFLOW_EXPERIMENT_NAME`` (default ``recsys-pipelines``; created when missing). What a run holds:

* params: the resolved config, flattened (``train.learning_rate``, ``hparams.embedding_dim``, ...);
* tags: ``model``, ``task``, ``data``, ``trial``/``study`` when tuning, and at the end
  ``best_epoch`` and the selection rule; the run name is the job directory's name;
* metrics per epoch (``step`` = epoch, or Gibbs sweep): the epoch's logs (``loss``,
  ``val_rmse``, ``val_hr_at_10``, ...); at the end ``valid.<metric>`` and ``test.<metric>``
  (test only reports) and the timings (``timing.train_seconds``, ...). MLflow refuses ``@``
  in a name, so ``hr@10`` is logged as ``hr_at_10``;
* artifacts: ``metrics.json``, ``config.resolved.yaml``, ``plots/*.png`` and the SavedModel
  under ``saved_model/`` (files on gs:// are copied through ``tf.io.gfile`` first).

A run that ends without a result is closed ``KILLED`` (stopped on purpose: a pruned tuning
trial, Ctrl-C) or ``FAILED``. ``MlflowClient`` is used rather than ``mlflow.start_run``:
no process-global active run, so tuning trials in one process never log into each other.
The client is ``mlflow-skinny`` (setup.py); ``mlflow server`` needs the full ``mlflow`` package.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Mapping

from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from trainer import tracking

DEFAULT_EXPERIMENT = "recsys-pipelines"
MAX_PARAM_LENGTH = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
PARAMS_PER_BATCH = 100  # MAX_PARAMS_TAGS_PER_BATCH
METRICS_PER_BATCH = 1000  # MAX_METRICS_PER_BATCH


def metric_key(name: str) -> str:
    """An MLflow-valid metric name: ``val_hr@10`` -> ``val_hr_at_10`` (MLflow allows ``/ \\w . - : space``)."""
    return re.sub(r"[^/\w.\- :]", "_", name.replace("@", "_at_"))


def _finite_numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    out = {}
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[metric_key(f"{prefix}{name}")] = float(value)
    return out


class MlflowTracker(tracking.Tracker):
    """Logs a run to the MLflow tracking server of ``MLFLOW_TRACKING_URI`` (see the module docstring)."""

    def __init__(self, tracking_uri: str | None = None, experiment: str | None = None,
                 environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.client = MlflowClient(tracking_uri=tracking_uri or environ.get("MLFLOW_TRACKING_URI") or None)
        self.experiment_name = experiment or environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        self.run_id: str | None = None

    def _experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(self.experiment_name)
        except MlflowException:  # created by a parallel trial in between
            return self.client.get_experiment_by_name(self.experiment_name).experiment_id

    def start(self, *, config, run_name, tags):
        try:
            experiment_id = self._experiment_id()
            run = self.client.create_run(experiment_id, run_name=run_name,
                                         tags={k: str(v) for k, v in tags.items() if v not in (None, "")})
        except (MlflowException, OSError) as error:  # OSError: requests' connection errors
            first = (str(error).strip().splitlines() or [error.__class__.__name__])[0][:200]
            raise tracking.TrackingError(f"--track mlflow: cannot open a run at {self.client.tracking_uri} "
                                         f"(MLFLOW_TRACKING_URI): {first}") from None
        self.run_id = run.info.run_id
        params = [Param(key, str(value)[:MAX_PARAM_LENGTH]) for key, value in tracking.flatten(config).items()]
        for first in range(0, len(params), PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=params[first:first + PARAMS_PER_BATCH])
        print(f"mlflow: run {self.run_id} in experiment {self.experiment_name!r} at {self.client.tracking_uri}",
              file=sys.stderr)

    def _log(self, values: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(key, value, now, step) for key, value in values.items()]
        for first in range(0, len(metrics), METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first:first + METRICS_PER_BATCH])

    def log_metrics(self, values, step):
        if self.run_id is not None:
            self._log(_finite_numbers(values), step)

    def finish(self, result):
        if self.run_id is None:
            return
        final = {**_finite_numbers(result.valid, "valid."), **_finite_numbers(result.test, "test."),
                 **_finite_numbers(result.timings, "timing.")}
        self._log(final, int(result.selection.get("epochs_run") or 0))
        selection = result.selection
        self.client.log_batch(self.run_id, tags=[
            RunTag("best_epoch", str(selection.get("best_epoch"))), RunTag("selection", str(selection.get("rule"))),
            RunTag("job_dir", str(result.outputs.get("job_dir", "")))])
        outputs = result.outputs
        for key in ("metrics", "config"):
            if outputs.get(key):
                self._artifact(outputs[key], None)
        for plot in outputs.get("plots") or ():
            self._artifact(plot, "plots")
        if outputs.get("export"):
            self._artifact(outputs["export"], "saved_model", directory=True)
        self.client.set_terminated(self.run_id, "FINISHED")
        self.run_id = None

    def abort(self, error):
        if self.run_id is None:
            return
        stopped = isinstance(error, (tracking.RunStopped, KeyboardInterrupt))
        self.client.set_tag(self.run_id, "stopped" if stopped else "error",
                            str(error).splitlines()[0][:500] if str(error) else type(error).__name__)
        self.client.set_terminated(self.run_id, "KILLED" if stopped else "FAILED")
        self.run_id = None

    def _artifact(self, path: str, artifact_path: str | None, directory: bool = False) -> None:
        """Uploads a file or directory; a gs:// one through a local copy (MLflow uploads local files)."""
        if "://" not in path:
            if directory:
                self.client.log_artifacts(self.run_id, path, artifact_path)
            else:
                self.client.log_artifact(self.run_id, path, artifact_path)
            return
        import tensorflow as tf  # loaded already by the run; gfile reads gs://

        scratch = tempfile.mkdtemp(prefix="mlflow-artifact-")
        try:
            local = os.path.join(scratch, os.path.basename(path.rstrip("/")))
            if directory:
                for root, _, files in tf.io.gfile.walk(path):
                    relative = os.path.relpath(root, path) if root != path else ""
                    os.makedirs(os.path.join(local, relative), exist_ok=True)
                    for name in files:
                        tf.io.gfile.copy(f"{root.rstrip('/')}/{name}", os.path.join(local, relative, name))
                self.client.log_artifacts(self.run_id, local, artifact_path)
            else:
                tf.io.gfile.copy(path, local)
                self.client.log_artifact(self.run_id, local, artifact_path)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
