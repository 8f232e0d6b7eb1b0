"""Dataflow and Vertex AI requests for ``run-cloud.sh``: built offline, printed or sent.

The builders are pure functions returning ``google.cloud.aiplatform_v1`` protos
or argument lists; ``--dry-run`` prints them (JSON / a command line) and sends
nothing. Without ``--dry-run`` the same objects are sent: uploads with
``gcloud storage cp``, Vertex requests with the ``aiplatform_v1`` clients,
Dataflow by running the Beam pipeline with ``--runner DataflowRunner``.

Settings come from ``configs/cloud.yaml`` with environment overrides
(``GCP_PROJECT``, ``GCP_REGION``, ``GCS_BUCKET``, ``GCP_SERVICE_ACCOUNT``,
``VERTEX_TRAIN_CONTAINER``, ``VERTEX_TRAIN_IMAGE``, ``VERTEX_SERVING_IMAGE``,
``VERTEX_TENSORBOARD``).

Every Vertex AI resource created here carries the labels ``app=recsys-pipelines`` and
``job=<name>`` (Dataflow jobs too), which is how ``cleanup`` (``cloud/cleanup.py``) finds
what this project created and nothing else.

Data convention: ``preprocess DATASET`` writes ``gs://BUCKET/data/DATASET/NAME`` (NAME defaults
to a timestamp) and, once the pipeline succeeded, records that path in the text object
``gs://BUCKET/data/DATASET/LATEST``; ``train``/``tune`` without ``--data`` read it (DATASET is
the trainer config's name up to the first ``_``: ``movielens_mf`` -> ``movielens``, or
``--dataset``); ``--data NAME`` means ``gs://BUCKET/data/DATASET/NAME``.

Training runs in one of two modes (``train_mode`` in the settings, or ``--container-image`` /
``--python-package``): ``container`` (default) runs our own image, built from
``cloud/container/Dockerfile`` by ``build-image``, through a ``containerSpec``; ``python_package``
uploads an sdist and runs it in a Vertex prebuilt training image (``pythonPackageSpec``), which
only installs where the image's Python matches ``python_requires`` (3.11; Vertex ships 3.10).

Usage (normally through ``./run-cloud.sh``)::

    python -m cloud.vertex build-image --tag us-central1-docker.pkg.dev/P/recsys/trainer:latest --dry-run
    python -m cloud.vertex train configs/movielens_mf.yaml --data gs://B/data/ml-100k --workers 4 --dry-run
    python -m cloud.vertex train configs/movielens_mf.yaml --local --data OUT --job-dir JOB --dry-run
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from cloud.settings import (  # noqa: F401  (re-exported: the command line and tests use vertex.X)
    APP_LABEL, DEFAULT_CLOUD_CONFIG, ENV_OVERRIDES, JOB_LABEL, PLACEHOLDER, REPO, CloudError, gcs, is_placeholder,
    label_value, labels, load_settings, parent, require, timestamp, to_dict,
)
from cloud.settings import client_options as _client_options
from cloud.settings import credentials as _credentials

TRAINER_MODULE = "trainer.task"
TRAIN_MODES = ("container", "python_package")
DEFAULT_TRAIN_MODE = "container"
CONTAINER_DIR = "cloud/container"  # Dockerfile, cloudbuild.yaml, gcloudignore (paths relative to REPO)
SERVING_DIR = "cloud/serving_container"  # the prediction server's image: the same three files + server.py
# The Dataflow worker image (a custom Beam SDK container): its Dockerfile and Cloud Build config sit in
# CONTAINER_DIR and share the training image's upload allow list (they copy the same files).
DATAFLOW_DOCKERFILE = f"{CONTAINER_DIR}/Dockerfile.dataflow"
DATAFLOW_CLOUDBUILD = f"{CONTAINER_DIR}/cloudbuild.dataflow.yaml"
IMAGE_KINDS = ("train", "serving", "dataflow")
SDIST = "<sdist of setup.py>"  # stands for the archive build_sdist makes at submission time
DEFAULT_TIMEOUT = "24h"  # Scheduling.timeout (Vertex's own default is 7 days); scheduling.timeout / --timeout
# The environment cloud/container/Dockerfile sets (ENV); train --local gives the trainer the same.
CONTAINER_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1", "TF_USE_LEGACY_KERAS": "1"}
# The prediction server of cloud/serving_container (server.py): port and routes of its Vertex contract.
SERVING_PORT = 8080
PREDICT_ROUTE = "/predict"
HEALTH_ROUTE = "/health"
TF_MINOR = 21  # setup.py pins tensorflow==2.21.0; a prebuilt tf2-cpu.2-NN serving image must match
LATEST = "LATEST"  # gs://BUCKET/data/DATASET/LATEST holds the newest preprocess output of DATASET


def parse_timeout(value: Any) -> datetime.timedelta:
    """``"24h"``, ``"90m"``, ``"3600s"``, ``"2d"`` or a number of seconds, as a timedelta (> 0)."""
    text = str(value).strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([smhd]?)", text)
    if not match or float(match.group(1)) <= 0:
        raise CloudError(f"timeout {value!r} must be a positive duration such as 24h, 90m, 3600s or 2d")
    seconds = float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    return datetime.timedelta(seconds=seconds)


def scheduling(settings: Mapping[str, Any], timeout: str | None = None):
    """Scheduling: restart the whole job when a worker restarts, and a timeout.

    ``restart_job_on_worker_restart``: MultiWorkerMirroredStrategy cannot take a worker that
    leaves and comes back (the others wait for it forever), so Vertex restarts every task and
    BackupAndRestore resumes from the last finished epoch. The timeout (``--timeout``, else
    ``scheduling.timeout`` in the settings, else 24h) also ends a job whose peers hang.
    """
    from google.cloud import aiplatform_v1 as aip

    configured = (settings.get("scheduling") or {}).get("timeout")
    return aip.Scheduling(timeout=parse_timeout(timeout or configured or DEFAULT_TIMEOUT),
                          restart_job_on_worker_restart=True)


def tensorboard_name(settings: Mapping[str, Any]) -> str | None:
    """The Vertex AI TensorBoard resource of the settings (``tensorboard`` / ``$VERTEX_TENSORBOARD``), or None.

    An id is expanded to ``projects/P/locations/REGION/tensorboards/ID``. Vertex uploads
    TensorBoard logs only from a job that runs as a service account, and the TensorBoard
    must be in the job's region.
    """
    value = settings.get("tensorboard")
    if is_placeholder(value):
        return None
    value = str(value).strip()
    path = settings.get("_path", "configs/cloud.yaml")
    if re.fullmatch(r"[A-Za-z0-9_-]+", value):
        name = f"{parent(settings)}/tensorboards/{value}"
    elif re.fullmatch(r"projects/[^/]+/locations/[^/]+/tensorboards/[^/]+", value):
        name = value
    else:
        raise CloudError(f"tensorboard {value!r} must be a TensorBoard id or "
                         "projects/PROJECT/locations/REGION/tensorboards/ID (set VERTEX_TENSORBOARD or edit "
                         f"{path})")
    location = name.split("/")[3]
    if location != settings["region"]:
        raise CloudError(f"tensorboard {name} is in {location} but jobs run in {settings['region']}: "
                         "Vertex AI needs the TensorBoard, the job and the bucket in one region")
    if is_placeholder(settings.get("service_account")):
        raise CloudError(f"tensorboard {name} needs a service account: Vertex AI uploads TensorBoard logs only "
                         "from a job that runs as one; set service_account (GCP_SERVICE_ACCOUNT or edit "
                         f"{path}) to an account with roles/storage.admin and roles/aiplatform.user, "
                         "or unset tensorboard (VERTEX_TENSORBOARD)")
    return name


def vertex_output_env(base_output_dir: str, trial_id: str | None = None) -> dict[str, str]:
    """What Vertex AI sets for ``base_output_directory`` (a trial's: ``BASE/<trial id>/...``)."""
    base = base_output_dir.rstrip("/") + (f"/{trial_id}" if trial_id else "")
    return {"AIP_MODEL_DIR": f"{base}/model/", "AIP_CHECKPOINT_DIR": f"{base}/checkpoints/",
            "AIP_TENSORBOARD_LOG_DIR": f"{base}/logs/"}


# --- data convention: gs://BUCKET/data/DATASET/NAME and gs://BUCKET/data/DATASET/LATEST ---------

def pipelines() -> list[str]:
    """The Beam pipeline modules (the datasets ``preprocess`` can run)."""
    return sorted(p.stem for p in (REPO / "beam_pipelines").glob("*.py") if p.stem not in ("__init__", "common", "features"))


def check_dataset(dataset: str) -> str:
    if importlib.util.find_spec(f"beam_pipelines.{dataset}") is None or dataset not in pipelines():
        raise CloudError(f"unknown dataset {dataset!r}: no module beam_pipelines.{dataset} (pipelines: {', '.join(pipelines())})")
    return dataset


def config_dataset(config: str, dataset: str | None = None) -> str:
    """``--dataset``, else the config name up to the first ``_`` (``movielens_mf`` -> ``movielens``)."""
    if dataset:
        return check_dataset(dataset)
    prefix = Path(config).stem.split("_", 1)[0]
    if prefix not in pipelines():
        raise CloudError(f"cannot tell the dataset of {config}: its name does not start with a pipeline name "
                         f"({', '.join(pipelines())}); pass --dataset DATASET or --data gs://...")
    return prefix


def data_dir(settings: Mapping[str, Any], dataset: str, name: str | None = None) -> str:
    return gcs(settings, "data", dataset, name or "")


def latest_uri(settings: Mapping[str, Any], dataset: str) -> str:
    return gcs(settings, "data", dataset, LATEST)


def _split_gcs(uri: str) -> tuple[str, str]:
    bucket, _, blob = uri.removeprefix("gs://").partition("/")
    return bucket, blob


def storage_client(settings: Mapping[str, Any]):
    """A google-cloud-storage client (honours ``STORAGE_EMULATOR_HOST`` for tests)."""
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=str(settings.get("project") or "test"), credentials=AnonymousCredentials())
    return storage.Client(project=str(settings["project"]), credentials=_credentials())


