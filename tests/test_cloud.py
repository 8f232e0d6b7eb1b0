"""run-cloud.sh cloud subcommands offline: dry runs print requests that parse, clear errors, help.

Nothing here talks to Google Cloud: every run is a --dry-run, fails before
sending, or (build-image) runs a fake gcloud. The printed JSON is parsed back
with the aiplatform_v1 types. The training container (cloud/container) cannot
be built here (no Docker Hub, no Docker daemon); its files are checked as text.
"""
from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cloud import vertex

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run-cloud.sh"
SUBCOMMANDS = ["local", "test", "preprocess", "build-image", "train", "tune", "deploy", "predict"]
CONTAINER = REPO / "cloud" / "container"
IMAGE = "europe-west4-docker.pkg.dev/test-project/recsys/trainer:test"


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in vertex.ENV_OVERRIDES.values() and k != "CLOUD_CONFIG"}
    env.update({"GCP_PROJECT": "test-project", "GCS_BUCKET": "test-bucket", "GCP_REGION": "europe-west4",
                "VERTEX_TRAIN_CONTAINER": IMAGE})
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
    """Container mode (the default): every pool runs our image with the trainer args; no package."""
    result = _run("train", "configs/movielens_mf.yaml", "--workers", "4", "--dry-run",
                  "--data", "gs://test-bucket/data/ml-100k", "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    job = aip.CustomJob.from_json(result.stdout)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 3]
    base = job.job_spec.base_output_directory.output_uri_prefix
    assert base.startswith("gs://test-bucket/jobs/movielens-mf-")
    for pool in pools:
        assert "python_package_spec" not in pool and "container_spec" in pool
        assert pool.container_spec.image_uri == IMAGE
        assert list(pool.container_spec.command) == []  # the image's ENTRYPOINT (python -m trainer.task) runs
        args = list(pool.container_spec.args)
        assert dict(zip(args[::2], args[1::2])) == {
            "--config": f"{base}/config.yaml", "--data": "gs://test-bucket/data/ml-100k", "--job-dir": base,
            "--set": "train.epochs=3",
        }
    assert all("pythonPackageSpec" not in p for p in json.loads(result.stdout)["jobSpec"]["workerPoolSpecs"])
    assert "projects/test-project/locations/europe-west4/customJobs" in result.stderr
    assert f"container mode: image {IMAGE}" in result.stderr
    # Only the config is uploaded: no sdist is built in this mode.
    assert [line for line in result.stderr.splitlines() if "would upload" in line] == [
        f"[vertex] would upload configs/movielens_mf.yaml -> {base}/config.yaml"]


def test_train_python_package_mode_prints_the_prebuilt_image_request(aip):
    result = _run("train", "configs/movielens_mf.yaml", "--workers", "4", "--dry-run", "--python-package",
                  "--data", "gs://test-bucket/data/ml-100k", "--set", "train.epochs=3")
    assert result.returncode == 0, result.stderr
    job = aip.CustomJob.from_json(result.stdout)
    pools = job.job_spec.worker_pool_specs
    assert [p.replica_count for p in pools] == [1, 3]
    for pool in pools:
        assert "container_spec" not in pool
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
    assert "would upload <sdist of setup.py> -> gs://test-bucket/packages/" in result.stderr
    assert "is Python 3.10" in result.stderr  # the py310 prebuilt image is named as the problem


def test_train_mode_comes_from_the_settings_and_the_flags_win(aip, tmp_path):
    settings = yaml.safe_load((REPO / "configs" / "cloud.yaml").read_text())
    assert settings["train_mode"] == "container"  # the mode that installs with the pins
    settings["train_mode"] = "python_package"
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(settings))
    base = ["train", "configs/movielens_mf.yaml", "--dry-run", "--cloud-config", str(path)]
    (pool,) = aip.CustomJob.from_json(_run(*base).stdout).job_spec.worker_pool_specs
    assert pool.python_package_spec.python_module == "trainer.task" and "container_spec" not in pool
    other = "us-central1-docker.pkg.dev/test-project/recsys/trainer:v2"
    (pool,) = aip.CustomJob.from_json(_run(*base, "--container-image", other).stdout).job_spec.worker_pool_specs
    assert pool.container_spec.image_uri == other and "python_package_spec" not in pool
    both = _run(*base, "--container-image", other, "--python-package")
    assert both.returncode == 2 and "not allowed with" in both.stderr
    settings["train_mode"] = "docker"
    path.write_text(yaml.safe_dump(settings))
    bad = _run(*base)
    assert bad.returncode == 2 and "train_mode 'docker'" in bad.stderr and "Traceback" not in bad.stderr


