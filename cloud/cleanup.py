"""``./run-cloud.sh cleanup``: delete the Vertex AI resources this project created, nothing else.

Every request ``cloud.vertex`` builds labels its resource ``app=recsys-pipelines`` and
``job=<name>`` (CustomJob, HyperparameterTuningJob, Model, Endpoint). Cleanup lists each
kind with the server-side filter ``labels.app=recsys-pipelines`` (plus ``labels.job=NAME``
with ``--job``) and checks the labels again on every listed resource, so an unlabelled
resource is never touched even if a listing returned it. Then, in this order:

1. every labelled endpoint: undeploy each of its deployed models (UndeployModel), then
   delete it (DeleteEndpoint needs an endpoint with no deployed models);
2. every labelled model that no other endpoint still serves: DeleteModel (a model deployed
   on an endpoint cleanup does not delete is left, with the reason);
3. labelled hyperparameter tuning jobs and custom jobs in a final state: Delete*; jobs still
   queued or running are left (Vertex refuses to delete them) unless ``--cancel-running``,
   which sends Cancel* (run cleanup again once they are cancelled to delete them).

``--dry-run`` prints the List requests and sends nothing; with ``--listed FILE`` (the listed
resources as JSON: ``{"endpoints": [...], "models": [...], "custom_jobs": [...],
"hyperparameter_tuning_jobs": [...]}``, each item an ``aiplatform_v1`` resource in its JSON
form, e.g. what ``gcloud ai endpoints list --format=json`` prints) it also prints the
Undeploy/Delete/Cancel requests it would send. A real run lists, prints the same plan, and
sends it only with ``--yes``. Cloud Storage (``gs://BUCKET/jobs``, ``data``) is not touched.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from cloud.settings import APP_LABEL, JOB_LABEL, CloudError, label_value, parent, require, to_dict

KINDS = ("endpoints", "models", "hyperparameter_tuning_jobs", "custom_jobs")
_CAMEL = {"hyperparameterTuningJobs": "hyperparameter_tuning_jobs", "customJobs": "custom_jobs"}
FINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED",
                "JOB_STATE_PARTIALLY_SUCCEEDED")
# method name -> (aiplatform_v1 request type name, service client, client method)
METHODS = {
    "ListEndpoints": ("ListEndpointsRequest", "EndpointServiceClient", "list_endpoints"),
    "ListModels": ("ListModelsRequest", "ModelServiceClient", "list_models"),
    "ListHyperparameterTuningJobs": ("ListHyperparameterTuningJobsRequest", "JobServiceClient", "list_hyperparameter_tuning_jobs"),
    "ListCustomJobs": ("ListCustomJobsRequest", "JobServiceClient", "list_custom_jobs"),
    "UndeployModel": ("UndeployModelRequest", "EndpointServiceClient", "undeploy_model"),
    "DeleteEndpoint": ("DeleteEndpointRequest", "EndpointServiceClient", "delete_endpoint"),
    "DeleteModel": ("DeleteModelRequest", "ModelServiceClient", "delete_model"),
    "DeleteHyperparameterTuningJob": ("DeleteHyperparameterTuningJobRequest", "JobServiceClient", "delete_hyperparameter_tuning_job"),
    "DeleteCustomJob": ("DeleteCustomJobRequest", "JobServiceClient", "delete_custom_job"),
    "CancelHyperparameterTuningJob": ("CancelHyperparameterTuningJobRequest", "JobServiceClient", "cancel_hyperparameter_tuning_job"),
    "CancelCustomJob": ("CancelCustomJobRequest", "JobServiceClient", "cancel_custom_job"),
}
_LIST = {"endpoints": "ListEndpoints", "models": "ListModels",
         "hyperparameter_tuning_jobs": "ListHyperparameterTuningJobs", "custom_jobs": "ListCustomJobs"}
_RESOURCE = {"endpoints": "Endpoint", "models": "Model", "hyperparameter_tuning_jobs": "HyperparameterTuningJob",
             "custom_jobs": "CustomJob"}


def label_filter(job: str | None = None) -> str:
    """The List filter: ``labels.app=recsys-pipelines`` [`` AND labels.job=NAME``]."""
    text = f"labels.{APP_LABEL[0]}={APP_LABEL[1]}"
    return f"{text} AND labels.{JOB_LABEL}={label_value(job)}" if job else text


def list_requests(settings: Mapping[str, Any], job: str | None = None) -> dict[str, Any]:
    """One List request per kind (``KINDS``), each with the label filter."""
    from google.cloud import aiplatform_v1 as aip

    return {kind: getattr(aip, METHODS[_LIST[kind]][0])(parent=parent(settings), filter=label_filter(job))
            for kind in KINDS}


def is_ours(resource, job: str | None = None) -> bool:
    """True only for a resource labelled app=recsys-pipelines (and job=NAME when given)."""
    found = dict(resource.labels)
    if found.get(APP_LABEL[0]) != APP_LABEL[1]:
        return False
    return job is None or found.get(JOB_LABEL) == label_value(job)


def parse_listed(payload: Mapping[str, Any]) -> dict[str, list]:
    """``aiplatform_v1`` resources from a ``--listed`` JSON document (see the module docstring)."""
    from google.cloud import aiplatform_v1 as aip

    if not isinstance(payload, Mapping):
        raise CloudError("--listed must hold a JSON object with endpoints, models, custom_jobs, hyperparameter_tuning_jobs")
    listed: dict[str, list] = {kind: [] for kind in KINDS}
    for key, items in payload.items():
        kind = _CAMEL.get(key, key)
        if kind not in KINDS:
            raise CloudError(f"--listed: unknown key {key!r} (valid: {', '.join(KINDS)})")
        if not isinstance(items, list):
            raise CloudError(f"--listed: {key} must be a list")
        resource_type = getattr(aip, _RESOURCE[kind])
        for item in items:
            try:
                listed[kind].append(resource_type.from_json(json.dumps(item), ignore_unknown_fields=True))
            except Exception as error:  # json_format.ParseError and friends
                raise CloudError(f"--listed: a {key} item is not a {_RESOURCE[kind]}: {str(error).splitlines()[0]}") from None
    return listed


def plan(listed: Mapping[str, Sequence[Any]], job: str | None = None, cancel_running: bool = False):
    """The requests that remove what ``listed`` holds of ours, in order, and what is left alone.

    Returns:
      ``(requests, skipped)``: ``requests`` is a list of ``(method, request)`` with ``method``
      a key of ``METHODS``; ``skipped`` a list of ``(resource name, reason)``.
    """
    from google.cloud import aiplatform_v1 as aip

    requests: list[tuple[str, Any]] = []
    skipped: list[tuple[str, str]] = []
    for kind in KINDS:
        for resource in listed.get(kind, ()):
            if not is_ours(resource, job):
                skipped.append((resource.name, "not labelled " + label_filter(job).replace("labels.", "")))
    endpoints = [e for e in listed.get("endpoints", ()) if is_ours(e, job)]
    deleted_endpoints = {e.name for e in endpoints}
    for endpoint in endpoints:
        ids = [d.id for d in endpoint.deployed_models]
        for index, deployed_id in enumerate(ids):
            rest = ids[index + 1:]
            # A deployed model with traffic is undeployed only if the request moves its traffic away.
            requests.append(("UndeployModel", aip.UndeployModelRequest(
                endpoint=endpoint.name, deployed_model_id=deployed_id, traffic_split={rest[0]: 100} if rest else {})))
        requests.append(("DeleteEndpoint", aip.DeleteEndpointRequest(name=endpoint.name)))
    for model in listed.get("models", ()):
        if not is_ours(model, job):
            continue
        elsewhere = sorted({ref.endpoint for ref in model.deployed_models} - deleted_endpoints)
        if elsewhere:
            skipped.append((model.name, f"still deployed on {', '.join(elsewhere)}, which cleanup does not delete"))
            continue
        requests.append(("DeleteModel", aip.DeleteModelRequest(name=model.name)))
    for kind, noun in (("hyperparameter_tuning_jobs", "HyperparameterTuningJob"), ("custom_jobs", "CustomJob")):
        for job_resource in listed.get(kind, ()):
            if not is_ours(job_resource, job):
                continue
            state = aip.JobState(job_resource.state).name
            if state in FINAL_STATES:
                requests.append((f"Delete{noun}", getattr(aip, f"Delete{noun}Request")(name=job_resource.name)))
            elif cancel_running:
                requests.append((f"Cancel{noun}", getattr(aip, f"Cancel{noun}Request")(name=job_resource.name)))
            else:
                skipped.append((job_resource.name, f"{state}: not finished (pass --cancel-running, then run cleanup again)"))
    return requests, skipped


def _describe(requests, skipped) -> dict[str, Any]:
    return {"requests": [{"method": method, "request": to_dict(request)} for method, request in requests],
            "skipped": [{"name": name, "reason": reason} for name, reason in skipped]}


def _clients(settings):
    from google.cloud import aiplatform_v1 as aip

    from cloud.settings import client_options as _client_options
    from cloud.settings import credentials as _credentials

    credentials = _credentials()
    options = _client_options(settings)
    cache: dict[str, Any] = {}

    def client(name: str):
        if name not in cache:
            cache[name] = getattr(aip, name)(credentials=credentials, client_options=options)
        return cache[name]

    return client


def _list_all(settings, job):
    client = _clients(settings)
    listed = {}
    for kind, request in list_requests(settings, job).items():
        _, service, method = METHODS[_LIST[kind]]
        listed[kind] = list(getattr(client(service), method)(request=request))
    return listed, client


def _say(message: str) -> None:
    print(f"[cleanup] {message}", file=sys.stderr)


def run(args, settings: Mapping[str, Any]) -> int:
    """``cleanup`` of ``python -m cloud.vertex`` (see the module docstring)."""
    require(settings, "project", "region")
    lists = list_requests(settings, args.job)
    if args.dry_run:
        payload: dict[str, Any] = {"list": {_LIST[kind]: to_dict(request) for kind, request in lists.items()}}
        if args.listed:
            path = Path(args.listed)
            try:
                document = json.loads(path.read_text())
            except (OSError, ValueError) as error:
                raise CloudError(f"--listed {path} cannot be read as JSON: {error.__class__.__name__}") from None
            requests, skipped = plan(parse_listed(document), args.job, args.cancel_running)
            payload.update(_describe(requests, skipped))
            _say(f"would send {len(requests)} request(s); {len(skipped)} resource(s) left alone")
        else:
            _say("would send the List requests below; pass --listed FILE to see the Delete requests for a listing")
        print(json.dumps(payload, indent=2))
        return 0
    if args.listed:
        raise CloudError("--listed is for --dry-run; a real cleanup lists the resources itself")
    listed, client = _list_all(settings, args.job)
    requests, skipped = plan(listed, args.job, args.cancel_running)
    print(json.dumps(_describe(requests, skipped), indent=2))
    if not requests:
        _say("nothing to delete")
        return 0
    if not args.yes:
        raise CloudError(f"cleanup would send the {len(requests)} request(s) above: rerun with --yes to send them")
    for method, request in requests:
        _, service, call = METHODS[method]
        result = getattr(client(service), call)(request=request)
        if hasattr(result, "result"):  # a long-running operation: wait (undeploy before delete)
            result.result()
        _say(f"{method} {getattr(request, 'name', '') or request.endpoint}")
    return 0