def _gcs_error(action: str, uri: str, error: Exception) -> CloudError:
    first = (str(error).strip().splitlines() or [""])[0][:200]
    return CloudError(f"cannot {action} {uri}: {error.__class__.__name__} {first}".rstrip())


def write_latest(client, uri: str, output: str) -> None:
    """Records ``output`` as the newest pipeline output in the text object ``uri`` (``.../LATEST``)."""
    from google.api_core import exceptions

    bucket, blob = _split_gcs(uri)
    try:
        client.bucket(bucket).blob(blob).upload_from_string(output.rstrip("/") + "\n", content_type="text/plain")
    except exceptions.GoogleAPICallError as error:
        raise _gcs_error("write", uri, error) from None


def read_latest(client, uri: str) -> str:
    """The pipeline output recorded in ``uri``; a CloudError saying what to run when there is none."""
    from google.api_core import exceptions

    bucket, blob = _split_gcs(uri)
    try:
        text = client.bucket(bucket).blob(blob).download_as_text().strip()
    except exceptions.NotFound:
        dataset = blob.split("/")[-2] if "/" in blob else "DATASET"
        raise CloudError(f"{uri} does not exist: run ./run-cloud.sh preprocess {dataset} first, "
                         "or pass --data gs://... (or --data NAME)") from None
    except exceptions.GoogleAPICallError as error:
        raise _gcs_error("read", uri, error) from None
    if not text.startswith("gs://"):
        raise CloudError(f"{uri} holds {text[:80]!r}, not a gs:// path: rerun preprocess or pass --data")
    return text


def resolve_data(settings: Mapping[str, Any], data: str | None, dataset: str, *, dry_run: bool, client=None) -> str:
    """``--data`` for train/tune: gs:// as given, NAME under the dataset, else the dataset's LATEST.

    In a dry run LATEST is not read (nothing is sent); the request then holds
    ``{gs://BUCKET/data/DATASET/LATEST}``, the object that would be read.
    """
    if data:
        if data.startswith("gs://"):
            return data.rstrip("/")
        if re.fullmatch(r"[\w.-]+", data) and data not in (".", ".."):
            return data_dir(settings, dataset, data)
        raise CloudError(f"--data {data} must be a gs:// path or a NAME under {data_dir(settings, dataset)}/ "
                         "(a local directory works with --local)")
    uri = latest_uri(settings, dataset)
    if dry_run:
        return f"{{{uri}}}"
    return read_latest(client or storage_client(settings), uri)


# --- Dataflow --------------------------------------------------------------------------------

def dataflow_worker_flags(settings: Mapping[str, Any]) -> list[str]:
    """How Dataflow workers get this package: our worker image when ``images.dataflow_worker`` is set
    (``--sdk_container_image``: nothing installed at start-up), else ``--setup_file ./setup.py`` (each
    worker pip-installs the package and TensorFlow when it starts)."""
    image = str((settings.get("images") or {}).get("dataflow_worker") or "")
    if image and not is_placeholder(image):
        return ["--sdk_container_image", image]
    return ["--setup_file", "./setup.py"]


