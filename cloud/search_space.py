"""The hyperparameter search-space YAML: one format for Vertex AI tuning and a local tuner.

Pure Python and YAML, no TensorFlow and no Google Cloud imports: ``./run-cloud.sh tune``
turns the result into a Vertex AI ``StudySpec`` (``cloud.vertex.study_spec``) and the local
tuner (``./run-cloud.sh tune --local``, ``workflows.tune``) into an Optuna study.

Format (``configs/*_tune.yaml``)::

    metric: {id: rmse, goal: MINIMIZE}   # a VALID-split metric the trainer reports (see below);
                                         # goal is optional and must match the metric's direction
    algorithm: ALGORITHM_UNSPECIFIED     # Vertex's default (Bayesian optimisation), GRID_SEARCH or
                                         # RANDOM_SEARCH; optional (default ALGORITHM_UNSPECIFIED)
    max_trial_count: 20                  # optional, default 10
    parallel_trial_count: 4              # optional, default 2; at most max_trial_count
    max_failed_trial_count: 3            # optional, default 0 (Vertex decides)
    parameters:                          # one or more; ids are trainer config keys
      - {id: hparams.l2_embedding, type: double, min: 0.01, max: 0.3, scale: log}
      - {id: hparams.num_rounds, type: integer, min: 1, max: 3}
      - {id: hparams.embedding_dim, type: discrete, values: [16, 32, 64, 128]}
      - {id: train.optimizer, type: categorical, values: [adam, adagrad]}

Parameter types and their keys:

* ``double``: ``min``, ``max`` (numbers, min < max), optional ``scale``;
* ``integer``: ``min``, ``max`` (whole numbers, min < max), optional ``scale``;
* ``discrete``: ``values`` (distinct numbers, sorted here), optional ``scale``;
* ``categorical``: ``values`` (distinct strings).

``scale`` is ``linear``, ``log`` or ``reverse_log`` (log scales need positive values).
``GRID_SEARCH`` takes no ``double`` parameter. Ids are ``train.KEY`` or ``hparams.KEY``: the
tuner passes each trial's values as ``--hparams.KEY=VALUE``, which ``trainer.task`` turns
into ``--set hparams.KEY=VALUE`` (Vertex sends discrete values as doubles, ``64.0``).

The metric is one the trainer reports for tuning, always on the VALID split (never test):
``task_metrics()`` lists them per task (the trainer's ``trainer.tasks.METRICS``), and
``check_metric(space, model)`` checks the metric against the trainer config's model. Every
error is one line (``SearchSpaceError``).
"""
from __future__ import annotations

import math
import os
import re
from typing import Any, Mapping

import yaml

from trainer import models as trainer_models
from trainer import tasks as trainer_tasks

# The metrics and model tasks come from the trainer's own TF-free tables (trainer.tasks.METRICS,
# trainer.models.REGISTRY), so a task or model added there is tunable here without an edit.
GOALS_OF_DIRECTIONS = {"min": "MINIMIZE", "max": "MAXIMIZE"}


def task_metrics() -> dict[str, dict[str, str]]:
    """Per trainer task, the valid metrics it reports and the goal (``MINIMIZE``/``MAXIMIZE``) of each."""
    return {kind: {name: GOALS_OF_DIRECTIONS[direction] for name, direction in metrics.items()}
            for kind, metrics in trainer_tasks.METRICS.items()}


def model_tasks() -> dict[str, str]:
    """Per registered model (``trainer.models.REGISTRY``), its task kind."""
    return {name: spec.task for name, spec in trainer_models.REGISTRY.items()}


DEFAULT_MODEL = "mf"  # trainer.config's model when a config names none
ALGORITHMS = ("ALGORITHM_UNSPECIFIED", "GRID_SEARCH", "RANDOM_SEARCH")
GOALS = ("MINIMIZE", "MAXIMIZE")
SCALES = ("linear", "log", "reverse_log")
TOP_LEVEL_KEYS = ("metric", "algorithm", "max_trial_count", "parallel_trial_count", "max_failed_trial_count", "parameters")
PARAMETER_KEYS = {
    "double": ("id", "type", "min", "max", "scale"),
    "integer": ("id", "type", "min", "max", "scale"),
    "discrete": ("id", "type", "values", "scale"),
    "categorical": ("id", "type", "values"),
}
PARAMETER_ID = re.compile(r"(train|hparams)\.\w+")
DEFAULTS = {"algorithm": "ALGORITHM_UNSPECIFIED", "max_trial_count": 10, "parallel_trial_count": 2,
            "max_failed_trial_count": 0}


