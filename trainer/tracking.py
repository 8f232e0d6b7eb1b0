"""Experiment tracking: the interface the one experiment reports to, and the registry of trackers.

TensorBoard is always written (``JOB/tensorboard`` or ``$AIP_TENSORBOARD_LOG_DIR``).
A tracker adds a run in an experiment-tracking service: ``python -m trainer.task
--track NAME`` (``mlflow``: MLflow, tracking URI from ``MLFLOW_TRACKING_URI``, see
``trainer.tracking_mlflow``; ``vertex``: Vertex AI Experiments, see
``trainer.tracking_vertex``; several: ``--track mlflow,vertex``). The experiment calls,
in order:

* ``start(config=..., run_name=..., tags=...)`` once, on the lead, before the fit;
* ``log_metrics(values, step)`` after every epoch (or sampler sweep) with the
  epoch's logs (train metrics and ``val_<metric>``);
* ``finish(result)`` once, with the ``RunResult`` whose ``outputs`` name the
  files to attach (metrics.json, the resolved config, plots, the SavedModel).

A run that ends without a result (an error, Ctrl-C, a pruned tuning trial) is closed
by ``abort(error)``: callers wrap ``experiment.run`` in ``closing(tracker)``.

Trackers are looked up lazily by name, so a tracker's library is imported only when
it is used; ``check_name`` checks a name (and that its library is installed) without
importing it, before TensorFlow loads.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
from typing import Any, Iterator, Mapping, Sequence

from trainer.config import ConfigError


class TrackingError(RuntimeError):
    """A tracker cannot log (missing settings, the service refused); the message is one line."""


class RunStopped(Exception):
    """Raised (by a tracker or a caller) to end a run on purpose, e.g. a pruned tuning trial."""


class Tracker:
    """Tracks nothing; the base of every tracker (subclasses override what they log)."""

    def start(self, *, config: Mapping[str, Any], run_name: str, tags: Mapping[str, str]) -> None:
        """Opens the run and logs the parameters (the resolved config, flattened)."""

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Logs one epoch's (or sweep's) metrics at ``step`` (1-based)."""

    def finish(self, result) -> None:
        """Logs the final valid/test metrics and the run's files, and closes the run."""

    def abort(self, error: BaseException) -> None:
        """Closes a started run that ended without a result (``RunStopped``, Ctrl-C: stopped; else failed).

        Called for a tracker that never started too (a non-lead worker, an error before the
        fit): then it does nothing.
        """


class TrackerGroup(Tracker):
    """Several trackers as one, called in the order given (``--track mlflow,vertex``).

    Args:
      trackers: the trackers.
      tags: more tags for every run (e.g. the tuning study a trial belongs to).
    """

    def __init__(self, trackers: Sequence[Tracker], tags: Mapping[str, str] | None = None):
        self.trackers = list(trackers)
        self.tags = dict(tags or {})

    def start(self, *, config, run_name, tags):
        for tracker in self.trackers:
            tracker.start(config=config, run_name=run_name, tags={**tags, **self.tags})

    def log_metrics(self, values, step):
        for tracker in self.trackers:
            tracker.log_metrics(values, step)

    def finish(self, result):
        for tracker in self.trackers:
            tracker.finish(result)

    def abort(self, error):
        for tracker in self.trackers:
            tracker.abort(error)


# name -> ("module:class", the module that must be importable); the tracker module imports its
# service's library at the top, so it is imported only when that tracker is used.
TRACKERS: dict[str, tuple[str, str, str]] = {
    "mlflow": ("trainer.tracking_mlflow:MlflowTracker", "mlflow", "pip install mlflow-skinny"),
    "vertex": ("trainer.tracking_vertex:VertexExperimentsTracker", "google.cloud.aiplatform_v1",
               "pip install google-cloud-aiplatform"),
}


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (what trackers log as parameters)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def names(spec: str | None) -> list[str]:
    """The tracker names of ``--track`` (comma-separated; ``none`` or empty: no tracker)."""
    return [n.strip() for n in (spec or "").split(",") if n.strip() and n.strip() != "none"]


def check_name(spec: str | None) -> None:
    """Raises ``ConfigError`` for a tracker that is not registered or whose library is missing (no import)."""
    for name in names(spec):
        if name not in TRACKERS:
            raise ConfigError(f"--track {name!r}: unknown tracker; known: none"
                              + "".join(f", {n}" for n in sorted(TRACKERS)))
        _, requirement, install = TRACKERS[name]
        try:
            found = importlib.util.find_spec(requirement) is not None
        except ModuleNotFoundError:  # a missing parent package (google.cloud)
            found = False
        if not found:
            raise ConfigError(f"--track {name}: {requirement} is not installed ({install})")


def make_tracker(spec: str | None) -> Tracker:
    """The tracker(s) named by ``spec`` (None or ``none``: the base, which tracks nothing).

    Raises:
      ConfigError: an unknown name (the message lists the known ones), a missing library,
        or a tracker's own settings check (e.g. Vertex AI Experiments without a project).
    """
    check_name(spec)
    made = []
    for name in names(spec):
        module, _, cls = TRACKERS[name][0].partition(":")
        made.append(getattr(importlib.import_module(module), cls)())
    if not made:
        return Tracker()
    return made[0] if len(made) == 1 else TrackerGroup(made)


@contextlib.contextmanager
def closing(tracker: Tracker) -> Iterator[Tracker]:
    """``with closing(tracker): experiment.run(..., tracker=tracker)``: a run that raises is aborted."""
    try:
        yield tracker
    except BaseException as error:
        tracker.abort(error)
        raise