def test_missing_container_image_is_named(aip):
    env = _env(VERTEX_TRAIN_CONTAINER=None)  # configs/cloud.yaml holds the your-project-id placeholder
    for sub in ("train", "tune"):
        result = _run(sub, "configs/movielens_mf.yaml", "--dry-run", env=env)
        assert result.returncode == 2
        assert "images.train_container (set VERTEX_TRAIN_CONTAINER" in result.stderr
        assert "build-image" in result.stderr and "Traceback" not in result.stderr
    flag = _run("train", "configs/movielens_mf.yaml", "--dry-run", "--container-image", IMAGE, env=env)
    assert flag.returncode == 0, flag.stderr
    placeholder = _run("train", "configs/movielens_mf.yaml", "--dry-run",
                       "--container-image", "us-docker.pkg.dev/your-project/r/trainer", env=env)
    assert placeholder.returncode == 2 and "placeholder" in placeholder.stderr
    assert _run("train", "configs/movielens_mf.yaml", "--dry-run", "--python-package", env=env).returncode == 0


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
    for pool in job.trial_job_spec.worker_pool_specs:  # container mode, the default
        assert pool.container_spec.image_uri == IMAGE and "python_package_spec" not in pool
        args = list(pool.container_spec.args)
        assert args[:2] == ["--config", f"{job.trial_job_spec.base_output_directory.output_uri_prefix}/config.yaml"]
        assert args[-2:] == ["--hypertune-metric", "rmse"]
    assert "hyperparameterTuningJobs" in result.stderr
    package = _run("tune", "configs/movielens_mf.yaml", "--dry-run", "--python-package")
    assert package.returncode == 0, package.stderr
    (pool,) = aip.HyperparameterTuningJob.from_json(package.stdout).trial_job_spec.worker_pool_specs
    assert list(pool.python_package_spec.args)[-2:] == ["--hypertune-metric", "rmse"]


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


@pytest.mark.parametrize("sub_args", [["train", "configs/movielens_mf.yaml"], ["build-image", "--tag", IMAGE]])
def test_missing_gcloud_is_named(tmp_path, sub_args):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    result = _run(*sub_args, env=_env(PATH=str(bin_dir)))
    assert result.returncode == 2
    assert "gcloud is not installed" in result.stderr


# --- build-image and the training container ----------------------------------------------------

def test_build_image_dry_run_prints_gcloud_builds_submit():
    result = _run("build-image", "--tag", "us-central1-docker.pkg.dev/test-project/recsys/trainer:v1", "--dry-run")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout.strip())
    assert argv[:3] == ["gcloud", "builds", "submit"] and argv[-1] == "."
    flags = dict(zip(argv[3:-1:2], argv[4:-1:2]))
    assert flags == {
        "--config": "cloud/container/cloudbuild.yaml",
        "--substitutions": "_IMAGE=us-central1-docker.pkg.dev/test-project/recsys/trainer:v1",
        "--ignore-file": "cloud/container/gcloudignore",
        "--project": "test-project",
    }
    assert (REPO / flags["--config"]).is_file() and (REPO / flags["--ignore-file"]).is_file()
    # Without --tag: the configured container image (the one train uses).
    default = _run("build-image", "--dry-run")
    assert f"--substitutions _IMAGE={IMAGE} " in default.stdout
    missing = _run("build-image", "--dry-run", env=_env(VERTEX_TRAIN_CONTAINER=None))
    assert missing.returncode == 2 and "VERTEX_TRAIN_CONTAINER" in missing.stderr and "--tag" in missing.stderr
    no_project = _run("build-image", "--dry-run", env=_env(GCP_PROJECT=None))
    assert no_project.returncode == 2 and "set GCP_PROJECT" in no_project.stderr
    assert "Traceback" not in missing.stderr + no_project.stderr


