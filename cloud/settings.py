"""Google Cloud settings shared by every cloud operation: ``configs/cloud.yaml`` + environment, labels, clients.

``cloud.vertex`` (requests and the ``run-cloud.sh`` command line) and
``cloud.cleanup`` both build on this module; it imports neither of them.
Nothing here talks to Google Cloud except ``credentials()``, which asks
``google.auth`` for the application-default credentials.
"""
from __future__ import annotations

import datetime
import json
import os
import re
from pathlib import Path
from typing import Any, Mapping

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
    "images.dataflow_worker": "DATAFLOW_WORKER_IMAGE",
    "tensorboard": "VERTEX_TENSORBOARD",
}
# Unset: empty, changeme/todo, or a "your-..." word anywhere in a path or URI
# ("your-bucket", "us-central1-docker.pkg.dev/your-project-id/recsys/trainer:latest").
PLACEHOLDER = re.compile(r"^(changeme|todo)?$|(^|[/:.@])your[-_]", re.I)
# Every resource this project creates carries APP_LABEL plus job=<name>; cleanup deletes only those.
APP_LABEL = ("app", "recsys-pipelines")
JOB_LABEL = "job"


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


def label_value(text: str) -> str:
    """A Vertex/Dataflow label value: lowercase letters, digits, ``-`` and ``_``, at most 63 characters."""
    return re.sub(r"[^a-z0-9_-]", "-", str(text).lower())[:63]


def labels(name: str) -> dict[str, str]:
    """``{"app": "recsys-pipelines", "job": NAME}``: on every request built here (see cloud/cleanup.py)."""
    return {APP_LABEL[0]: APP_LABEL[1], JOB_LABEL: label_value(name)}


def to_dict(message) -> dict[str, Any]:
    return json.loads(type(message).to_json(message, use_integers_for_enums=False,
                                            always_print_fields_with_no_presence=False))


def credentials():
    try:
        import google.auth

        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        return credentials
    except Exception as error:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise CloudError(
            "no Google Cloud credentials: run 'gcloud auth application-default login' "
            f"or set GOOGLE_APPLICATION_CREDENTIALS to a service-account key ({error.__class__.__name__})"
        ) from None


def client_options(settings: Mapping[str, Any]) -> dict[str, str]:
    return {"api_endpoint": f"{settings['region']}-aiplatform.googleapis.com"}
