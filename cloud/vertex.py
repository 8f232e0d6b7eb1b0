"""Dataflow and Vertex AI requests for ``run-cloud.sh``: built offline, printed or sent.

The builders are pure functions returning ``google.cloud.aiplatform_v1`` protos
or argument lists; ``--dry-run`` prints them (JSON / a command line) and sends
nothing. Without ``--dry-run`` the same objects are sent: uploads with
``gcloud storage cp``, Vertex requests with the ``aiplatform_v1`` clients,
Dataflow by running the Beam pipeline with ``--runner DataflowRunner``.

Settings come from ``configs/cloud.yaml`` with environment overrides
(``GCP_PROJECT``, ``GCP_REGION``, ``GCS_BUCKET``, ``GCP_SERVICE_ACCOUNT``,
``VERTEX_TRAIN_CONTAINER``, ``VERTEX_TRAIN_IMAGE``, ``VERTEX_SERVING_IMAGE``).

Training runs in one of two modes (``train_mode`` in the settings, or ``--container-image`` /
``--python-package``): ``container`` (default) runs our own image, built from
``cloud/container/Dockerfile`` by ``build-image``, through a ``containerSpec``; ``python_package``
uploads an sdist and runs it in a Vertex prebuilt training image (``pythonPackageSpec``), which
only installs where the image's Python matches ``python_requires`` (3.11; Vertex ships 3.10).

Usage (normally through ``./run-cloud.sh``)::

    python -m cloud.vertex build-image --tag us-central1-docker.pkg.dev/P/recsys/trainer:latest --dry-run
    python -m cloud.vertex train configs/movielens_mf.yaml --data gs://B/data/ml-100k --workers 4 --dry-run
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

import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CLOUD_CONFIG = REPO / "configs" / "cloud.yaml"
ENV_OVERRIDES = {
    "project": "GCP_PROJECT",
    "region": "GCP_REGION",
    "bucket": "GCS_BUCKET",
    "service_account": "GCP_SERVICE_ACCOUNT",
    "images.train_container": "VERTEX_TRAIN_CONTAINER",
    "images.train": "VERTEX_TRAIN_IMAGE",
    "images.serving": "VERTEX_SERVING_IMAGE",
}
# Unset: empty, changeme/todo, or a "your-..." word anywhere in a path or URI
# ("your-bucket", "us-central1-docker.pkg.dev/your-project-id/recsys/trainer:latest").
PLACEHOLDER = re.compile(r"^(changeme|todo)?$|(^|[/:.@])your[-_]", re.I)
TRAINER_MODULE = "trainer.task"
TRAIN_MODES = ("container", "python_package")
DEFAULT_TRAIN_MODE = "container"
CONTAINER_DIR = "cloud/container"  # Dockerfile, cloudbuild.yaml, gcloudignore (paths relative to REPO)
SDIST = "<sdist of setup.py>"  # stands for the archive build_sdist makes at submission time


class CloudError(RuntimeError):
    """A setting or prerequisite is missing; the message names what to set."""


def is_placeholder(value: Any) -> bool:
    return value is None or bool(PLACEHOLDER.search(str(value)))


# --- settings --------------------------------------------------------------------------------

def load_settings(path: str | os.PathLike | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``configs/cloud.yaml`` with the environment overrides applied."""
    environ = os.environ if environ is None else environ
    path = Path(path or environ.get("CLOUD_CONFIG") or DEFAULT_CLOUD_CONFIG)
    if not path.exists():
        raise CloudError(f"cloud settings file {path} does not exist (set CLOUD_CONFIG or create configs/cloud.yaml)")
    settings = yaml.safe_load(path.read_text()) or {}
    if not isinstance(settings, dict):
        raise CloudError(f"{path} must hold a mapping")
    for key, variable in ENV_OVERRIDES.items():
        value = environ.get(variable)
        if value:
            section, _, leaf = key.rpartition(".")
            target = settings.setdefault(section, {}) if section else settings
            target[leaf] = value
    bucket = str(settings.get("bucket") or "")
    settings["bucket"] = bucket.removeprefix("gs://").rstrip("/")
    settings["_path"] = str(path)
    return settings