def test_build_image_runs_gcloud_from_the_repo_root(tmp_path):
    """Without --dry-run the same command runs (a fake gcloud records it; nothing is sent)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "gcloud.txt"
    fake = bin_dir / "gcloud"
    fake.write_text(f'#!/bin/sh\n{{ pwd; for a in "$@"; do echo "$a"; done; }} > {shlex.quote(str(record))}\n')
    fake.chmod(0o755)
    result = _run("build-image", "--tag", IMAGE, env=_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}"))
    assert result.returncode == 0, result.stderr
    cwd, *argv = record.read_text().splitlines()
    assert Path(cwd) == REPO
    assert argv == ["builds", "submit", "--config", "cloud/container/cloudbuild.yaml", "--substitutions",
                    f"_IMAGE={IMAGE}", "--ignore-file", "cloud/container/gcloudignore", "--project", "test-project", "."]
    assert f"pushed {IMAGE}" in result.stderr


def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of cloud/container/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", (CONTAINER / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def _copy_sources() -> list[str]:
    sources = []
    for instruction, rest in _dockerfile():
        if instruction == "COPY":
            parts = json.loads(rest) if rest.startswith("[") else [p for p in shlex.split(rest) if not p.startswith("--")]
            sources += [part.removeprefix("./").rstrip("/") for part in parts[:-1]]
    return sources


def _setup_kwargs(monkeypatch) -> dict:
    import setuptools

    captured = {}
    monkeypatch.setattr(setuptools, "setup", lambda **kwargs: captured.update(kwargs))
    monkeypatch.chdir(REPO)
    runpy.run_path(str(REPO / "setup.py"), run_name="__main__")
    return captured


def test_dockerfile_copies_every_package_of_setup_py(monkeypatch):
    """A package added to setup.py's find_packages must be copied into the image too."""
    from packaging.specifiers import SpecifierSet

    setup = _setup_kwargs(monkeypatch)
    top_level = {name.split(".")[0] for name in setup["packages"]}
    assert {"beam_pipelines", "schemas", "trainer", "cloud"} <= top_level
    assert "tools" not in top_level  # developer scripts, not installed
    sources = _copy_sources()
    if "." not in sources:  # the whole context would hold every package
        assert top_level <= set(sources), f"not copied into the image: {sorted(top_level - set(sources))}"
        assert "setup.py" in sources
    for source in sources:
        assert (REPO / source).exists(), f"COPY {source}: no such path in the repo"
    steps = _dockerfile()
    (base_arg,) = [rest for instruction, rest in steps if instruction == "ARG" and rest.startswith("BASE_IMAGE=")]
    version = re.fullmatch(r"BASE_IMAGE=python:(\d+\.\d+)[-\w.]*", base_arg).group(1)
    assert version in SpecifierSet(setup["python_requires"]), f"base image Python {version} vs {setup['python_requires']}"
    assert ("FROM", "${BASE_IMAGE}") in steps
    assert any(i == "RUN" and "pip install --no-cache-dir ." in rest for i, rest in steps)
    assert any(i == "ENV" and "TF_USE_LEGACY_KERAS=1" in rest.split() for i, rest in steps)
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "-m", vertex.TRAINER_MODULE]


