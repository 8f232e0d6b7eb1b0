"""``--track vertex``: every run of the one experiment as a Vertex AI Experiments run.

Vertex AI Experiments keeps runs in the Vertex ML Metadata store and per-step metrics in a
Vertex AI TensorBoard. This tracker builds the same records the ``aiplatform`` SDK's
``aiplatform.start_run`` / ``log_params`` / ``log_time_series_metrics`` / ``log_metrics``
make (schema titles and metadata keys of ``google.cloud.aiplatform.metadata``), as
``aiplatform_v1`` request protos, and sends them with the ``aiplatform_v1`` clients. The SDK
itself is not used because its calls talk to Google Cloud as they are made: building the
requests here lets ``VERTEX_EXPERIMENTS_DRY_RUN=FILE`` write every request (JSON lines,
``{"method": ..., "request": ...}``) and send nothing, like the other dry runs of this project.

Settings (environment; inside a Vertex AI job the ``CLOUD_ML_*`` ones are set by Vertex):

* project: ``GCP_PROJECT``, else ``CLOUD_ML_PROJECT_ID`` / ``GOOGLE_CLOUD_PROJECT``;
* region: ``GCP_REGION``, else ``CLOUD_ML_REGION`` / ``GOOGLE_CLOUD_REGION``;
* experiment: ``VERTEX_EXPERIMENT``, else ``AIP_EXPERIMENT_NAME``, else ``recsys-pipelines``;
* per-epoch metrics: ``VERTEX_TENSORBOARD`` (an id, or ``projects/P/locations/R/tensorboards/ID``),
  the experiment's backing TensorBoard. Without it, params, final metrics and artifacts are
  logged and the per-epoch curves stay in the job's own TensorBoard files (one line says so).

What a run holds: the experiment context (``system.Experiment``) and the run context
(``system.ExperimentRun``, id ``EXPERIMENT-RUN``) whose metadata holds ``_params`` (the
resolved config, flattened), ``_metrics`` (``valid.<metric>``, ``test.<metric>``; test
only reports) and ``_state`` (``RUNNING`` -> ``COMPLETE``; ``CANCELLED`` for a run stopped on
purpose, ``FAILED`` after an error); with a TensorBoard, a TensorBoard experiment and run,
one scalar time series per epoch log (``loss``, ``val_mrr``, ...) written at step = epoch,
and the ``google.VertexTensorboardRun`` artifact that links them; artifacts for
``metrics.json``, ``config.resolved.yaml``, the plots (``system.Artifact``) and the SavedModel
(``system.Model``), by URI (gs:// inside a Vertex job; ``file://`` for a local job directory).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import sys
from typing import Any, Mapping

from google.cloud import aiplatform_v1 as aip

from trainer import tracking

DEFAULT_EXPERIMENT = "recsys-pipelines"
METADATA_STORE = "metadataStores/default"
SCHEMA_VERSION = "0.0.1"  # google.cloud.aiplatform.metadata.constants: every system schema's version
DRY_RUN_ENV = "VERTEX_EXPERIMENTS_DRY_RUN"
# method -> (client, client method): what ``_send`` calls for each request kind.
METHODS = {
    "CreateContext": ("MetadataServiceClient", "create_context"),
    "AddContextChildren": ("MetadataServiceClient", "add_context_children"),
    "CreateArtifact": ("MetadataServiceClient", "create_artifact"),
    "AddContextArtifactsAndExecutions": ("MetadataServiceClient", "add_context_artifacts_and_executions"),
    "UpdateContext": ("MetadataServiceClient", "update_context"),
    "CreateTensorboardExperiment": ("TensorboardServiceClient", "create_tensorboard_experiment"),
    "CreateTensorboardRun": ("TensorboardServiceClient", "create_tensorboard_run"),
    "CreateTensorboardTimeSeries": ("TensorboardServiceClient", "create_tensorboard_time_series"),
    "WriteTensorboardRunData": ("TensorboardServiceClient", "write_tensorboard_run_data"),
}


def resource_id(text: str, limit: int = 128) -> str:
    """A Vertex resource id (``[a-z0-9][a-z0-9-]{0,127}``): ``val_hr@10`` -> ``val-hr-at-10``."""
    value = re.sub(r"[^a-z0-9-]+", "-", str(text).lower().replace("@", "-at-")).strip("-")
    return (value or "run")[:limit].rstrip("-")


def _param(value: Any) -> float | int | str:
    """Experiment params are numbers or strings (the SDK's ``log_params`` takes only those)."""
    if isinstance(value, bool) or value is None or not isinstance(value, (int, float, str)):
        return json.dumps(value) if not isinstance(value, str) else value
    return value


def _metrics(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _uri(path: str) -> str:
    return path if "://" in path else f"file://{os.path.abspath(path)}"


def settings_from_env(environ: Mapping[str, str]) -> dict[str, str | None]:
    """``project``, ``region``, ``experiment`` and ``tensorboard`` (full name or None) from the environment.

    Raises:
      tracking.TrackingError: no project or region, or a malformed TensorBoard.
    """
    project = environ.get("GCP_PROJECT") or environ.get("CLOUD_ML_PROJECT_ID") or environ.get("GOOGLE_CLOUD_PROJECT")
    region = environ.get("GCP_REGION") or environ.get("CLOUD_ML_REGION") or environ.get("GOOGLE_CLOUD_REGION")
    if not project or not region:
        missing = [n for n, v in (("GCP_PROJECT", project), ("GCP_REGION", region)) if not v]
        raise tracking.TrackingError(f"--track vertex needs the Google Cloud project and region: set {' and '.join(missing)} "
                                     "(inside a Vertex AI job CLOUD_ML_PROJECT_ID / CLOUD_ML_REGION are used)")
    experiment = environ.get("VERTEX_EXPERIMENT") or environ.get("AIP_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    if resource_id(experiment) != experiment:
        raise tracking.TrackingError(f"VERTEX_EXPERIMENT {experiment!r} must be lower-case letters, digits and '-' "
                                     f"(e.g. {resource_id(experiment)!r})")
    board = (environ.get("VERTEX_TENSORBOARD") or "").strip() or None
    if board and re.fullmatch(r"[A-Za-z0-9_-]+", board):
        board = f"projects/{project}/locations/{region}/tensorboards/{board}"
    elif board and not re.fullmatch(r"projects/[^/]+/locations/[^/]+/tensorboards/[^/]+", board):
        raise tracking.TrackingError(f"VERTEX_TENSORBOARD {board!r} must be a TensorBoard id or "
                                     "projects/PROJECT/locations/REGION/tensorboards/ID")
    return {"project": project, "region": region, "experiment": experiment, "tensorboard": board}


class VertexExperimentsTracker(tracking.Tracker):
    """Logs a run to Vertex AI Experiments (see the module docstring); ``dry_run`` writes the requests instead."""

    def __init__(self, environ: Mapping[str, str] | None = None, dry_run: str | None = None):
        environ = os.environ if environ is None else environ
        self.settings = settings_from_env(environ)
        self.dry_run = dry_run if dry_run is not None else environ.get(DRY_RUN_ENV) or None
        self.parent = f"projects/{self.settings['project']}/locations/{self.settings['region']}"
        self.store = f"{self.parent}/{METADATA_STORE}"
        self.experiment_context = f"{self.store}/contexts/{self.settings['experiment']}"
        self.run_context: str | None = None
        self.tensorboard_run: str | None = None
        self.series: dict[str, str] = {}  # metric -> time series id
        self.sent = 0
        self._clients: dict[str, Any] = {}
        self._params: dict[str, Any] = {}
        self._display_name = ""

    # -- sending -------------------------------------------------------------------------------
    def _send(self, method: str, request, shared: bool = False):
        """Sends one request (or, in a dry run, appends it to the dry-run file).

        ``shared``: the resource may exist from an earlier run (the experiment, its TensorBoard
        experiment: one experiment holds many runs), so AlreadyExists is fine.
        """
        self.sent += 1
        if self.dry_run:
            with open(self.dry_run, "a", encoding="utf-8") as handle:
                handle.write(json.dumps({"method": method, "request": json.loads(type(request).to_json(request))}) + "\n")
            return None
        from google.api_core import exceptions

        client_name, call = METHODS[method]
        if client_name not in self._clients:
            import google.auth

            try:
                credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
            except Exception as error:  # DefaultCredentialsError and friends
                raise tracking.TrackingError(
                    "--track vertex: no Google Cloud credentials (gcloud auth application-default login, or "
                    f"GOOGLE_APPLICATION_CREDENTIALS) ({error.__class__.__name__})") from None
            self._clients[client_name] = getattr(aip, client_name)(
                credentials=credentials, client_options={"api_endpoint": f"{self.settings['region']}-aiplatform.googleapis.com"})
        try:
            return getattr(self._clients[client_name], call)(request=request)
        except exceptions.AlreadyExists:
            if shared:
                return None
            raise tracking.TrackingError(f"--track vertex: {method} found an existing resource "
                                         f"({getattr(request, 'parent', '')})") from None
        except exceptions.GoogleAPICallError as error:
            raise tracking.TrackingError(f"--track vertex: {method} failed: {error.__class__.__name__} "
                                         f"{str(error).splitlines()[0][:200]}") from None

    # -- the run -------------------------------------------------------------------------------
    def start(self, *, config, run_name, tags):
        settings = self.settings
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d-%H%M%S")
        trial = tags.get("trial")
        name = resource_id("-".join(p for p in (tags.get("study"), run_name if not trial else f"trial-{trial}", stamp) if p),
                           limit=100)
        run_id = resource_id(f"{settings['experiment']}-{name}")
        self.run_context = f"{self.store}/contexts/{run_id}"
        self._display_name = name
        self._params = {k: _param(v) for k, v in tracking.flatten(config).items()}
        for key, value in tags.items():
            if value not in (None, ""):
                self._params[f"tag.{key}"] = str(value)
        experiment_metadata: dict[str, Any] = {"experiment_deleted": False}
        if settings["tensorboard"]:
            experiment_metadata["backing_tensorboard_resource"] = settings["tensorboard"]
        self._send("CreateContext", aip.CreateContextRequest(
            parent=self.store, context_id=settings["experiment"],
            context=aip.Context(display_name=settings["experiment"], schema_title="system.Experiment",
                                schema_version=SCHEMA_VERSION, metadata=experiment_metadata)), shared=True)
        self._send("CreateContext", aip.CreateContextRequest(
            parent=self.store, context_id=run_id,
            context=aip.Context(display_name=name, schema_title="system.ExperimentRun", schema_version=SCHEMA_VERSION,
                                metadata=self._run_metadata({}, "RUNNING"))))
        self._send("AddContextChildren", aip.AddContextChildrenRequest(
            context=self.experiment_context, child_contexts=[self.run_context]))
        if settings["tensorboard"]:
            self._start_tensorboard_run(run_id, name)
        else:
            print("vertex: VERTEX_TENSORBOARD is not set: params, final metrics and artifacts go to Vertex AI "
                  "Experiments; the per-epoch curves stay in the job's TensorBoard files", file=sys.stderr)
        print(f"vertex: run {self.run_context}{' (dry run: ' + self.dry_run + ')' if self.dry_run else ''}",
              file=sys.stderr)

    def _start_tensorboard_run(self, run_id: str, name: str) -> None:
        board, experiment = self.settings["tensorboard"], self.settings["experiment"]
        board_experiment = f"{board}/experiments/{experiment}"
        self._send("CreateTensorboardExperiment", aip.CreateTensorboardExperimentRequest(
            parent=board, tensorboard_experiment_id=experiment,
            tensorboard_experiment=aip.TensorboardExperiment(
                display_name=experiment, labels={"vertex_tensorboard_experiment_source": "vertex_experiment"})),
            shared=True)
        board_run_id = resource_id(name)
        self.tensorboard_run = f"{board_experiment}/runs/{board_run_id}"
        self._send("CreateTensorboardRun", aip.CreateTensorboardRunRequest(
            parent=board_experiment, tensorboard_run_id=board_run_id, tensorboard_run=aip.TensorboardRun(display_name=name)))
        link = f"{run_id}-tb-run"
        self._send("CreateArtifact", aip.CreateArtifactRequest(
            parent=self.store, artifact_id=link,
            artifact=aip.Artifact(
                display_name=link, uri=f"https://{self.settings['region']}-aiplatform.googleapis.com/v1/{self.tensorboard_run}",
                schema_title="google.VertexTensorboardRun", schema_version=SCHEMA_VERSION, state=aip.Artifact.State.LIVE,
                metadata={"resourceName": self.tensorboard_run, "vertex_experiment_tracking": True})))
        self._send("AddContextArtifactsAndExecutions", aip.AddContextArtifactsAndExecutionsRequest(
            context=self.run_context, artifacts=[f"{self.store}/artifacts/{link}"]))

    def _run_metadata(self, metrics: Mapping[str, float], state: str) -> dict[str, Any]:
        return {"_params": dict(self._params), "_metrics": dict(metrics), "_state": state}

    def log_metrics(self, values, step):
        if self.run_context is None or self.tensorboard_run is None:
            return
        numbers = _metrics(values, "")
        for key in numbers:
            if key not in self.series:
                self.series[key] = resource_id(key)
                self._send("CreateTensorboardTimeSeries", aip.CreateTensorboardTimeSeriesRequest(
                    parent=self.tensorboard_run, tensorboard_time_series_id=self.series[key],
                    tensorboard_time_series=aip.TensorboardTimeSeries(
                        display_name=key, value_type=aip.TensorboardTimeSeries.ValueType.SCALAR, plugin_name="scalars")))
        now = datetime.datetime.now(datetime.timezone.utc)
        self._send("WriteTensorboardRunData", aip.WriteTensorboardRunDataRequest(
            tensorboard_run=self.tensorboard_run,
            time_series_data=[aip.TimeSeriesData(
                tensorboard_time_series_id=self.series[key], value_type=aip.TensorboardTimeSeries.ValueType.SCALAR,
                values=[aip.TimeSeriesDataPoint(scalar=aip.Scalar(value=value), step=int(step), wall_time=now)])
                for key, value in numbers.items()]))

    def _artifacts(self, outputs: Mapping[str, Any]) -> list[str]:
        """CreateArtifact for metrics.json, the config, each plot and the SavedModel; their resource names."""
        run_id = self.run_context.rsplit("/", 1)[1]
        files = [("metrics", outputs.get("metrics"), "system.Artifact"), ("config", outputs.get("config"), "system.Artifact")]
        files += [(f"plot-{os.path.splitext(os.path.basename(p))[0]}", p, "system.Artifact") for p in outputs.get("plots") or ()]
        files.append(("saved-model", outputs.get("export"), "system.Model"))
        names = []
        for kind, path, schema in files:
            if not path:
                continue
            artifact_id = resource_id(f"{run_id}-{kind}")
            metadata = {"framework": "tensorflow", "format": "SavedModel"} if schema == "system.Model" else {}
            self._send("CreateArtifact", aip.CreateArtifactRequest(
                parent=self.store, artifact_id=artifact_id,
                artifact=aip.Artifact(display_name=os.path.basename(path.rstrip("/")), uri=_uri(path), schema_title=schema,
                                      schema_version=SCHEMA_VERSION, state=aip.Artifact.State.LIVE, metadata=metadata)))
            names.append(f"{self.store}/artifacts/{artifact_id}")
        return names

    def _update_run(self, metrics: Mapping[str, float], state: str) -> None:
        self._send("UpdateContext", aip.UpdateContextRequest(
            context=aip.Context(name=self.run_context, display_name=self._display_name, schema_title="system.ExperimentRun",
                                schema_version=SCHEMA_VERSION, metadata=self._run_metadata(metrics, state)),
            update_mask={"paths": ["metadata"]}))

    def finish(self, result):
        if self.run_context is None:
            return
        artifacts = self._artifacts(result.outputs)
        if artifacts:
            self._send("AddContextArtifactsAndExecutions", aip.AddContextArtifactsAndExecutionsRequest(
                context=self.run_context, artifacts=artifacts))
        metrics = {**_metrics(result.valid, "valid."), **_metrics(result.test, "test.")}
        metrics["best_epoch"] = float(result.selection.get("best_epoch") or 0)
        self._update_run(metrics, "COMPLETE")
        note = f" (dry run: {self.sent} requests in {self.dry_run})" if self.dry_run else ""
        print(f"vertex: run {self.run_context} complete{note}", file=sys.stderr)
        self.run_context = None

    def abort(self, error):
        if self.run_context is None:
            return
        stopped = isinstance(error, (tracking.RunStopped, KeyboardInterrupt))
        self._update_run({}, "CANCELLED" if stopped else "FAILED")
        self.run_context = None


def read_dry_run(path: str) -> list[tuple[str, Any]]:
    """The ``(method, aiplatform_v1 request)`` pairs of a dry-run file, parsed back into the protos."""
    parsed = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            record = json.loads(line)
            request_type = getattr(aip, f"{record['method']}Request")
            parsed.append((record["method"], request_type.from_json(json.dumps(record["request"]))))
    return parsed