def dataflow_command(
    settings: Mapping[str, Any], dataset: str, input_path: str | None, output: str | None = None,
    extra: Sequence[str] = (), job_name: str | None = None, python: str = "python", name: str | None = None,
) -> list[str]:
    """The command line that runs ``beam_pipelines.DATASET`` on Dataflow.

    The output defaults to ``gs://BUCKET/data/DATASET/NAME`` (NAME: a timestamp); the
    caller records it in ``gs://BUCKET/data/DATASET/LATEST`` once the pipeline succeeded.
    ``input_path`` is the movielens ``--input``; lastfm takes ``--edges``/``--targets`` in ``extra``.
    """
    module = f"beam_pipelines.{check_dataset(dataset)}"
    stamp = timestamp()
    if name is not None and not re.fullmatch(r"[\w.-]+", name):
        raise CloudError(f"--name {name!r} must be one path segment (letters, digits, . _ -)")
    job_name = job_name or f"{dataset}-{name or stamp}".replace("_", "-").replace(".", "-").lower()
    command = [python, "-m", module]
    if input_path:
        command += ["--input", input_path]
    command += [
        "--output", output or data_dir(settings, dataset, name or stamp),
        "--runner", "DataflowRunner",
        "--project", str(settings["project"]),
        "--region", str(settings["region"]),
        "--temp_location", gcs(settings, "dataflow", "temp"),
        "--staging_location", gcs(settings, "dataflow", "staging"),
        "--job_name", job_name,
        *dataflow_worker_flags(settings),
        "--labels", f"{APP_LABEL[0]}={APP_LABEL[1]}",
        "--labels", f"{JOB_LABEL}={label_value(job_name)}",
    ]
    machine = (settings.get("machine_types") or {}).get("dataflow")
    if machine:
        command += ["--machine_type", str(machine)]
    max_workers = (settings.get("dataflow") or {}).get("max_num_workers")
    if max_workers:
        command += ["--max_num_workers", str(max_workers)]
    if settings.get("service_account") and not is_placeholder(str(settings["service_account"])):
        command += ["--service_account_email", str(settings["service_account"])]
    return command + list(extra)


# --- Vertex AI training ----------------------------------------------------------------------

def machine_spec(machine_type: str, accelerator: str | None = None, accelerator_count: int = 1):
    from google.cloud import aiplatform_v1 as aip

    spec = aip.MachineSpec(machine_type=machine_type)
    if accelerator:
        try:
            spec.accelerator_type = aip.AcceleratorType[accelerator]
        except KeyError:
            valid = ", ".join(n for n in aip.AcceleratorType.__members__ if n != "ACCELERATOR_TYPE_UNSPECIFIED")
            raise CloudError(f"unknown accelerator {accelerator!r}; valid: {valid}") from None
        spec.accelerator_count = accelerator_count
    return spec


def trainer_args(config_uri: str, data: str, job_dir: str, sets: Sequence[str] = (), extra: Sequence[str] = ()) -> list[str]:
    args = ["--config", config_uri, "--data", data, "--job-dir", job_dir]
    for item in sets:
        args += ["--set", item]
    return args + list(extra)


def train_mode(settings: Mapping[str, Any], container_image: str | None = None,
               python_package: bool = False) -> tuple[str, str | None]:
    """``("container", IMAGE_URI)`` or ``("python_package", None)``: the flags win over ``train_mode``."""
    if container_image and python_package:
        raise CloudError("--container-image and --python-package exclude each other")
    if python_package:
        return "python_package", None
    if container_image:
        if is_placeholder(container_image):
            raise CloudError(f"--container-image {container_image} is a placeholder: give the image pushed by build-image")
        return "container", container_image
    mode = str(settings.get("train_mode") or DEFAULT_TRAIN_MODE)
    if mode not in TRAIN_MODES:
        raise CloudError(f"train_mode {mode!r} in {settings.get('_path', 'configs/cloud.yaml')} must be one of {', '.join(TRAIN_MODES)}")
    if mode == "python_package":
        return mode, None
    try:
        require(settings, "images.train_container")
    except CloudError as error:
        raise CloudError(
            f"{error}; build the image with './run-cloud.sh build-image --tag URI' and set it, "
            "or pass --container-image URI (or --python-package for the prebuilt-image mode)"
        ) from None
    return mode, str(settings["images"]["train_container"])


def prebuilt_python_warning(image: str) -> str | None:
    """A warning when a prebuilt image's tag names a Python other than 3.11 (``...py310``)."""
    match = re.search(r"\.py3(\d+)\b", image)
    if match and match.group(1) != "11":
        return (f"warning: {image} is Python 3.{match.group(1)}; the pinned set (tensorflow==2.21.0 ...) needs "
                "Python 3.11, so the package install will fail there: use the container mode")
    return None


def custom_job_spec(
    settings: Mapping[str, Any], *, args: Sequence[str], workers: int, base_output_dir: str,
    package_uri: str | None = None, container_image: str | None = None,
    machine_type: str | None = None, accelerator: str | None = None, accelerator_count: int | None = None,
    timeout: str | None = None, env: Mapping[str, str] | None = None,
):
    """Pool 0: the chief (1 replica); pool 1: ``workers - 1`` workers; same program and args.

    The program is our container (``container_image``: a ``containerSpec`` whose entry point
    is ``python -m trainer.task``, see cloud/container/Dockerfile) or, without it, the sdist
    at ``package_uri`` run by the prebuilt image ``images.train`` (``pythonPackageSpec``).
    ``base_output_directory`` makes Vertex set ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR``
    and ``AIP_TENSORBOARD_LOG_DIR`` for the trainer, and ``TF_CONFIG`` names the
    pools ``chief`` and ``worker`` (the layout trainer.distribute expects).
    ``scheduling`` restarts the whole job when a worker restarts and bounds it by a timeout;
    ``tensorboard`` (when set in the settings) streams ``AIP_TENSORBOARD_LOG_DIR`` to Vertex AI
    TensorBoard and needs ``service_account``. ``env``: environment variables of every task
    (the experiment tracker's settings, see ``tracking_env``).
    """
    from google.cloud import aiplatform_v1 as aip

    if workers < 1:
        raise CloudError("--workers must be >= 1")
    variables = [aip.EnvVar(name=k, value=v) for k, v in (env or {}).items()]
    if container_image:
        program = {"container_spec": aip.ContainerSpec(image_uri=container_image, args=list(args), env=variables)}
    elif package_uri:
        require(settings, "images.train")
        program = {"python_package_spec": aip.PythonPackageSpec(
            executor_image_uri=settings["images"]["train"], package_uris=[package_uri],
            python_module=TRAINER_MODULE, args=list(args), env=variables,
        )}
    else:
        raise CloudError("custom_job_spec needs container_image or package_uri")
    accel = accelerator if accelerator is not None else ((settings.get("accelerator") or {}).get("type") or None)
    count = accelerator_count or int((settings.get("accelerator") or {}).get("count") or 1)
    machine = machine_spec(machine_type or settings["machine_types"]["train"], accel, count)
    pools = [aip.WorkerPoolSpec(machine_spec=machine, replica_count=1, **program)]
    if workers > 1:
        pools.append(aip.WorkerPoolSpec(machine_spec=machine, replica_count=workers - 1, **program))
    spec = aip.CustomJobSpec(worker_pool_specs=pools, base_output_directory=aip.GcsDestination(output_uri_prefix=base_output_dir),
                             scheduling=scheduling(settings, timeout))
    if settings.get("service_account") and not is_placeholder(str(settings["service_account"])):
        spec.service_account = settings["service_account"]
    board = tensorboard_name(settings)
    if board:
        spec.tensorboard = board
    return spec