def test_cloudbuild_builds_the_dockerfile_and_pushes_the_image():
    build = yaml.safe_load((CONTAINER / "cloudbuild.yaml").read_text())
    (step,) = build["steps"]
    args = step["args"]
    assert step["name"] == "gcr.io/cloud-builders/docker" and args[0] == "build" and args[-1] == "."
    assert args[args.index("-f") + 1] == "cloud/container/Dockerfile"
    assert args[args.index("-t") + 1] == "${_IMAGE}"
    assert build["images"] == ["${_IMAGE}"] and "_IMAGE" not in build.get("substitutions", {})
    (base_arg,) = [rest for i, rest in _dockerfile() if i == "ARG" and rest.startswith("BASE_IMAGE=")]
    assert f"BASE_IMAGE={build['substitutions']['_BASE_IMAGE']}" == base_arg


def test_build_upload_is_an_allow_list_of_what_the_dockerfile_copies():
    patterns = [line.strip() for line in (CONTAINER / "gcloudignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "/*"  # everything at the top level is left out ...
    for source in _copy_sources():  # ... except what the Dockerfile copies
        assert f"!/{source}{'/' if (REPO / source).is_dir() else ''}" in patterns, source
    gcloud = shutil.which("gcloud")
    if not gcloud:
        pytest.skip("gcloud is not installed: the upload list itself is not checked")
    # gcloud's own ignore-file logic, as gcloud builds submit applies it (nothing is sent).
    sdk_lib = Path(os.path.realpath(gcloud)).parents[1] / "lib"
    script = (
        f"import sys; sys.path[:0] = [{str(sdk_lib)!r}, {str(sdk_lib / 'third_party')!r}]\n"
        "from googlecloudsdk.command_lib.util import gcloudignore\n"
        "chooser = gcloudignore.GetFileChooserForDir('.', ignore_file='cloud/container/gcloudignore', write_on_disk=False)\n"
        "print('\\n'.join(chooser.GetIncludedFiles('.', include_dirs=False)))\n"
    )
    listed = subprocess.run([sys.executable, "-I", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    if listed.returncode != 0:
        pytest.skip(f"gcloud's gcloudignore module did not load: {listed.stderr.strip().splitlines()[-1:]}")
    uploaded = set(listed.stdout.split())
    tracked = subprocess.run(["git", "ls-files", *_copy_sources()], cwd=REPO, capture_output=True, text=True, check=True)
    assert set(tracked.stdout.split()) <= uploaded
    assert not [f for f in uploaded if f.split("/")[0] in (".venv", ".git", "runs", "data", "tests") or "__pycache__" in f]


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
    settings = vertex.load_settings(settings_file, {"GCP_REGION": "asia-east1", "VERTEX_TRAIN_IMAGE": "img-env",
                                                    "VERTEX_TRAIN_CONTAINER": "container-env"})
    assert settings["project"] == "from-file" and settings["region"] == "asia-east1"
    assert settings["bucket"] == "file-bucket" and settings["images"]["train"] == "img-env"
    assert settings["images"]["train_container"] == "container-env"
    assert vertex.train_mode(settings) == ("container", "container-env")  # no train_mode: the default
    spec = vertex.custom_job_spec(settings, package_uri="gs://p.tgz", args=["--x"], workers=3, base_output_dir="gs://o")
    assert spec.service_account == "sa@x.iam"
    assert [p.replica_count for p in spec.worker_pool_specs] == [1, 2]
    spec = vertex.custom_job_spec(settings, container_image="img-c", args=["--x"], workers=2, base_output_dir="gs://o")
    assert [(p.container_spec.image_uri, list(p.container_spec.args)) for p in spec.worker_pool_specs] == [
        ("img-c", ["--x"]), ("img-c", ["--x"])]
    for placeholder in ("", "your-project-id", "us-central1-docker.pkg.dev/your-project-id/recsys/trainer:latest",
                        "sa@your-project.iam.gserviceaccount.com"):
        assert vertex.is_placeholder(placeholder), placeholder
    assert not vertex.is_placeholder("us-central1-docker.pkg.dev/my-project/recsys/trainer:latest")
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