def require(settings: Mapping[str, Any], *keys: str) -> None:
    """Raises a CloudError naming the variable to set for every missing/placeholder key."""
    missing = []
    for key in keys:
        value = settings
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if is_placeholder(value):
            missing.append(f"{key} (set {ENV_OVERRIDES.get(key, key)} or edit {settings.get('_path', 'configs/cloud.yaml')})")
    if missing:
        raise CloudError("missing Google Cloud setting(s): " + "; ".join(missing))


def timestamp(now: datetime.datetime | None = None) -> str:
    return (now or datetime.datetime.now(datetime.timezone.utc)).strftime("%Y%m%d-%H%M%S")


def gcs(settings: Mapping[str, Any], *parts: str) -> str:
    return "/".join([f"gs://{settings['bucket']}", *[p.strip("/") for p in parts if p]])


def parent(settings: Mapping[str, Any]) -> str:
    return f"projects/{settings['project']}/locations/{settings['region']}"


# --- Dataflow --------------------------------------------------------------------------------

def dataflow_command(
    settings: Mapping[str, Any], dataset: str, input_path: str, output: str | None = None,
    extra: Sequence[str] = (), job_name: str | None = None, python: str = "python",
) -> list[str]:
    """The command line that runs ``beam_pipelines.DATASET`` on Dataflow."""
    module = f"beam_pipelines.{dataset}"
    if importlib.util.find_spec(module) is None:
        known = sorted(p.stem for p in (REPO / "beam_pipelines").glob("*.py") if p.stem not in ("__init__", "common", "features"))
        raise CloudError(f"unknown dataset {dataset!r}: no module {module} (pipelines: {', '.join(known)})")
    stamp = timestamp()
    job_name = job_name or f"{dataset}-{stamp}".replace("_", "-").lower()
    command = [
        python, "-m", module,
        "--input", input_path,
        "--output", output or gcs(settings, "data", f"{dataset}-{stamp}"),
        "--runner", "DataflowRunner",
        "--project", str(settings["project"]),
        "--region", str(settings["region"]),
        "--temp_location", gcs(settings, "dataflow", "temp"),
        "--staging_location", gcs(settings, "dataflow", "staging"),
        "--job_name", job_name,
        "--setup_file", "./setup.py",
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
):
    """Pool 0: the chief (1 replica); pool 1: ``workers - 1`` workers; same program and args.

    The program is our container (``container_image``: a ``containerSpec`` whose entry point
    is ``python -m trainer.task``, see cloud/container/Dockerfile) or, without it, the sdist
    at ``package_uri`` run by the prebuilt image ``images.train`` (``pythonPackageSpec``).
    ``base_output_directory`` makes Vertex set ``AIP_MODEL_DIR``, ``AIP_CHECKPOINT_DIR``
    and ``AIP_TENSORBOARD_LOG_DIR`` for the trainer, and ``TF_CONFIG`` names the
    pools ``chief`` and ``worker`` (the layout trainer.distribute expects).
    """
    from google.cloud import aiplatform_v1 as aip

    if workers < 1:
        raise CloudError("--workers must be >= 1")
    if container_image:
        program = {"container_spec": aip.ContainerSpec(image_uri=container_image, args=list(args))}
    elif package_uri:
        require(settings, "images.train")
        program = {"python_package_spec": aip.PythonPackageSpec(
            executor_image_uri=settings["images"]["train"], package_uris=[package_uri],
            python_module=TRAINER_MODULE, args=list(args),
        )}
    else:
        raise CloudError("custom_job_spec needs container_image or package_uri")
    accel = accelerator if accelerator is not None else ((settings.get("accelerator") or {}).get("type") or None)
    count = accelerator_count or int((settings.get("accelerator") or {}).get("count") or 1)
    machine = machine_spec(machine_type or settings["machine_types"]["train"], accel, count)
    pools = [aip.WorkerPoolSpec(machine_spec=machine, replica_count=1, **program)]
    if workers > 1:
        pools.append(aip.WorkerPoolSpec(machine_spec=machine, replica_count=workers - 1, **program))
    spec = aip.CustomJobSpec(worker_pool_specs=pools, base_output_directory=aip.GcsDestination(output_uri_prefix=base_output_dir))
    if settings.get("service_account") and not is_placeholder(str(settings["service_account"])):
        spec.service_account = settings["service_account"]
    return spec