class SearchSpaceError(ValueError):
    """A search-space file the user must fix; the message is one line and names the file."""


def metric_direction(metric_id: str) -> str | None:
    """``MINIMIZE`` / ``MAXIMIZE`` for a metric the trainer reports, None for an unknown one."""
    for metrics in task_metrics().values():
        if metric_id in metrics:
            return metrics[metric_id]
    return None


def _number(value: Any, what: str, whole: bool = False) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what} must be a {'whole ' if whole else ''}number, got {value!r}")
    if whole:
        if value != int(value):
            raise ValueError(f"{what} must be a whole number, got {value!r}")
        return int(value)
    return float(value)


def _count(raw: Mapping[str, Any], key: str, minimum: int) -> int:
    value = raw.get(key, DEFAULTS[key])
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{key} must be a whole number >= {minimum}, got {value!r}")
    return value


def _parameter(raw: Any, index: int) -> dict[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValueError(f"parameters[{index}] must be a mapping such as {{id: hparams.KEY, type: double, min: 0, max: 1}}")
    pid = raw.get("id")
    if not isinstance(pid, str) or not PARAMETER_ID.fullmatch(pid):
        raise ValueError(f"parameters[{index}]: id {pid!r} must be a trainer config key: train.KEY or hparams.KEY")
    kind = raw.get("type")
    if kind not in PARAMETER_KEYS:
        raise ValueError(f"parameter {pid}: type {kind!r} is not one of {', '.join(PARAMETER_KEYS)}")
    unknown = sorted(set(raw) - set(PARAMETER_KEYS[kind]))
    if unknown:
        raise ValueError(f"parameter {pid}: unknown key(s) {', '.join(map(str, unknown))} for type {kind} "
                         f"(valid: {', '.join(PARAMETER_KEYS[kind])})")
    spec: dict[str, Any] = {"id": pid, "type": kind}
    if kind in ("double", "integer"):
        for key in ("min", "max"):
            if key not in raw:
                raise ValueError(f"parameter {pid}: type {kind} needs min and max")
            spec[key] = _number(raw[key], f"parameter {pid}: {key}", whole=kind == "integer")
        if spec["min"] >= spec["max"]:
            raise ValueError(f"parameter {pid}: min {spec['min']} must be below max {spec['max']}")
        bounds = [spec["min"]]
    else:
        values = raw.get("values")
        if not isinstance(values, list) or not values:
            raise ValueError(f"parameter {pid}: type {kind} needs a non-empty list of values")
        if kind == "discrete":
            values = sorted(_number(v, f"parameter {pid}: value") for v in values)
        else:
            if any(isinstance(v, (list, dict)) or v is None for v in values):
                raise ValueError(f"parameter {pid}: categorical values must be strings, got {values!r}")
            values = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
        if len(set(values)) != len(values):
            raise ValueError(f"parameter {pid}: values must be distinct, got {raw['values']!r}")
        spec["values"] = values
        bounds = values if kind == "discrete" else []
    if "scale" in raw:
        if raw["scale"] not in SCALES:
            raise ValueError(f"parameter {pid}: scale {raw['scale']!r} is not one of {', '.join(SCALES)}")
        if raw["scale"] != "linear" and min(bounds) <= 0:
            raise ValueError(f"parameter {pid}: scale {raw['scale']} needs values > 0")
        spec["scale"] = raw["scale"]
    return spec


def validate(raw: Any) -> dict[str, Any]:
    """The normalised search space of a parsed YAML document (see the module docstring).

    Returns:
      ``{"metric": {"id", "goal"}, "algorithm", "max_trial_count", "parallel_trial_count",
      "max_failed_trial_count", "parameters": [{"id", "type", "min"/"max" or "values"[, "scale"]}]}``
      with every key present, discrete values sorted and categorical values as strings.

    Raises:
      ValueError: with a one-line message (``load_search_space`` adds the file name).
    """
    if not isinstance(raw, Mapping):
        raise ValueError("must hold a mapping with metric and parameters")
    unknown = sorted(set(raw) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(str, unknown))} (valid: {', '.join(TOP_LEVEL_KEYS)})")
    metric = raw.get("metric")
    if isinstance(metric, str):
        metric = {"id": metric}
    if not isinstance(metric, Mapping) or not metric.get("id"):
        raise ValueError("needs metric: {id: METRIC, goal: MINIMIZE|MAXIMIZE}, e.g. {id: rmse, goal: MINIMIZE}")
    unknown = sorted(set(metric) - {"id", "goal"})
    if unknown:
        raise ValueError(f"metric: unknown key(s) {', '.join(map(str, unknown))} (valid: id, goal)")
    metric_id = str(metric["id"])
    direction = metric_direction(metric_id)
    if direction is None:
        known = ", ".join(sorted({m for metrics in task_metrics().values() for m in metrics}))
        raise ValueError(f"metric {metric_id!r} is not a valid-split metric the trainer reports (known: {known})")
    goal = metric.get("goal", direction)
    if goal not in GOALS:
        raise ValueError(f"metric goal {goal!r} is not one of {', '.join(GOALS)}")
    if goal != direction:
        raise ValueError(f"metric {metric_id} is better when {'lower' if direction == 'MINIMIZE' else 'higher'}: "
                         f"goal must be {direction}, not {goal}")
    algorithm = raw.get("algorithm", DEFAULTS["algorithm"])
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r} is not one of {', '.join(ALGORITHMS)}")
    raw_parameters = raw.get("parameters")
    if not isinstance(raw_parameters, list) or not raw_parameters:
        raise ValueError("needs a non-empty list of parameters")
    parameters = [_parameter(p, i) for i, p in enumerate(raw_parameters)]
    ids = [p["id"] for p in parameters]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(f"parameter id(s) {', '.join(duplicated)} appear more than once")
    if algorithm == "GRID_SEARCH":
        doubles = [p["id"] for p in parameters if p["type"] == "double"]
        if doubles:
            raise ValueError(f"GRID_SEARCH cannot search double parameter(s) {', '.join(doubles)}: use discrete values")
    space = {
        "metric": {"id": metric_id, "goal": goal},
        "algorithm": algorithm,
        "max_trial_count": _count(raw, "max_trial_count", 1),
        "parallel_trial_count": _count(raw, "parallel_trial_count", 1),
        "max_failed_trial_count": _count(raw, "max_failed_trial_count", 0),
        "parameters": parameters,
    }
    if space["parallel_trial_count"] > space["max_trial_count"]:
        raise ValueError(f"parallel_trial_count {space['parallel_trial_count']} exceeds max_trial_count {space['max_trial_count']}")
    return space


