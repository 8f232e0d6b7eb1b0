"""Reporting a valid metric to Vertex AI hyperparameter tuning, the way the cloudml-hypertune library does.

Vertex AI reads JSON lines from ``$CLOUD_ML_HP_METRIC_FILE`` (default
``/tmp/hypertune/output.metrics``); each holds the metric tag and value, the
global step and a timestamp. The trainer reports after every epoch and, last,
the value of the epoch it chose (what the trial is judged by).
"""
from __future__ import annotations

import json
import os
import time
from typing import Mapping

DEFAULT_FILE = "/tmp/hypertune/output.metrics"


def report(tag: str, value: float, step: int, environ: Mapping[str, str] | None = None) -> str:
    """Appends one metric record; returns the file written."""
    environ = os.environ if environ is None else environ
    path = environ.get("CLOUD_ML_HP_METRIC_FILE") or DEFAULT_FILE
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    record = {"timestamp": time.time(), "trial": str(environ.get("CLOUD_ML_TRIAL_ID", "0")),
              tag: str(value), "global_step": str(int(step)), "checkpoint_path": ""}
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")
    return path