def custom_job(settings: Mapping[str, Any], display_name: str, **spec_kwargs):
    from google.cloud import aiplatform_v1 as aip

    return aip.CustomJob(display_name=display_name, job_spec=custom_job_spec(settings, **spec_kwargs),
                         labels=labels(display_name))


_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE", "reverse_log": "UNIT_REVERSE_LOG_SCALE"}


def study_spec(space: Mapping[str, Any]):
    """A StudySpec from a search space validated by ``cloud.search_space`` (``load_search_space``)."""
    from google.cloud import aiplatform_v1 as aip

    P = aip.StudySpec.ParameterSpec
    parameters = []
    for raw in space["parameters"]:
        spec = P(parameter_id=raw["id"])
        if raw.get("scale"):
            spec.scale_type = P.ScaleType[_SCALES[raw["scale"]]]
        kind = raw["type"]
        if kind == "double":
            spec.double_value_spec = P.DoubleValueSpec(min_value=float(raw["min"]), max_value=float(raw["max"]))
        elif kind == "integer":
            spec.integer_value_spec = P.IntegerValueSpec(min_value=int(raw["min"]), max_value=int(raw["max"]))
        elif kind == "discrete":
            spec.discrete_value_spec = P.DiscreteValueSpec(values=[float(v) for v in raw["values"]])
        else:
            spec.categorical_value_spec = P.CategoricalValueSpec(values=[str(v) for v in raw["values"]])
        parameters.append(spec)
    metric = space["metric"]
    return aip.StudySpec(
        metrics=[aip.StudySpec.MetricSpec(metric_id=metric["id"], goal=aip.StudySpec.MetricSpec.GoalType[metric["goal"]])],
        parameters=parameters,
        algorithm=aip.StudySpec.Algorithm[space["algorithm"]],
    )


def trials_dir(job_dir: str) -> str:
    """Where a tuning job's trials write: ``JOB/trials``; trial T under ``JOB/trials/T/``.

    It is the trial spec's ``base_output_directory``, so Vertex sets ``AIP_MODEL_DIR`` =
    ``JOB/trials/T/model/`` (and checkpoints/, logs/) for trial T, and the trainer, given
    ``--job-dir JOB``, writes the rest under ``JOB/trials/$CLOUD_ML_TRIAL_ID/``.
    """
    return f"{job_dir.rstrip('/')}/trials"


def trial_dirs(job_dir: str, count: int) -> list[str]:
    """Each trial's output directory, ``JOB/trials/<id>/``, for Vertex's trial ids 1..count."""
    return [f"{trials_dir(job_dir)}/{trial}/" for trial in range(1, count + 1)]


def tracking_env(settings: Mapping[str, Any], track: str | None,
                 environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a job's trainer needs for ``--track`` (``trainer.tracking``).

    ``vertex``: the project and region of the settings and ``VERTEX_EXPERIMENT`` (default
    ``recsys-pipelines``), plus the settings' ``tensorboard`` (the experiment's backing TensorBoard,
    where the per-epoch curves go). ``mlflow``: ``MLFLOW_TRACKING_URI`` (and
    ``MLFLOW_EXPERIMENT_NAME``) as set here, which must be a server the job can reach.
    """
    from trainer import config as config_lib
    from trainer import tracking

    environ = os.environ if environ is None else environ
    try:
        tracking.check_name(track)
    except config_lib.ConfigError as error:
        raise CloudError(str(error)) from None
    names = tracking.names(track)
    env: dict[str, str] = {}
    if "vertex" in names:
        env.update(GCP_PROJECT=str(settings["project"]), GCP_REGION=str(settings["region"]),
                   VERTEX_EXPERIMENT=environ.get("VERTEX_EXPERIMENT") or "recsys-pipelines")
        board = tensorboard_name(settings)
        if board:
            env["VERTEX_TENSORBOARD"] = board
    if "mlflow" in names:
        uri = environ.get("MLFLOW_TRACKING_URI", "")
        if not uri.startswith(("http://", "https://")) or re.match(r"https?://(127\.|localhost)", uri):
            raise CloudError("--track mlflow in a Vertex AI job needs MLFLOW_TRACKING_URI set to an http(s) MLflow "
                             f"server the job can reach (got {uri or 'nothing'})")
        env["MLFLOW_TRACKING_URI"] = uri
        if environ.get("MLFLOW_EXPERIMENT_NAME"):
            env["MLFLOW_EXPERIMENT_NAME"] = environ["MLFLOW_EXPERIMENT_NAME"]
    return env


def tuning_job(settings: Mapping[str, Any], display_name: str, space: Mapping[str, Any], **spec_kwargs):
    """HyperparameterTuningJob whose trials run the trainer and report ``metric.id``.

    ``spec_kwargs['base_output_dir']`` is the job directory; the trials get ``trials_dir`` of it.
    """
    from google.cloud import aiplatform_v1 as aip

    study = study_spec(space)
    metric = study.metrics[0].metric_id
    spec_kwargs = dict(spec_kwargs, args=[*spec_kwargs["args"], "--hypertune-metric", metric],
                       base_output_dir=trials_dir(spec_kwargs["base_output_dir"]))
    return aip.HyperparameterTuningJob(
        display_name=display_name,
        study_spec=study,
        max_trial_count=int(space["max_trial_count"]),
        parallel_trial_count=int(space["parallel_trial_count"]),
        max_failed_trial_count=int(space["max_failed_trial_count"]),
        trial_job_spec=custom_job_spec(settings, **spec_kwargs),
        labels=labels(display_name),
    )


# --- training image (Cloud Build) -------------------------------------------------------------

def image_to_build(settings: Mapping[str, Any], tag: str | None = None, kind: str = "train") -> str:
    """``--tag``, else the image setting of ``kind``: ``images.train_container`` (``$VERTEX_TRAIN_CONTAINER``),
    ``images.serving`` (``$VERTEX_SERVING_IMAGE``) or ``images.dataflow_worker`` (``$DATAFLOW_WORKER_IMAGE``)."""
    if tag:
        if is_placeholder(tag):
            raise CloudError(f"--tag {tag} is a placeholder: name your Artifact Registry repository")
        return tag
    name, example = {"train": ("train_container", "trainer"), "serving": ("serving", "server"),
                     "dataflow": ("dataflow_worker", "beam-worker")}[kind]
    try:
        require(settings, f"images.{name}")
    except CloudError as error:
        raise CloudError(f"{error}; or pass --tag URI (e.g. REGION-docker.pkg.dev/PROJECT/REPO/{example}:latest)") from None
    image = str(settings["images"][name])
    if kind == "serving" and prebuilt_prediction_image(image):
        raise CloudError(f"images.serving is {image}, a Vertex prebuilt image, not one to build: set it "
                         "(VERTEX_SERVING_IMAGE) to your Artifact Registry URI or pass --tag URI")
    return image


def build_image_command(settings: Mapping[str, Any], image: str, gcloud: str = "gcloud", kind: str = "train") -> list[str]:
    """``gcloud builds submit`` of the training, serving or Dataflow worker image (from the repo root, the context).

    ``--ignore-file`` is the directory's gcloudignore, an allow list of what its Dockerfile
    copies, so .venv, runs/, data/ and .git are not uploaded.
    """
    require(settings, "project")
    directory = SERVING_DIR if kind == "serving" else CONTAINER_DIR
    config = DATAFLOW_CLOUDBUILD if kind == "dataflow" else f"{directory}/cloudbuild.yaml"
    return [
        gcloud, "builds", "submit",
        "--config", config,
        "--substitutions", f"_IMAGE={image}",
        "--ignore-file", f"{directory}/gcloudignore",
        "--project", str(settings["project"]),
        ".",
    ]


# --- Vertex AI serving -----------------------------------------------------------------------

def model_artifact_uri(job_dir: str) -> str:
    """Where a job's SavedModel is: ``JOB/model`` on Vertex (AIP_MODEL_DIR), ``JOB/export`` locally."""
    job_dir = job_dir.rstrip("/")
    if job_dir.endswith(("/model", "/export")):
        return job_dir
    return f"{job_dir}/model" if job_dir.startswith("gs://") else f"{job_dir}/export"