def custom_job(settings: Mapping[str, Any], display_name: str, **spec_kwargs):
    from google.cloud import aiplatform_v1 as aip

    return aip.CustomJob(display_name=display_name, job_spec=custom_job_spec(settings, **spec_kwargs))


_SCALES = {"linear": "UNIT_LINEAR_SCALE", "log": "UNIT_LOG_SCALE", "reverse_log": "UNIT_REVERSE_LOG_SCALE"}


def study_spec(tune: Mapping[str, Any]):
    """A StudySpec from a tune YAML (see configs/movielens_mf_tune.yaml)."""
    from google.cloud import aiplatform_v1 as aip

    P = aip.StudySpec.ParameterSpec
    metric = tune.get("metric") or {}
    if not metric.get("id"):
        raise CloudError("tune spec needs metric: {id: rmse, goal: MINIMIZE}")
    parameters = []
    for raw in tune.get("parameters") or []:
        pid, kind = raw.get("id"), raw.get("type")
        if not pid or not re.fullmatch(r"(train|hparams)\.\w+", pid):
            raise CloudError(f"tune parameter id {pid!r} must be a trainer config key: train.KEY or hparams.KEY")
        spec = P(parameter_id=pid)
        if raw.get("scale"):
            spec.scale_type = P.ScaleType[_SCALES[raw["scale"]]]
        if kind == "double":
            spec.double_value_spec = P.DoubleValueSpec(min_value=float(raw["min"]), max_value=float(raw["max"]))
        elif kind == "integer":
            spec.integer_value_spec = P.IntegerValueSpec(min_value=int(raw["min"]), max_value=int(raw["max"]))
        elif kind == "discrete":
            spec.discrete_value_spec = P.DiscreteValueSpec(values=[float(v) for v in raw["values"]])
        elif kind == "categorical":
            spec.categorical_value_spec = P.CategoricalValueSpec(values=[str(v) for v in raw["values"]])
        else:
            raise CloudError(f"tune parameter {pid}: type {kind!r} is not one of double, integer, discrete, categorical")
        parameters.append(spec)
    if not parameters:
        raise CloudError("tune spec has no parameters")
    return aip.StudySpec(
        metrics=[aip.StudySpec.MetricSpec(metric_id=metric["id"], goal=aip.StudySpec.MetricSpec.GoalType[metric.get("goal", "MINIMIZE")])],
        parameters=parameters,
        algorithm=aip.StudySpec.Algorithm[tune.get("algorithm", "ALGORITHM_UNSPECIFIED")],
    )


def tuning_job(settings: Mapping[str, Any], display_name: str, tune: Mapping[str, Any], **spec_kwargs):
    """HyperparameterTuningJob whose trials run the trainer and report ``metric.id``."""
    from google.cloud import aiplatform_v1 as aip

    study = study_spec(tune)
    metric = study.metrics[0].metric_id
    spec_kwargs = dict(spec_kwargs, args=[*spec_kwargs["args"], "--hypertune-metric", metric])
    return aip.HyperparameterTuningJob(
        display_name=display_name,
        study_spec=study,
        max_trial_count=int(tune.get("max_trial_count", 10)),
        parallel_trial_count=int(tune.get("parallel_trial_count", 2)),
        max_failed_trial_count=int(tune.get("max_failed_trial_count", 0)),
        trial_job_spec=custom_job_spec(settings, **spec_kwargs),
    )


# --- training image (Cloud Build) -------------------------------------------------------------

def image_to_build(settings: Mapping[str, Any], tag: str | None = None) -> str:
    """``--tag``, else ``images.train_container`` (``$VERTEX_TRAIN_CONTAINER``)."""
    if tag:
        if is_placeholder(tag):
            raise CloudError(f"--tag {tag} is a placeholder: name your Artifact Registry repository")
        return tag
    try:
        require(settings, "images.train_container")
    except CloudError as error:
        raise CloudError(f"{error}; or pass --tag URI (e.g. REGION-docker.pkg.dev/PROJECT/REPO/trainer:latest)") from None
    return str(settings["images"]["train_container"])


