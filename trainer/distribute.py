"""Strategy selection from ``TF_CONFIG`` and the lead-worker rule.

Vertex AI (and ``trainer/launch_local.py``) describe a multi-worker job with
``TF_CONFIG = {"cluster": {"chief": [...], "worker": [...]}, "task": {...}}``.
One task -> the default strategy; several -> MultiWorkerMirroredStrategy. The
lead is ``chief:0``, or ``worker:0`` when there is no chief; only the lead writes
the export, metrics and plots.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """Where this process sits in the cluster."""

    task_type: str
    task_index: int
    num_tasks: int
    has_chief: bool

    @property
    def is_lead(self) -> bool:
        if self.has_chief:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.task_index == 0

    @property
    def is_distributed(self) -> bool:
        return self.num_tasks > 1

    @property
    def name(self) -> str:
        return f"{self.task_type}:{self.task_index}"


def task_info(environ: dict[str, str] | None = None) -> TaskInfo:
    """Reads ``TF_CONFIG``; absent or single-task means a local, single process."""
    environ = os.environ if environ is None else environ
    raw = environ.get("TF_CONFIG", "").strip()
    if not raw:
        return TaskInfo("chief", 0, 1, True)
    try:
        tf_config: dict[str, Any] = json.loads(raw)
    except json.JSONDecodeError as error:
        raise ValueError(f"TF_CONFIG is not valid JSON: {error}") from None
    cluster = tf_config.get("cluster", {})
    task = tf_config.get("task", {})
    num_tasks = sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))
    return TaskInfo(
        task_type=task.get("type", "chief"),
        task_index=int(task.get("index", 0)),
        num_tasks=max(1, num_tasks),
        has_chief=bool(cluster.get("chief")),
    )


def make_strategy(info: TaskInfo):
    """MultiWorkerMirroredStrategy for several tasks, else the default strategy."""
    import tensorflow as tf

    if info.is_distributed:
        options = tf.distribute.experimental.CommunicationOptions(
            implementation=tf.distribute.experimental.CommunicationImplementation.RING
        )
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    return tf.distribute.get_strategy()