def prebuilt_prediction_image(image: str) -> bool:
    return "/vertex-ai/prediction/" in image


def prebuilt_serving_warning(image: str) -> str | None:
    """A warning when the serving image is a Vertex prebuilt TF image of another TF version."""
    match = re.search(r"/vertex-ai/prediction/tf2-(?:cpu|gpu)\.2-(\d+)", image)
    if match and int(match.group(1)) != TF_MINOR:
        return (f"warning: {image} serves TF 2.{match.group(1)}, the SavedModel is exported by TF 2.{TF_MINOR} "
                f"(tensorflow_gnn exports also need TF-GNN): use our serving image ({SERVING_DIR}, "
                "./run-cloud.sh build-image --serving)")
    return None


def serving_container_spec(image: str):
    """Our prediction server (cloud/serving_container): its port and routes; a prebuilt image: just the URI.

    Vertex AI sets ``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE`` and ``AIP_PREDICT_ROUTE`` from these
    fields and ``AIP_STORAGE_URI`` to a copy of the model's ``artifact_uri``; server.py reads them.
    """
    from google.cloud import aiplatform_v1 as aip

    if prebuilt_prediction_image(image):
        return aip.ModelContainerSpec(image_uri=image)
    return aip.ModelContainerSpec(image_uri=image, ports=[aip.Port(container_port=SERVING_PORT)],
                                  predict_route=PREDICT_ROUTE, health_route=HEALTH_ROUTE)


def deploy_requests(settings: Mapping[str, Any], artifact_uri: str, display_name: str, endpoint: str | None = None,
                    machine_type: str | None = None) -> dict[str, Any]:
    """UploadModelRequest, CreateEndpointRequest (unless ``endpoint``) and DeployModelRequest.

    The model and endpoint ids are only known after the first requests; the
    deploy request then holds ``{uploaded-model}`` / ``{created-endpoint}`` placeholders
    that ``run`` fills in. The model and the endpoint carry ``labels(display_name)``.
    """
    from google.cloud import aiplatform_v1 as aip

    try:
        require(settings, "images.serving")
    except CloudError as error:
        raise CloudError(f"{error}; build the serving image with './run-cloud.sh build-image --serving --tag URI' "
                         "and set it") from None
    if not artifact_uri.startswith("gs://"):
        raise CloudError(f"the model must be in Cloud Storage for Vertex AI (got {artifact_uri}); copy the export to gs:// first")
    requests: dict[str, Any] = {
        "upload_model": aip.UploadModelRequest(
            parent=parent(settings),
            model=aip.Model(display_name=display_name, artifact_uri=artifact_uri,
                            container_spec=serving_container_spec(str(settings["images"]["serving"])),
                            labels=labels(display_name)),
        )
    }
    if not endpoint:
        requests["create_endpoint"] = aip.CreateEndpointRequest(
            parent=parent(settings), endpoint=aip.Endpoint(display_name=display_name, labels=labels(display_name)))
    requests["deploy_model"] = aip.DeployModelRequest(
        endpoint=endpoint_name(settings, endpoint) if endpoint else f"{parent(settings)}/endpoints/{{created-endpoint}}",
        deployed_model=aip.DeployedModel(
            model=f"{parent(settings)}/models/{{uploaded-model}}",
            display_name=display_name,
            dedicated_resources=aip.DedicatedResources(
                machine_spec=aip.MachineSpec(machine_type=machine_type or settings["machine_types"]["serving"]),
                min_replica_count=1, max_replica_count=1,
            ),
        ),
        traffic_split={"0": 100},
    )
    return requests


def endpoint_name(settings: Mapping[str, Any], endpoint: str) -> str:
    return endpoint if endpoint.startswith("projects/") else f"{parent(settings)}/endpoints/{endpoint}"


def predict_request(settings: Mapping[str, Any], endpoint: str, instances: Sequence[Mapping[str, Any]]):
    """PredictRequest for the serving signature (raw ``user_id`` / ``item_id`` strings)."""
    from google.cloud import aiplatform_v1 as aip

    values = [{k: str(v) for k, v in instance.items()} for instance in instances]
    payload = {"endpoint": endpoint_name(settings, endpoint), "instances": values}
    return aip.PredictRequest.from_json(json.dumps(payload))


# --- printing and sending ---------------------------------------------------------------------

def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _info(message: str) -> None:
    print(f"[vertex] {message}", file=sys.stderr)


def _gcloud() -> str:
    path = shutil.which("gcloud")
    if not path:
        raise CloudError("gcloud is not installed or not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk)")
    return path


def _upload(local: str, remote: str) -> None:
    subprocess.run([_gcloud(), "storage", "cp", local, remote], check=True)


def build_sdist(dist_dir: str) -> str:
    """Builds the package (setup.py sdist) and returns the archive path."""
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--formats=gztar", "--dist-dir", dist_dir],
                   cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    archives = sorted(Path(dist_dir).glob("*.tar.gz"))
    if not archives:
        raise CloudError("setup.py sdist produced no archive")
    return str(archives[-1])


# --- train --local: the container's entry point and args on this machine ------------------------