def build_image_command(settings: Mapping[str, Any], image: str, gcloud: str = "gcloud") -> list[str]:
    """``gcloud builds submit`` of cloud/container (run from the repo root, which is the context).

    ``--ignore-file`` is cloud/container/gcloudignore, an allow list of what the Dockerfile
    copies, so .venv, runs/, data/ and .git are not uploaded.
    """
    require(settings, "project")
    return [
        gcloud, "builds", "submit",
        "--config", f"{CONTAINER_DIR}/cloudbuild.yaml",
        "--substitutions", f"_IMAGE={image}",
        "--ignore-file", f"{CONTAINER_DIR}/gcloudignore",
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


def deploy_requests(settings: Mapping[str, Any], artifact_uri: str, display_name: str, endpoint: str | None = None,
                    machine_type: str | None = None) -> dict[str, Any]:
    """UploadModelRequest, CreateEndpointRequest (unless ``endpoint``) and DeployModelRequest.

    The model and endpoint ids are only known after the first requests; the
    deploy request then holds ``{uploaded-model}`` / ``{created-endpoint}`` placeholders
    that ``send_deploy`` fills in.
    """
    from google.cloud import aiplatform_v1 as aip

    require(settings, "images.serving")
    if not artifact_uri.startswith("gs://"):
        raise CloudError(f"the model must be in Cloud Storage for Vertex AI (got {artifact_uri}); copy the export to gs:// first")
    requests: dict[str, Any] = {
        "upload_model": aip.UploadModelRequest(
            parent=parent(settings),
            model=aip.Model(display_name=display_name, artifact_uri=artifact_uri,
                            container_spec=aip.ModelContainerSpec(image_uri=settings["images"]["serving"])),
        )
    }
    if not endpoint:
        requests["create_endpoint"] = aip.CreateEndpointRequest(parent=parent(settings), endpoint=aip.Endpoint(display_name=display_name))
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

def to_dict(message) -> dict[str, Any]:
    return json.loads(type(message).to_json(message, use_integers_for_enums=False, including_default_value_fields=False))


def _print_json(payload: Any) -> None:
    print(json.dumps(payload, indent=2))


def _info(message: str) -> None:
    print(f"[vertex] {message}", file=sys.stderr)


def _credentials():
    try:
        import google.auth

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return credentials
    except Exception as error:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise CloudError(
            "no Google Cloud credentials: run 'gcloud auth application-default login' "
            f"or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key ({error.__class__.__name__})"
        ) from None


def _gcloud() -> str:
    path = shutil.which("gcloud")
    if not path:
        raise CloudError("gcloud is not installed or not on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk)")
    return path


def _client_options(settings):
    return {"api_endpoint": f"{settings['region']}-aiplatform.googleapis.com"}


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


# --- command line -----------------------------------------------------------------------------

def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print the exact request and send nothing")
    parser.add_argument("--cloud-config", default=None, help="settings YAML (default configs/cloud.yaml or $CLOUD_CONFIG)")


def _training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="trainer config YAML (e.g. configs/movielens_mf.yaml)")
    parser.add_argument("--data", help="pipeline output in GCS (default gs://BUCKET/data/<config name>)")
    parser.add_argument("--workers", type=int, default=1, help="tasks: 1 chief + N-1 workers (default 1)")
    parser.add_argument("--machine-type", help="default: machine_types.train in the cloud settings")
    parser.add_argument("--accelerator", help="e.g. NVIDIA_TESLA_T4 (default: accelerator.type in the settings)")
    parser.add_argument("--accelerator-count", type=int, help="accelerators per replica")
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
    p.add_argument("--input", required=True, help="raw input in GCS (e.g. gs://B/raw/ml-100k/u.data)")
    p.add_argument("--output", help="default gs://BUCKET/data/DATASET-<timestamp>")
    p.add_argument("pipeline_args", nargs="*", help="more pipeline flags after --")
    _common(p)

    p = sub.add_parser(
        "build-image", help="build the training container with Cloud Build and push it",
        description="gcloud builds submit --config cloud/container/cloudbuild.yaml from the repo root: "
                    "builds cloud/container/Dockerfile and pushes it to the tag.",
    )
    p.add_argument("--tag", metavar="URI", help="image to push (default: images.train_container / $VERTEX_TRAIN_CONTAINER)")
    _common(p)

    for name, text in (("train", "submit a Vertex AI CustomJob"), ("tune", "submit a Vertex AI HyperparameterTuningJob")):
        p = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}. Mode: train_mode in the "
                           "settings (default container); --container-image / --python-package override it.")
        _training_options(p)
        if name == "tune":
            p.add_argument("--study", default=str(REPO / "configs" / "movielens_mf_tune.yaml"), help="tune spec YAML")
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
    return parser


