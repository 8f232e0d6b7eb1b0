"""Experiment tracking: the interface the one experiment reports to, and the registry of trackers.

TensorBoard is always written (``JOB/tensorboard`` or ``$AIP_TENSORBOARD_LOG_DIR``).
A tracker adds a run in an experiment-tracking service: ``python -m trainer.task
--track NAME`` (``mlflow``: MLflow, tracking URI from ``MLFLOW_TRACKING_URI``;
``vertex``: Vertex AI Experiments). The experiment calls, in order:

* ``start(config=..., run_name=..., tags=...)`` once, on the lead, before the fit;
* ``log_metrics(values, step)`` after every epoch (or sampler sweep) with the
  epoch's logs (train metrics and ``val_<metric>``);
* ``finish(result)`` once, with the ``RunResult`` whose ``outputs`` name the
  files to attach (metrics.json, the resolved config, plots, the SavedModel).

Trackers are looked up lazily by name, so a tracker's library is imported only
when it is used.
"""
from __future__ import annotations

import importlib
from typing import Any, Mapping

from trainer.config import ConfigError


class Tracker:
    """Tracks nothing; the base of every tracker (subclasses override what they log)."""

    def start(self, *, config: Mapping[str, Any], run_name: str, tags: Mapping[str, str]) -> None:
        """Opens the run and logs the parameters (the resolved config, flattened)."""

    def log_metrics(self, values: Mapping[str, float], step: int) -> None:
        """Logs one epoch's (or sweep's) metrics at ``step`` (1-based)."""

    def finish(self, result) -> None:
        """Logs the final valid/test metrics and the run's files, and closes the run."""


# name -> "module:class"; a tracker module may import its service's library at the top.
TRACKERS: dict[str, str] = {}


def flatten(config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (what trackers log as parameters)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update({f"{key}.{k}": v for k, v in flatten(value).items()})
        else:
            flat[key] = value
    return flat


def check_name(name: str | None) -> None:
    """Raises ``ConfigError`` for a tracker name that is not registered (no import of any tracker)."""
    if name and name != "none" and name not in TRACKERS:
        raise ConfigError(f"--track {name!r}: unknown tracker; known: none"
                          + "".join(f", {n}" for n in sorted(TRACKERS)))


def make_tracker(name: str | None) -> Tracker:
    """The tracker called ``name`` (None or ``none``: the base, which tracks nothing).

    Raises:
      ConfigError: an unknown name (the message lists the known ones).
    """
    check_name(name)
    if not name or name == "none":
        return Tracker()
    module, _, cls = TRACKERS[name].partition(":")
    return getattr(importlib.import_module(module), cls)()