def local_run_plan(config: str, data: str, job_dir: str, sets: Sequence[str] = (), workers: int = 1,
                   python: str | None = None, extra: Sequence[str] = ()) -> dict[str, Any]:
    """What ``train --local`` runs: the Vertex job's program, args and environment, locally.

    The args are ``trainer_args`` exactly as in the CustomJob's ``containerSpec.args``, with
    ``gs://BUCKET/jobs/NAME`` replaced by ``job_dir`` (the config is copied to
    ``job_dir/config.yaml``, as train uploads it to ``gs://BUCKET/jobs/NAME/config.yaml``)
    and ``--data`` a local pipeline output. The environment is the image's ``ENV``
    (``CONTAINER_ENV``) plus what Vertex sets for ``base_output_directory`` = ``job_dir``.
    Several workers run through ``python -m trainer.task --local-workers N`` (trainer.launch_local
    gives every task a TF_CONFIG in the Vertex layout: one chief, N-1 workers).
    """
    if workers < 1:
        raise CloudError("--workers must be >= 1")
    job_dir = job_dir if job_dir.startswith("gs://") else os.path.abspath(job_dir)
    data = data if data.startswith("gs://") else os.path.abspath(data)
    config_copy = f"{job_dir.rstrip('/')}/config.yaml"
    command = [python or sys.executable, "-m", TRAINER_MODULE]
    if workers > 1:
        command += ["--local-workers", str(workers)]
    command += trainer_args(config_copy, data, job_dir.rstrip("/"), sets, extra)
    return {"command": command, "env": {**CONTAINER_ENV, **vertex_output_env(job_dir)}, "cwd": str(REPO),
            "copy_config": [str(config), config_copy]}


def _refuse_cloud_flags(args, what: str, *more: tuple[str, Any], hint: str = "") -> None:
    """One line naming the Vertex-only flags given to a ``--local`` command."""
    cloud_only = [flag for flag, value in (
        ("--container-image", args.container_image), ("--python-package", args.python_package),
        ("--machine-type", args.machine_type), ("--accelerator", args.accelerator),
        ("--accelerator-count", args.accelerator_count), ("--timeout", args.timeout), ("--dataset", args.dataset),
        *more,
    ) if value]
    if cloud_only:
        raise CloudError(f"--local runs {what} on this machine: {', '.join(cloud_only)} do(es) not apply{hint}")


def _local_run(args) -> int:
    if not args.data or not args.job_dir:
        raise CloudError("train --local needs --data DIR (a pipeline output) and --job-dir DIR (where the job writes)")
    _refuse_cloud_flags(args, "the trainer")
    if not Path(args.config).exists():
        raise CloudError(f"trainer config {args.config} does not exist")
    plan = local_run_plan(args.config, args.data, args.job_dir, args.set, args.workers,
                          extra=["--track", args.track] if args.track else [])
    env_words = " ".join(f"{k}={shlex.quote(v)}" for k, v in plan["env"].items())
    if args.dry_run:
        _info(f"would copy {plan['copy_config'][0]} -> {plan['copy_config'][1]}")
        _info(f"would run in {plan['cwd']}: {env_words} {shlex.join(plan['command'])}")
        _print_json(plan)
        return 0
    source, target = plan["copy_config"]
    if target.startswith("gs://"):
        raise CloudError("--local --job-dir must be a local directory")
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    if Path(source).resolve() != Path(target).resolve():
        shutil.copyfile(source, target)
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CONFIG", "CLOUD_ML_TRIAL_ID")}
    env.update(plan["env"])
    _info(f"running in {plan['cwd']}: {env_words} {shlex.join(plan['command'])}")
    return subprocess.run(plan["command"], cwd=plan["cwd"], env=env).returncode


# --- tune --local: the same search space, studied on this machine -------------------------------

LOCAL_TUNE_FLAGS = ("--trials", "--parallel", "--study-dir", "--no-final")


def local_tune_command(args, python: str | None = None) -> list[str]:
    """``python -m workflows.tune`` with the tune command's config, space, data and overrides."""
    command = [python or sys.executable, "-m", "workflows.tune", "--config", args.config, "--data", args.data]
    if args.study:
        command += ["--study", args.study]
    for flag, value in (("--study-dir", args.study_dir), ("--trials", args.trials), ("--parallel", args.parallel),
                        ("--track", args.track)):
        if value is not None:
            command += [flag, str(value)]
    for item in args.set:
        command += ["--set", item]
    if args.no_final:
        command.append("--no-final")
    if args.dry_run:
        command.append("--dry-run")
    return command


def _local_tune(args) -> int:
    if not args.data:
        raise CloudError("tune --local needs --data DIR (a local pipeline output with a valid split)")
    _refuse_cloud_flags(args, "the study", ("--name", args.name), ("--workers", args.workers != 1),
                        hint=" (--parallel K runs K trials at once)")
    command = local_tune_command(args)
    _info(f"running in {REPO}: {shlex.join(command)}")
    return subprocess.run(command, cwd=REPO).returncode