def _job_name(args) -> str:
    return args.name or f"{Path(args.config).stem}-{timestamp()}".replace("_", "-").lower()


def _training_request(args, settings):
    require(settings, "project", "region", "bucket")
    if not Path(args.config).exists():
        raise CloudError(f"trainer config {args.config} does not exist")
    mode, image = train_mode(settings, args.container_image, args.python_package)
    name = _job_name(args)
    job_dir = gcs(settings, "jobs", name)
    package_uri = gcs(settings, "packages", name, "recsys-pipelines-0.1.0.tar.gz") if mode == "python_package" else None
    config_uri = f"{job_dir}/config.yaml"
    data = args.data or gcs(settings, "data", Path(args.config).stem)
    spec_kwargs = dict(
        package_uri=package_uri, container_image=image, args=trainer_args(config_uri, data, job_dir, args.set),
        workers=args.workers, base_output_dir=job_dir, machine_type=args.machine_type, accelerator=args.accelerator,
        accelerator_count=args.accelerator_count,
    )
    if args.command == "train":
        request = custom_job(settings, name, **spec_kwargs)
    else:
        study_path = Path(args.study)
        if not study_path.exists():
            raise CloudError(f"tune spec {study_path} does not exist")
        request = tuning_job(settings, name, yaml.safe_load(study_path.read_text()) or {}, **spec_kwargs)
    uploads = [(args.config, config_uri)]
    if package_uri:
        uploads.insert(0, (SDIST, package_uri))
    return request, uploads, (mode, image)


def run(args) -> int:
    settings = load_settings(args.cloud_config)
    if args.command == "preprocess":
        require(settings, "project", "region", "bucket")
        command = dataflow_command(settings, args.dataset, args.input, args.output, args.pipeline_args, python=sys.executable)
        if args.dry_run:
            print(shlex.join(command))
            return 0
        _credentials()
        return subprocess.run(command, cwd=REPO).returncode

    if args.command == "build-image":
        require(settings, "project")
        image = image_to_build(settings, args.tag)
        if args.dry_run:
            print(shlex.join(build_image_command(settings, image)))
            return 0
        subprocess.run(build_image_command(settings, image, gcloud=_gcloud()), cwd=REPO, check=True)
        _info(f"pushed {image}; train with it: set images.train_container (or VERTEX_TRAIN_CONTAINER), "
              "or pass --container-image")
        return 0

    if args.command in ("train", "tune"):
        request, uploads, (mode, image) = _training_request(args, settings)
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
            _info(f"would POST {parent(settings)}/{'customJobs' if args.command == 'train' else 'hyperparameterTuningJobs'}")
            _print_json(to_dict(request))
            return 0
        _gcloud()
        credentials = _credentials()
        from google.cloud import aiplatform_v1 as aip

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
            print(f"run-cloud: error: {args.command} takes no arguments after --", file=sys.stderr)
            return 2
        args.pipeline_args = [*args.pipeline_args, *passthrough]
    try:
        return run(args)
    except CloudError as error:
        print(f"run-cloud: error: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"run-cloud: error: {shlex.join(map(str, error.cmd))} failed with exit code {error.returncode}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
