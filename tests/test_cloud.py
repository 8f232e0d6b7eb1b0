"""run-cloud.sh cloud subcommands offline: dry runs print requests that parse, clear errors, help.

Nothing here talks to Google Cloud: every run is a --dry-run or fails before
sending. The printed JSON is parsed back with the aiplatform_v1 types.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tools import vertex

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run-cloud.sh"
SUBCOMMANDS = ["local", "test", "preprocess", "train", "tune", "deploy", "predict"]


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in vertex.ENV_OVERRIDES.values() and k != "CLOUD_CONFIG"}
    env.update({"GCP_PROJECT": "test-project", "GCS_BUCKET": "test-bucket", "GCP_REGION": "europe-west4"})
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def _run(*args, env=None, timeout=120):
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def aip():
    from google.cloud import aiplatform_v1

    return aiplatform_v1


@pytest.mark.parametrize("sub", SUBCOMMANDS)
def test_every_subcommand_has_help(sub):
    result = _run(sub, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ./run-cloud.sh {sub}")


def test_top_level_help_lists_cloud_subcommands():
    result = _run("--help")
    assert result.returncode == 0
    for sub in SUBCOMMANDS:
        assert f"  {sub}" in result.stdout


def test_shellcheck_passes():
    if not shutil.which("shellcheck"):
        pytest.skip("shellcheck is not installed")
    result = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_train_dry_run_prints_a_custom_job_with_chief_and_worker_pools(aip):
    result = _run("train", "configs/movielens_mf.yaml", "--workers", "4", "--dry-run",
                  "--data", "gs://test-bucket/data/ml-100k", "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    job = aip.CustomJob.from_json(result.stdout)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 3]
    for pool in pools:
        package = pool.python_package_spec
        assert package.python_module == "trainer.task"
        assert package.executor_image_uri.startswith("us-docker.pkg.dev/vertex-ai/training/tf-")
        assert package.package_uris[0].startswith("gs://test-bucket/packages/")
        args = list(package.args)
        assert args[args.index("--data") + 1] == "gs://test-bucket/data/ml-100k"
        assert args[args.index("--config") + 1].startswith("gs://test-bucket/jobs/")
        assert "train.epochs=3" in args
    base = job.job_spec.base_output_directory.output_uri_prefix
    assert base.startswith("gs://test-bucket/jobs/movielens-mf-")
    assert list(pools[0].python_package_spec.args)[5] == base  # --job-dir = base output dir
    assert "projects/test-project/locations/europe-west4/customJobs" in result.stderr
    assert "would upload" in result.stderr


def test_train_single_worker_and_accelerator(aip):
    result = _run("train", "configs/movielens_mf.yaml", "--dry-run", "--machine-type", "n1-highmem-4",
                  "--accelerator", "NVIDIA_TESLA_T4", "--accelerator-count", "2")
    assert result.returncode == 0, result.stderr
    job = aip.CustomJob.from_json(result.stdout)
    (pool,) = job.job_spec.worker_pool_specs
    assert pool.replica_count == 1
    assert pool.machine_spec.machine_type == "n1-highmem-4"
    assert pool.machine_spec.accelerator_type == aip.AcceleratorType.NVIDIA_TESLA_T4
    assert pool.machine_spec.accelerator_count == 2
    bad = _run("train", "configs/movielens_mf.yaml", "--dry-run", "--accelerator", "NVIDIA_NOPE")
    assert bad.returncode == 2 and "unknown accelerator 'NVIDIA_NOPE'" in bad.stderr


def test_tune_dry_run_prints_a_tuning_job(aip):
    result = _run("tune", "configs/movielens_mf.yaml", "--workers", "2", "--dry-run")
    assert result.returncode == 0, result.stderr
    job = aip.HyperparameterTuningJob.from_json(result.stdout)
    study = yaml.safe_load((REPO / "configs" / "movielens_mf_tune.yaml").read_text())
    assert job.study_spec.metrics[0].metric_id == "rmse"
    assert job.study_spec.metrics[0].goal == aip.StudySpec.MetricSpec.GoalType.MINIMIZE
    assert [p.parameter_id for p in job.study_spec.parameters] == [p["id"] for p in study["parameters"]]
    assert job.max_trial_count == study["max_trial_count"]
    assert [p.replica_count for p in job.trial_job_spec.worker_pool_specs] == [1, 1]
    args = list(job.trial_job_spec.worker_pool_specs[0].python_package_spec.args)
    assert args[-2:] == ["--hypertune-metric", "rmse"]


def test_tune_parameter_ids_are_accepted_by_the_trainer():
    """Vertex appends --PARAMETER_ID=VALUE; trainer.task turns them into --set overrides."""
    from trainer import config as config_lib
    from trainer import task

    study = yaml.safe_load((REPO / "configs" / "movielens_mf_tune.yaml").read_text())
    trial = {"double": lambda p: p["min"], "discrete": lambda p: p["values"][0], "categorical": lambda p: p["values"][-1],
             "integer": lambda p: p["min"]}
    extra = [f"--{p['id']}={trial[p['type']](p)}" for p in study["parameters"]]
    args = task.parse_args(["--data", "d", "--job-dir", "j", *extra])
    config = config_lib.resolve(str(REPO / "configs" / "movielens_mf.yaml"), args.set)
    for parameter in study["parameters"]:
        section, key = parameter["id"].split(".")
        assert str(config[section][key]) == str(trial[parameter["type"]](parameter))


def test_bad_tune_spec_is_a_clear_error(tmp_path):
    spec = tmp_path / "tune.yaml"
    spec.write_text("metric: {id: rmse}\nparameters:\n  - {id: l2, type: double, min: 0, max: 1}\n")
    result = _run("tune", "configs/movielens_mf.yaml", "--study", str(spec), "--dry-run")
    assert result.returncode == 2
    assert "must be a trainer config key" in result.stderr and "Traceback" not in result.stderr


def test_deploy_dry_run_prints_upload_endpoint_and_deploy_requests(aip):
    result = _run("deploy", "gs://test-bucket/jobs/movielens-mf-1", "--dry-run", "--name", "mf")
    assert result.returncode == 0, result.stderr
    payload = json.loads(result.stdout)
    upload = aip.UploadModelRequest.from_json(json.dumps(payload["upload_model"]))
    assert upload.parent == "projects/test-project/locations/europe-west4"
    assert upload.model.artifact_uri == "gs://test-bucket/jobs/movielens-mf-1/model"
    assert "prediction/tf2-" in upload.model.container_spec.image_uri
    endpoint = aip.CreateEndpointRequest.from_json(json.dumps(payload["create_endpoint"]))
    assert endpoint.endpoint.display_name == "mf"
    deploy = aip.DeployModelRequest.from_json(json.dumps(payload["deploy_model"]))
    assert deploy.deployed_model.dedicated_resources.min_replica_count == 1
    assert dict(deploy.traffic_split) == {"0": 100}
    existing = json.loads(_run("deploy", "gs://b/x/export", "--endpoint", "42", "--dry-run").stdout)
    assert "create_endpoint" not in existing
    assert existing["deploy_model"]["endpoint"] == "projects/test-project/locations/europe-west4/endpoints/42"
    assert existing["upload_model"]["model"]["artifactUri"] == "gs://b/x/export"


def test_deploy_needs_a_gcs_model():
    result = _run("deploy", "/tmp/job", "--dry-run")
    assert result.returncode == 2 and "must be in Cloud Storage" in result.stderr


def test_predict_dry_run(aip, tmp_path):
    result = _run("predict", "--endpoint", "42", "--user", "1", "--item", "50", "--dry-run")
    assert result.returncode == 0, result.stderr
    request = aip.PredictRequest.from_json(result.stdout)
    assert request.endpoint.endswith("/endpoints/42")
    assert json.loads(result.stdout)["instances"] == [{"user_id": "1", "item_id": "50"}]
    instances = tmp_path / "instances.json"
    instances.write_text(json.dumps([{"user_id": 1, "item_id": 2}, {"user_id": "3", "item_id": "4"}]))
    result = _run("predict", "--endpoint", "42", "--instances", str(instances), "--dry-run")
    assert [i["user_id"] for i in json.loads(result.stdout)["instances"]] == ["1", "3"]


def test_preprocess_dry_run_prints_the_dataflow_command():
    result = _run("preprocess", "movielens", "--input", "gs://test-bucket/raw/u.data", "--dry-run",
                  "--", "--split", "random", "--num-shards", "8")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[1:3] == ["-m", "beam_pipelines.movielens"]
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--runner"] == "DataflowRunner"
    assert flags["--project"] == "test-project" and flags["--region"] == "europe-west4"
    assert flags["--setup_file"] == "./setup.py"
    assert flags["--temp_location"] == "gs://test-bucket/dataflow/temp"
    assert flags["--staging_location"] == "gs://test-bucket/dataflow/staging"
    assert flags["--job_name"].startswith("movielens-2")
    assert flags["--output"].startswith("gs://test-bucket/data/movielens-")
    assert argv[-4:] == ["--split", "random", "--num-shards", "8"]
    # The pipeline itself accepts these flags (argv parsing only, nothing runs).
    unknown = _run("preprocess", "nosuchdataset", "--input", "gs://x/y", "--dry-run")
    assert unknown.returncode == 2 and "unknown dataset 'nosuchdataset'" in unknown.stderr


@pytest.mark.parametrize("sub_args", [
    ["train", "configs/movielens_mf.yaml", "--dry-run"],
    ["tune", "configs/movielens_mf.yaml", "--dry-run"],
    ["preprocess", "movielens", "--input", "gs://x/u.data", "--dry-run"],
])
def test_missing_project_and_bucket_are_named(sub_args):
    # configs/cloud.yaml holds placeholders, which count as unset.
    result = _run(*sub_args, env=_env(GCP_PROJECT=None, GCS_BUCKET=None))
    assert result.returncode == 2
    assert "missing Google Cloud setting(s)" in result.stderr
    assert "set GCP_PROJECT" in result.stderr and "set GCS_BUCKET" in result.stderr
    assert "Traceback" not in result.stderr
    only_bucket = _run(*sub_args, env=_env(GCS_BUCKET=None))
    assert "set GCS_BUCKET" in only_bucket.stderr and "GCP_PROJECT" not in only_bucket.stderr


def test_missing_gcloud_is_named(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = _run("train", "configs/movielens_mf.yaml", env=_env(PATH=str(bin_dir)))
    assert result.returncode == 2
    assert "gcloud is not installed" in result.stderr


def test_missing_credentials_are_named(tmp_path):
    # A real submission with no credentials stops before uploading or sending anything.
    env = _env(GOOGLE_APPLICATION_CREDENTIALS=str(tmp_path / "none.json"), CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
               HOME=str(tmp_path))
    result = _run("deploy", "gs://test-bucket/jobs/x", env=env)
    assert result.returncode == 2
    assert "no Google Cloud credentials" in result.stderr and "GOOGLE_APPLICATION_CREDENTIALS" in result.stderr


def test_settings_file_and_environment_overrides(tmp_path):
    settings_file = tmp_path / "cloud.yaml"
    settings_file.write_text(yaml.safe_dump({
        "project": "from-file", "region": "us-east1", "bucket": "gs://file-bucket/", "service_account": "sa@x.iam",
        "images": {"train": "img-train", "serving": "img-serve"},
        "machine_types": {"train": "m-train", "serving": "m-serve", "dataflow": "m-df"},
    }))
    settings = vertex.load_settings(settings_file, {"GCP_REGION": "asia-east1", "VERTEX_TRAIN_IMAGE": "img-env"})
    assert settings["project"] == "from-file" and settings["region"] == "asia-east1"
    assert settings["bucket"] == "file-bucket" and settings["images"]["train"] == "img-env"
    spec = vertex.custom_job_spec(settings, package_uri="gs://p.tgz", args=["--x"], workers=3, base_output_dir="gs://o")
    assert spec.service_account == "sa@x.iam"
    assert [p.replica_count for p in spec.worker_pool_specs] == [1, 2]
    command = vertex.dataflow_command(settings, "movielens", "gs://in", "gs://out", job_name="j")
    assert command[command.index("--service_account_email") + 1] == "sa@x.iam"
    assert command[command.index("--machine_type") + 1] == "m-df"
    with pytest.raises(vertex.CloudError, match="workers must be >= 1"):
        vertex.custom_job_spec(settings, package_uri="gs://p", args=[], workers=0, base_output_dir="gs://o")


def test_hypertune_metric_file(tmp_path):
    from trainer import task

    path = tmp_path / "hp" / "output.metrics"
    env = {"CLOUD_ML_HP_METRIC_FILE": str(path), "CLOUD_ML_TRIAL_ID": "7"}
    assert task.report_hypertune_metric("rmse", 0.91, 300, env) == str(path)
    task.report_hypertune_metric("rmse", 0.9, 600, env)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["rmse"] for r in records] == ["0.91", "0.9"]
    assert records[1]["global_step"] == "600" and records[1]["trial"] == "7"