# --- command line -----------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the exact request and send nothing")
    parser.add_argument("--cloud-config", default=None, help="settings YAML (default configs/cloud.yaml or $CLOUD_CONFIG)")


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="trainer config YAML (e.g. configs/movielens_mf.yaml)")
    parser.add_argument(
        "--data",
        help="pipeline output: gs://..., or NAME for gs://BUCKET/data/DATASET/NAME; default: the path recorded "
             "in gs://BUCKET/data/DATASET/LATEST by the last preprocess DATASET (with --local: a local directory)")
    parser.add_argument("--dataset", help="the data family of CONFIG (default: its name up to the first '_', "
                                          "movielens_mf -> movielens)")
    parser.add_argument("--workers", type=int, default=1, help="tasks: 1 chief + N-1 workers (default 1)")
    parser.add_argument("--machine-type", help="default: machine_types.train in the cloud settings")
    parser.add_argument("--accelerator", help="e.g. NVIDIA_TESLA_T4 (default: accelerator.type in the settings)")
    parser.add_argument("--accelerator-count", type=int, help="accelerators per replica")
    parser.add_argument("--timeout", help=f"job timeout, e.g. 6h (default: scheduling.timeout in the settings, else {DEFAULT_TIMEOUT})")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="trainer override, repeatable")
    parser.add_argument("--name", help="job display name (default: <config>-<timestamp>)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--container-image", metavar="URI",
        help="container mode with this image (built by build-image) instead of images.train_container; "
             "no package is built or uploaded",
    )
    mode.add_argument(
        "--python-package", action="store_true",
        help="python-package mode: upload an sdist and run it in the prebuilt image images.train "
             "(only installs where that image's Python is 3.11; Vertex's prebuilt TF images are 3.10)",
    )


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cloud.vertex", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("preprocess", help="run a Beam pipeline on Dataflow")
    p.add_argument("dataset", help="pipeline module under beam_pipelines/ (e.g. movielens)")
    p.add_argument("--input", help="raw input in GCS (movielens: e.g. gs://B/raw/ml-100k/u.data; lastfm takes "
                                   "-- --edges ... --targets ...)")
    p.add_argument("--name", help="output name: gs://BUCKET/data/DATASET/NAME (default: a timestamp)")
    p.add_argument("--output", help="another output directory (default gs://BUCKET/data/DATASET/NAME)")
    p.add_argument("pipeline_args", nargs="*", help="more pipeline flags after --")
    _common(p)

    p = sub.add_parser(
        "build-image", help="build the training (or serving) container with Cloud Build and push it",
        description="gcloud builds submit --config cloud/container/cloudbuild.yaml (or "
                    "cloud/serving_container/cloudbuild.yaml with --serving) from the repo root.",
    )
    p.add_argument("--tag", metavar="URI", help="image to push (default: images.train_container / $VERTEX_TRAIN_CONTAINER, "
                                                "with --serving images.serving / $VERTEX_SERVING_IMAGE)")
    p.add_argument("--serving", action="store_true", help="build the prediction server image (cloud/serving_container)")
    p.add_argument("--dataflow", action="store_true",
                   help="build the Dataflow worker image (cloud/container/Dockerfile.dataflow, Beam's SDK image + "
                        "this package; default tag images.dataflow_worker / $DATAFLOW_WORKER_IMAGE)")
    _common(p)

    for name, text in (("train", "submit a Vertex AI CustomJob"), ("tune", "submit a Vertex AI HyperparameterTuningJob")):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. Mode: train_mode in the "
                           "settings (default container); --container-image / --python-package override it.")
        _training_options(p)
        if name == "tune":
            p.add_argument("--study", help="search space YAML (format: cloud/search_space.py; default: "
                                           "CONFIG_tune.yaml beside CONFIG, e.g. configs/movielens_mf_tune.yaml)")
            p.add_argument("--local", action="store_true",
                           help="run the study on this machine with Optuna (workflows.tune; needs --data DIR)")
            p.add_argument("--trials", type=int, help="with --local: trials in all (default: the space's max_trial_count)")
            p.add_argument("--parallel", type=int, help="with --local: trials at once, each a process (default 1)")
            p.add_argument("--study-dir", help="with --local: where the study lives (default runs/tune/<config name>)")
            p.add_argument("--no-final", action="store_true", help="with --local: no final run of the best config")
        else:
            p.add_argument("--local", action="store_true",
                           help="run the job's entry point and args on this machine (needs --data DIR --job-dir DIR)")
            p.add_argument("--job-dir", help="with --local: where the job writes (stands for gs://BUCKET/jobs/NAME)")
        p.add_argument("--track", metavar="NAME",
                       help="log to experiment tracker(s): vertex (Vertex AI Experiments: VERTEX_EXPERIMENT, "
                            "the settings' tensorboard), mlflow (MLFLOW_TRACKING_URI), or mlflow,vertex")
        _common(p)

    p = sub.add_parser("deploy", help="upload a SavedModel as a Vertex Model and deploy it to an endpoint")
    p.add_argument("job_dir", help="a job directory in GCS (its model/ or export/), or the SavedModel directory")
    p.add_argument("--endpoint", help="an existing endpoint id (default: create one)")
    p.add_argument("--machine-type", help="default: machine_types.serving")
    p.add_argument("--name", help="model/endpoint display name")
    _common(p)

    p = sub.add_parser("predict", help="send instances to a deployed endpoint")
    p.add_argument("--endpoint", required=True, help="endpoint id or full resource name")
    p.add_argument("--instances", help='JSON file with a list of {"user_id": ..., "item_id": ...}')
    p.add_argument("--user", action="append", default=[], help="raw user id (pairs with --item), repeatable")
    p.add_argument("--item", action="append", default=[], help="raw item id, repeatable")
    _common(p)

    p = sub.add_parser("cleanup", help="delete the endpoints, models and jobs this project created (label app=recsys-pipelines)")
    p.add_argument("--job", metavar="NAME", help="only the resources labelled job=NAME")
    p.add_argument("--listed", metavar="FILE", help="with --dry-run: plan from these listed resources (JSON) instead of listing")
    p.add_argument("--cancel-running", action="store_true", help="cancel labelled jobs that are still running (delete them on a later cleanup)")
    p.add_argument("--yes", action="store_true", help="send the requests (without it a real run lists and stops)")
    _common(p)
    return parser


def _job_name(args) -> str:
    return args.name or f"{Path(args.config).stem}-{timestamp()}".replace("_", "-").lower()


def _checked_space(args) -> dict[str, Any]:
    """The tune command's search space (``--study``, default CONFIG_tune.yaml), its metric checked for CONFIG's model."""
    from cloud import search_space

    path = args.study or str(Path(args.config).with_name(f"{Path(args.config).stem}_tune.yaml"))
    try:
        space = search_space.load_search_space(path)
        search_space.check_metric(space, search_space.config_model(args.config, args.set))
    except search_space.SearchSpaceError as error:
        hint = "" if args.study else " (pass --study TUNE_YAML)"
        raise CloudError(f"{error}{hint}") from None
    return space


def _config_monitor(config: str, sets: Sequence[str]) -> str | None:
    """``train.monitor`` of the trainer config with ``--set`` (None: the task's default)."""
    from trainer import config as config_lib

    try:
        return config_lib.resolve(config, list(sets))["train"]["monitor"]
    except config_lib.ConfigError as error:
        raise CloudError(f"trainer config {config}: {error}") from None


def _training_request(args, settings):
    require(settings, "project", "region", "bucket")
    if not Path(args.config).exists():
        raise CloudError(f"trainer config {args.config} does not exist")
    if getattr(args, "job_dir", None):
        raise CloudError("--job-dir is for --local; a Vertex job writes to gs://BUCKET/jobs/NAME (see --name)")
    mode, image = train_mode(settings, args.container_image, args.python_package)
    space = None
    sets = list(args.set)
    if args.command == "tune":
        space = _checked_space(args)
        if _config_monitor(args.config, args.set) is None:  # the objective also chooses each trial's epoch
            sets.append(f"train.monitor={space['metric']['id']}")
    env = tracking_env(settings, args.track)
    extra = ["--track", args.track] if args.track else []
    name = _job_name(args)
    job_dir = gcs(settings, "jobs", name)
    package_uri = gcs(settings, "packages", name, "recsys-pipelines-0.1.0.tar.gz") if mode == "python_package" else None
    config_uri = f"{job_dir}/config.yaml"
    dataset = None if (args.data or "").startswith("gs://") else config_dataset(args.config, args.dataset)
    data = resolve_data(settings, args.data, dataset, dry_run=args.dry_run) if dataset else args.data.rstrip("/")
    spec_kwargs = dict(
        package_uri=package_uri, container_image=image, args=trainer_args(config_uri, data, job_dir, sets, extra),
        workers=args.workers, base_output_dir=job_dir, machine_type=args.machine_type, accelerator=args.accelerator,
        accelerator_count=args.accelerator_count, timeout=args.timeout, env=env,
    )
    notes = []
    if not args.data:
        notes.append(f"--data: {'would read' if args.dry_run else 'read'} {latest_uri(settings, dataset)} "
                     f"(the newest preprocess {dataset} output){'' if args.dry_run else ': ' + data}")
    if args.command == "train":
        request = custom_job(settings, name, **spec_kwargs)
        notes.append(f"job outputs: {job_dir}/ (Vertex: AIP_MODEL_DIR={job_dir}/model/, checkpoints/, logs/)")
    else:
        request = tuning_job(settings, name, space, **spec_kwargs)
        notes.append(f"trial outputs: {trials_dir(job_dir)}/<trial id>/ (Vertex: AIP_MODEL_DIR={trials_dir(job_dir)}"
                     "/<trial id>/model/, checkpoints/, logs/; the trainer: --job-dir "
                     f"{job_dir} + trials/$CLOUD_ML_TRIAL_ID/)")
        for trial, path in enumerate(trial_dirs(job_dir, int(space["max_trial_count"])), start=1):
            notes.append(f"trial {trial}: {path}")
    uploads = [(args.config, config_uri)]
    if package_uri:
        uploads.insert(0, (SDIST, package_uri))
    return request, uploads, (mode, image), notes