def load_search_space(path: str | os.PathLike) -> dict[str, Any]:
    """Reads and validates a search-space YAML (format in the module docstring).

    Raises:
      SearchSpaceError: a missing or unreadable file or an invalid space; one line naming the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle)
    except FileNotFoundError:
        raise SearchSpaceError(f"search space {path} does not exist") from None
    except (OSError, yaml.YAMLError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise SearchSpaceError(f"search space {path} cannot be read: {first}") from None
    try:
        return validate(raw)
    except ValueError as error:
        raise SearchSpaceError(f"search space {path}: {error}") from None


def task_of(model: str) -> str:
    """The trainer task (``rating``, ``ranking``, ``graph_classification``) of a model name."""
    tasks = model_tasks()
    if model not in tasks:
        raise SearchSpaceError(f"unknown model {model!r} (known: {', '.join(tasks)})")
    return tasks[model]


def check_metric(space: Mapping[str, Any], model: str) -> None:
    """Raises SearchSpaceError unless the trainer reports ``space``'s metric for ``model``."""
    task = task_of(model)
    metric = space["metric"]["id"]
    metrics = task_metrics().get(task, {})
    if metric not in metrics:
        raise SearchSpaceError(f"metric {metric!r} is not reported for model {model} ({task} task); "
                               f"valid metrics: {', '.join(metrics) or 'none yet (trainer.tasks.METRICS)'}")


def config_model(config_path: str | os.PathLike, sets: list[str] | tuple[str, ...] = ()) -> str:
    """The ``model`` a trainer config selects (the last ``--set model=X`` wins), without the trainer."""
    model = None
    try:
        with open(config_path, encoding="utf-8") as handle:
            raw = yaml.safe_load(handle) or {}
    except (OSError, yaml.YAMLError) as error:
        raise SearchSpaceError(f"trainer config {config_path} cannot be read: {error.__class__.__name__}") from None
    if isinstance(raw, Mapping):
        model = raw.get("model")
    for item in sets:
        key, _, value = item.partition("=")
        if key.strip() == "model":
            model = value.strip()
    return str(model or DEFAULT_MODEL)
