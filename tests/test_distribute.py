"""TF_CONFIG parsing and the lead-worker rule."""
import json

import pytest

from trainer import distribute


def _env(cluster, task_type, index):
    return {"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})}


def test_no_tf_config_is_a_single_lead_process():
    info = distribute.task_info({})
    assert info.is_lead and not info.is_distributed and info.num_tasks == 1


def test_vertex_layout_chief_leads_and_worker0_does_not():
    cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2", "127.0.0.1:3"]}
    chief = distribute.task_info(_env(cluster, "chief", 0))
    worker0 = distribute.task_info(_env(cluster, "worker", 0))
    assert chief.is_lead and chief.is_distributed and chief.num_tasks == 3
    assert not worker0.is_lead and worker0.name == "worker:0"


def test_worker_only_cluster_worker0_leads():
    cluster = {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}
    assert distribute.task_info(_env(cluster, "worker", 0)).is_lead
    assert not distribute.task_info(_env(cluster, "worker", 1)).is_lead


def test_single_task_tf_config_is_not_distributed():
    assert not distribute.task_info(_env({"chief": ["127.0.0.1:1"]}, "chief", 0)).is_distributed


def test_invalid_tf_config():
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.task_info({"TF_CONFIG": "{nope"})