def run(args) -> int:
    settings = load_settings(args.cloud_config)
    if args.command == "preprocess":
        require(settings, "project", "region", "bucket")
        command = dataflow_command(settings, args.dataset, args.input, args.output, args.pipeline_args,
                                   python=sys.executable, name=args.name)
        output = command[command.index("--output") + 1]
        latest = latest_uri(settings, args.dataset)
        if args.dry_run:
            _info(f"would write {latest} = {output} once the pipeline succeeds (train/tune without --data read it)")
            print(shlex.join(command))
            return 0
        _credentials()
        code = subprocess.run(command, cwd=REPO).returncode
        if code == 0:
            write_latest(storage_client(settings), latest, output)
            _info(f"recorded {output} in {latest}")
        else:
            _info(f"the pipeline failed (exit code {code}); {latest} is unchanged")
        return code

    if args.command == "build-image":
        require(settings, "project")
        if args.serving and args.dataflow:
            raise CloudError("build-image takes --serving or --dataflow, not both")
        kind = "serving" if args.serving else "dataflow" if args.dataflow else "train"
        image = image_to_build(settings, args.tag, kind=kind)
        command = build_image_command(settings, image, kind=kind)
        if args.dry_run:
            print(shlex.join(command))
            return 0
        command[0] = _gcloud()
        subprocess.run(command, cwd=REPO, check=True)
        if kind == "serving":
            _info(f"pushed {image}; deploy serves with it: set images.serving (or VERTEX_SERVING_IMAGE)")
        elif kind == "dataflow":
            _info(f"pushed {image}; preprocess runs Dataflow workers on it once images.dataflow_worker "
                  "(or DATAFLOW_WORKER_IMAGE) names it")
        else:
            _info(f"pushed {image}; train with it: set images.train_container (or VERTEX_TRAIN_CONTAINER), "
                  "or pass --container-image")
        return 0

    if args.command == "train" and args.local:
        return _local_run(args)
    if args.command == "tune" and args.local:
        return _local_tune(args)
    if args.command == "tune":
        local_only = [f for f in LOCAL_TUNE_FLAGS if getattr(args, f[2:].replace("-", "_")) not in (None, False)]
        if local_only:
            raise CloudError(f"{', '.join(local_only)} are for tune --local; on Vertex AI the space's "
                             "max_trial_count and parallel_trial_count apply")

    if args.command in ("train", "tune"):
        request, uploads, (mode, image), notes = _training_request(args, settings)
        warning = prebuilt_python_warning(settings["images"]["train"]) if mode == "python_package" else None
        if warning:
            _info(warning)
        if args.dry_run:
            if mode == "container":
                _info(f"container mode: image {image} (built by ./run-cloud.sh build-image; no package upload)")
            else:
                _info(f"python-package mode: sdist run by the prebuilt image {settings['images']['train']}")
            for local, remote in uploads:
                _info(f"would upload {local} -> {remote}")
            for note in notes:
                _info(note)
            _info(f"would POST {parent(settings)}/{'customJobs' if args.command == 'train' else 'hyperparameterTuningJobs'}")
            _print_json(to_dict(request))
            return 0
        _gcloud()
        credentials = _credentials()
        from google.cloud import aiplatform_v1 as aip

        for note in notes:
            _info(note)
        for local, remote in uploads:
            if local == SDIST:
                with tempfile.TemporaryDirectory() as dist:
                    _upload(build_sdist(dist), remote)
            else:
                _upload(local, remote)
        client = aip.JobServiceClient(credentials=credentials, client_options=_client_options(settings))
        if args.command == "train":
            created = client.create_custom_job(parent=parent(settings), custom_job=request)
        else:
            created = client.create_hyperparameter_tuning_job(parent=parent(settings), hyperparameter_tuning_job=request)
        print(created.name)
        return 0

    if args.command == "deploy":
        require(settings, "project", "region")
        artifact = model_artifact_uri(args.job_dir)
        name = args.name or f"recsys-{timestamp()}"
        requests = deploy_requests(settings, artifact, name, args.endpoint, args.machine_type)
        warning = prebuilt_serving_warning(str(settings["images"]["serving"]))
        if warning:
            _info(warning)
        if args.dry_run:
            _print_json({key: to_dict(value) for key, value in requests.items()})
            return 0
        credentials = _credentials()
        from google.cloud import aiplatform_v1 as aip

        options = _client_options(settings)
        model = aip.ModelServiceClient(credentials=credentials, client_options=options).upload_model(
            request=requests["upload_model"]).result().model
        _info(f"uploaded model {model}")
        endpoints = aip.EndpointServiceClient(credentials=credentials, client_options=options)
        endpoint = requests["deploy_model"].endpoint
        if "create_endpoint" in requests:
            endpoint = endpoints.create_endpoint(request=requests["create_endpoint"]).result().name
            _info(f"created endpoint {endpoint}")
        deploy = requests["deploy_model"]
        deploy.endpoint = endpoint
        deploy.deployed_model.model = model
        endpoints.deploy_model(request=deploy).result()
        print(endpoint)
        return 0

    if args.command == "predict":
        require(settings, "project", "region")
        if args.instances:
            instances = json.loads(Path(args.instances).read_text())
        else:
            if not args.user or len(args.user) != len(args.item):
                raise CloudError("give --instances FILE, or as many --user as --item")
            instances = [{"user_id": u, "item_id": i} for u, i in zip(args.user, args.item)]
        request = predict_request(settings, args.endpoint, instances)
        if args.dry_run:
            _print_json(to_dict(request))
            return 0
        credentials = _credentials()
        from google.cloud import aiplatform_v1 as aip

        client = aip.PredictionServiceClient(credentials=credentials, client_options=_client_options(settings))
        response = client.predict(request=request)
        _print_json(to_dict(response))
        return 0

    if args.command == "cleanup":
        from cloud import cleanup

        return cleanup.run(args, settings)
    raise CloudError(f"unknown command {args.command}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    passthrough: list[str] = []
    if "--" in argv:  # preprocess: everything after -- goes to the pipeline unchanged
        split = argv.index("--")
        argv, passthrough = argv[:split], argv[split + 1:]
    args = make_parser().parse_args(argv)
    if passthrough:
        if args.command != "preprocess":
            print(f"[run-cloud] error: {args.command} takes no arguments after --", file=sys.stderr)
            return 2
        args.pipeline_args = [*args.pipeline_args, *passthrough]
    try:
        return run(args)
    except CloudError as error:
        print(f"[run-cloud] error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"[run-cloud] error: {shlex.join(map(str, error.cmd))} failed with exit code {error.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
