#!/usr/bin/env bash
# The operator's front door: the same steps locally (DirectRunner + local
# TensorFlow) and, later, on Dataflow + Vertex AI.
#
#   ./run-cloud.sh local [options]   pipeline + training on ML-100K, locally
#   ./run-cloud.sh test [pytest args] the test suite (what .ci/run calls)
#   ./run-cloud.sh preprocess|build-image|train|tune|deploy|predict|cleanup ... [--dry-run]
#                                     Dataflow, Cloud Build and Vertex AI (settings: configs/cloud.yaml)
#
# Every subcommand takes --help.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="$VENV/bin/python"

usage() {
  cat <<'EOF'
usage: ./run-cloud.sh SUBCOMMAND [options]

subcommands:
  local       run the MovieLens pipeline and MF training on this machine
  test        run the test suite (creates or reuses .venv)
  preprocess  run a Beam pipeline on Dataflow
  build-image build the training (or, --serving, the serving) container with Cloud Build and push it
  train       train on Vertex AI (CustomJob: 1 chief + N-1 workers), or --local: the same here
  tune        hyperparameter tuning on Vertex AI (HyperparameterTuningJob), or --local: an Optuna study here
  deploy      upload a job's SavedModel as a Vertex Model and deploy it to an endpoint
  predict     send raw (user_id, item_id) instances to an endpoint
  cleanup     delete the endpoints, models and jobs this project created (label app=recsys-pipelines)

Cloud subcommands read configs/cloud.yaml (or $CLOUD_CONFIG); the environment
wins: GCP_PROJECT, GCP_REGION, GCS_BUCKET, GCP_SERVICE_ACCOUNT,
VERTEX_TRAIN_CONTAINER, VERTEX_TRAIN_IMAGE, VERTEX_SERVING_IMAGE,
VERTEX_TENSORBOARD. Each takes --dry-run, which prints the exact request
(command line or Vertex AI JSON) and sends nothing.

Run './run-cloud.sh SUBCOMMAND --help' for the options of one subcommand.
EOF
}

log() { printf '[run-cloud] %s\n' "$*" >&2; }
die() { printf '[run-cloud] error: %s\n' "$*" >&2; exit 2; }

# Creates .venv when absent and (re)installs the package when setup.py changed.
ensure_venv() {
  if [[ ! -x "$PYTHON" ]]; then
    command -v python3.11 >/dev/null 2>&1 && base=python3.11 || base=python3
    "$base" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
      || die "Python 3.11 is required (found $("$base" --version 2>&1))"
    log "creating $VENV"
    "$base" -m venv "$VENV"
  fi
  local stamp
  stamp="$VENV/.installed-$(sha256sum "$ROOT/setup.py" | cut -c1-16)"
  if [[ ! -f "$stamp" ]]; then
    log "installing the package and its dependencies into $VENV (under a minute the first time)"
    # uv resolves to the same versions as pip here and installs them in ~20 s instead of ~90 s
    # (measured on this project's pins); pip stays the fallback.
    if "$PYTHON" -m pip install --quiet uv; then
      "$PYTHON" -m uv pip install --python "$PYTHON" --quiet -e "${ROOT}[test]"
    else
      "$PYTHON" -m pip install --quiet --upgrade pip
      "$PYTHON" -m pip install --quiet -e "${ROOT}[test]"
    fi
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

# A local directory that holds the datasets unpacked (used when offline).
default_mirror() {
  if [[ -n "${MOVIELENS_MIRROR:-}" ]]; then
    printf '%s' "$MOVIELENS_MIRROR"
  elif [[ -d "$ROOT/../shared/data" ]]; then
    (cd "$ROOT/../shared/data" && pwd)
  fi
}

cmd_local() {
  local work="$ROOT/runs/local" config="$ROOT/configs/movielens_bayesian_mf.yaml" fold="u1"
  local -a sets=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help)
        cat <<'EOF'
usage: ./run-cloud.sh local [--work DIR] [--config YAML] [--fold u1..u5] [--set KEY=VALUE ...]

Creates .venv if needed, fetches ML-100K (official URL, or the mirror in
$MOVIELENS_MIRROR / ../shared/data when present), runs
beam_pipelines.movielens on the canonical FOLD.base/FOLD.test split with the
DirectRunner (valid: a seeded 10% of FOLD.base), trains (Bayesian) MF with
trainer.task (chosen on valid, refit on FOLD.base, FOLD.test only reports), and
prints the metrics and where the outputs are.

  --work DIR     where datasets, pipeline output and the job go (default runs/local)
  --config YAML  trainer config (default configs/movielens_bayesian_mf.yaml;
                 configs/movielens_mf.yaml is the SGD MF)
  --fold NAME    canonical split u1..u5, ua or ub (default u1)
  --set K=V      trainer override, repeatable (e.g. --set train.epochs=2)
EOF
        return 0 ;;
      --work) work="$2"; shift 2 ;;
      --config) config="$2"; shift 2 ;;
      --fold) fold="$2"; shift 2 ;;
      --set) sets+=(--set "$2"); shift 2 ;;
      *) die "local: unknown option $1 (see --help)" ;;
    esac
  done
  ensure_venv
  local mirror
  mirror="$(default_mirror)"
  local started=$SECONDS
  log "fetching ml-100k${mirror:+ (mirror: $mirror)}"
  local ratings
  ratings="$("$PYTHON" -m rawdata.registry fetch ml-100k --dest "$work/datasets" ${mirror:+--mirror "$mirror"} | tail -n 1)"
  local dataset_dir
  dataset_dir="$(dirname "$ratings")"
  local data="$work/data/ml-100k-$fold" job="$work/jobs/mf-ml-100k-$fold"
  log "pipeline: $dataset_dir/$fold.base + $fold.test -> $data"
  "$PYTHON" -m beam_pipelines.movielens --input "$dataset_dir/$fold.base" \
    --test-input "$dataset_dir/$fold.test" --split given --output "$data"
  log "training: $config -> $job (the trainer prints the metrics and every output it wrote)"
  "$PYTHON" -m trainer.task --config "$config" --data "$data" --job-dir "$job" ${sets[@]+"${sets[@]}"}
  log "done in $((SECONDS - started)) s"
  cat <<EOF
pipeline output : $data  (dataset.json, train/, valid/, test/, rejected/, transform_fn/)
job             : $job
EOF
}

cmd_test() {
  if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    cat <<'EOF'
usage: ./run-cloud.sh test [PYTEST ARGS]

Creates or reuses .venv, then runs pytest (tests/). Tests that need the real
datasets in ../shared/data skip when it is absent. Exit code 5 (no tests
collected) is reported as a failure.
EOF
    return 0
  fi
  ensure_venv
  cd "$ROOT"
  local rc=0
  "$PYTHON" -m pytest "$@" || rc=$?
  if [[ $rc -eq 5 ]]; then
    log "pytest collected no tests: failing"
    return 1
  fi
  return "$rc"
}

# shellcheck disable=SC2016  # literal $CLOUD_CONFIG in help text
CLOUD_SETTINGS_HELP='Settings: configs/cloud.yaml (or $CLOUD_CONFIG); environment overrides
GCP_PROJECT, GCP_REGION, GCS_BUCKET, GCP_SERVICE_ACCOUNT, VERTEX_TRAIN_CONTAINER,
VERTEX_TRAIN_IMAGE, VERTEX_SERVING_IMAGE, VERTEX_TENSORBOARD. Placeholder values
("your-...", also inside a URI) count as unset. Every resource created is
labelled app=recsys-pipelines and job=NAME (see cleanup).

  --dry-run            print the exact request and send nothing (no gcloud or credentials needed)
  --cloud-config YAML  another settings file'

cloud_help() {
  case "$1" in
    preprocess) cat <<'EOF'
usage: ./run-cloud.sh preprocess DATASET [--input GCS_PATH] [--name NAME | --output GCS_DIR] [--dry-run]
                                 [-- PIPELINE FLAGS]

Runs python -m beam_pipelines.DATASET on Dataflow (DataflowRunner, workers on
our image --sdk_container_image images.dataflow_worker when it is set (build it:
build-image --dataflow), else --setup_file ./setup.py; temp/staging under
gs://BUCKET/dataflow/, job name DATASET-NAME, labels app=recsys-pipelines,
job=JOB NAME). To check the job graph without submitting: -- --dry_run=True.
Output: gs://BUCKET/data/DATASET/NAME (NAME defaults to a timestamp). Once the
pipeline succeeded, that path is written to gs://BUCKET/data/DATASET/LATEST,
which train and tune read when they get no --data (the dry run prints both).
Flags after -- go to the pipeline unchanged (e.g. -- --split random
--test-fraction 0.1 --num-shards 16; lastfm takes its inputs there:
-- --edges gs://... --targets gs://... --features gs://...).

  --input GCS_PATH   the movielens ratings file or glob
  --name NAME        the output's name under gs://BUCKET/data/DATASET/
  --output GCS_DIR   write elsewhere (LATEST still records it)
EOF
      ;;
    build-image) cat <<'EOF'
usage: ./run-cloud.sh build-image [--serving | --dataflow] [--tag URI] [--dry-run]

Builds a container with Cloud Build and pushes it to URI, from the repo root:
  gcloud builds submit --config DIR/cloudbuild.yaml \
      --substitutions _IMAGE=URI --ignore-file DIR/gcloudignore \
      --project PROJECT .
  DIR=cloud/container          the training image (default): python:3.11-slim +
                               pip install . , entry point python -m trainer.task;
                               URI defaults to images.train_container / $VERTEX_TRAIN_CONTAINER.
  DIR=cloud/serving_container  with --serving, the prediction server deploy uses:
                               python:3.11-slim + TF 2.21, tf-keras, TF-GNN (the
                               training pins) + server.py (port 8080, /health,
                               /predict); URI defaults to images.serving / $VERTEX_SERVING_IMAGE.
  --dataflow                   the Dataflow worker image: --config
                               cloud/container/cloudbuild.dataflow.yaml (Beam's
                               python3.11 SDK image at the pinned Beam + pip install .),
                               the training image's ignore file; URI defaults to
                               images.dataflow_worker / $DATAFLOW_WORKER_IMAGE. Once
                               set there, preprocess runs workers on it
                               (--sdk_container_image) instead of --setup_file.
The ignore file uploads only what the Dockerfile copies. URI is an Artifact
Registry path such as us-central1-docker.pkg.dev/PROJECT/recsys/trainer:latest
(create the repository once: gcloud artifacts repositories create recsys
--repository-format=docker --location=us-central1). Needs gcloud, logged in
(gcloud auth login), and GCP_PROJECT. Train with the training image: set
images.train_container or VERTEX_TRAIN_CONTAINER, or pass --container-image.

  --serving            build the serving image instead
  --dataflow           build the Dataflow worker image instead
  --tag URI            the image to build and push
EOF
      ;;
    train) cat <<'EOF'
usage: ./run-cloud.sh train CONFIG [--data GCS_DIR|NAME] [--dataset DATASET] [--workers N] [--machine-type T]
                        [--accelerator A] [--accelerator-count K] [--timeout DURATION] [--set KEY=VALUE ...]
                        [--name NAME] [--container-image URI | --python-package] [--dry-run]
       ./run-cloud.sh train CONFIG --local --data DIR --job-dir DIR [--workers N] [--set KEY=VALUE ...] [--dry-run]

Uploads CONFIG to gs://BUCKET/jobs/NAME/config.yaml and submits a Vertex AI
CustomJob running python -m trainer.task: worker pool 0 = the chief (1 replica),
pool 1 = N-1 workers (MultiWorkerMirroredStrategy). base_output_directory is
gs://BUCKET/jobs/NAME, so Vertex sets AIP_MODEL_DIR (the export goes to
.../model), AIP_CHECKPOINT_DIR and AIP_TENSORBOARD_LOG_DIR (.../logs).
scheduling: the whole job restarts when a worker restarts, and stops after
--timeout (default scheduling.timeout in the settings, else 24h). With
tensorboard set (VERTEX_TENSORBOARD) the logs stream to Vertex AI TensorBoard;
that needs service_account (GCP_SERVICE_ACCOUNT). The job is labelled
app=recsys-pipelines, job=NAME.

Data: --data gs://... as given; --data NAME is gs://BUCKET/data/DATASET/NAME;
without --data, the path in gs://BUCKET/data/DATASET/LATEST (written by the
last successful preprocess DATASET; a dry run shows {gs://.../LATEST} instead
of reading it). DATASET is CONFIG's name up to the first '_'
(movielens_mf -> movielens, lastfm_hetero_gnn -> lastfm) or --dataset. The data
needs at least N train shards.

Two modes (train_mode in the settings; the flags win):
  container (default)  every pool runs our image (containerSpec: imageUri +
                       the trainer args); no package is built or uploaded.
                       Build the image first with ./run-cloud.sh build-image.
  python_package       builds setup.py's sdist, uploads it, and runs it in the
                       Vertex prebuilt image images.train (pythonPackageSpec).
                       Needs a prebuilt image with Python 3.11; Vertex's prebuilt
                       TF training images are Python 3.10 (newest tf-cpu.2-17.py310),
                       where the pinned TF 2.21 set cannot install.

--local runs the same entry point on this machine (what gcloud ai custom-jobs
local-run would, without Docker): python -m trainer.task with exactly the
containerSpec.args of the Vertex job, gs://BUCKET/jobs/NAME replaced by the
--job-dir DIR (CONFIG is copied to DIR/config.yaml) and --data DIR a local
pipeline output, in the environment the job would see: the image's ENV
(TF_USE_LEGACY_KERAS=1 ...) and AIP_MODEL_DIR=DIR/model/,
AIP_CHECKPOINT_DIR=DIR/checkpoints/, AIP_TENSORBOARD_LOG_DIR=DIR/logs/. With
--workers N > 1 it runs python -m trainer.task --local-workers N (one chief and
N-1 workers on 127.0.0.1, TF_CONFIG as on Vertex). --dry-run prints the command
and environment as JSON. Needs no gcloud, credentials or settings.

  --container-image URI  container mode with this image (instead of images.train_container)
  --python-package       python-package mode
  --timeout DURATION     e.g. 90m, 6h, 2d
EOF
      ;;
    tune) cat <<'EOF'
usage: ./run-cloud.sh tune CONFIG [--study TUNE_YAML] [--data GCS_DIR|NAME] [--dataset DATASET] [--workers N]
                       [--machine-type T] [--accelerator A] [--timeout DURATION] [--set KEY=VALUE ...]
                       [--name NAME] [--container-image URI | --python-package] [--track NAME] [--dry-run]
       ./run-cloud.sh tune CONFIG --local --data DIR [--study TUNE_YAML] [--trials N] [--parallel K]
                       [--study-dir DIR] [--set KEY=VALUE ...] [--track NAME] [--no-final] [--dry-run]

Submits a Vertex AI HyperparameterTuningJob: each trial is the train job above
(same two modes, data resolution, scheduling, TensorBoard and flags: see
./run-cloud.sh train --help) with the trial's values appended as
--hparams.KEY=VALUE / --train.KEY=VALUE.
Every trial writes to its own directory, gs://BUCKET/jobs/NAME/trials/<trial id>/:
the trial spec's base_output_directory is gs://BUCKET/jobs/NAME/trials, so
Vertex sets AIP_MODEL_DIR=.../trials/<trial id>/model/ (and checkpoints/,
logs/), and the trainer, given --job-dir gs://BUCKET/jobs/NAME, writes the rest
under trials/$CLOUD_ML_TRIAL_ID/. The dry run prints every trial's directory.
The search space (metric, algorithm, trial counts, parameters of type double,
integer, discrete or categorical) comes from TUNE_YAML (default CONFIG_tune.yaml
beside CONFIG, e.g. configs/movielens_mf_tune.yaml; format: cloud/search_space.py),
not from the trainer config. The metric must be one the trainer reports on the
valid split for CONFIG's model (trainer.tasks.METRICS: rmse, mae for rating
models; hr@K, ndcg@K, mrr for ranking; accuracy, macro_f1 for the GNN; ...). The
trainer reports it after every epoch with --hypertune-metric (cloudml-hypertune
file), and unless CONFIG or --set names train.monitor it also chooses each
trial's epoch. --track vertex logs every trial to Vertex AI Experiments
(VERTEX_EXPERIMENT, default recsys-pipelines; per-epoch curves in the settings'
tensorboard), --track mlflow to the MLflow server of MLFLOW_TRACKING_URI.

--local runs the same space on this machine (python -m workflows.tune): an
Optuna study (TPE for Vertex's default algorithm, random or grid search as
named) in --study-dir (default runs/tune/<config name>; SQLite study.db, so the
same command resumes a killed study), every trial the one experiment in
STUDY/trials/<n>/, bad trials pruned by the median rule on their per-epoch
valid value; then results.csv, plots/objective.png, best.yaml (the best
trial's config) and a final run of it in STUDY/final/ that reports test
(unless --no-final), and summary.json. Needs no gcloud, credentials or settings.

  --trials N       trials in all (default: the space's max_trial_count)
  --parallel K     K trials at once, each in its own process (default 1)
EOF
      ;;
    deploy) cat <<'EOF'
usage: ./run-cloud.sh deploy JOB_DIR [--endpoint ID] [--machine-type T] [--name NAME] [--dry-run]

Uploads the job's SavedModel (JOB_DIR/model for a Vertex job or a tuning trial,
gs://BUCKET/jobs/NAME/trials/<trial id>; JOB_DIR/export otherwise, or JOB_DIR
itself when it ends in /model or /export; must be gs://) as a Vertex Model
served by our prediction server images.serving (build it with
./run-cloud.sh build-image --serving; containerSpec: port 8080, predictRoute
/predict, healthRoute /health), creates an endpoint (unless --endpoint) and
deploys the model on it. Model and endpoint are labelled app=recsys-pipelines,
job=NAME. The dry run prints the UploadModel, CreateEndpoint and DeployModel
requests.
EOF
      ;;
    predict) cat <<'EOF'
usage: ./run-cloud.sh predict --endpoint ID (--instances FILE | --user U --item I [--user U --item I ...]) [--dry-run]

Sends raw ids to a deployed endpoint: instances are {"user_id": ..., "item_id": ...}
(FILE holds a JSON list of them); prints the predictions (rating, known_user, known_item).
EOF
      ;;
    cleanup) cat <<'EOF'
usage: ./run-cloud.sh cleanup [--job NAME] [--cancel-running] [--dry-run [--listed FILE]] [--yes]

Deletes what this project created on Vertex AI, identified by the label
app=recsys-pipelines that every train/tune/deploy request carries, never
anything else: lists endpoints, models, hyperparameter tuning jobs and custom
jobs with the filter labels.app=recsys-pipelines (and labels.job=NAME with
--job), checks the label on each again, then undeploys every deployed model of
each labelled endpoint and deletes the endpoint, deletes the labelled models
(unless an endpoint cleanup keeps still serves one) and the labelled jobs that
have finished. Running jobs are left alone unless --cancel-running (cancels
them; run cleanup again to delete them). Cloud Storage is not touched.

  --dry-run        print the List requests and send nothing
  --listed FILE    with --dry-run: also print the Undeploy/Delete requests for
                   these listed resources (JSON {"endpoints": [...], "models": [...],
                   "custom_jobs": [...], "hyperparameter_tuning_jobs": [...]})
  --yes            a real run sends the requests only with --yes (without it
                   it lists, prints the plan and stops)
EOF
      ;;
  esac
  printf '\n%s\n' "$CLOUD_SETTINGS_HELP"
}

# preprocess | build-image | train | tune | deploy | predict | cleanup: arguments go to
# cloud/vertex.py, which builds the requests; this checks the prerequisites of a real submission.
cmd_cloud() {
  local sub="$1"
  shift
  local need_gcloud=1 arg
  for arg in "$@"; do
    case "$arg" in
      -h|--help) cloud_help "$sub"; return 0 ;;
      --dry-run) need_gcloud=0 ;;
      --local) if [[ "$sub" == train || "$sub" == tune ]]; then need_gcloud=0; fi ;;  # runs here
      --) break ;;
    esac
  done
  if [[ ! -x "$PYTHON" ]]; then
    ensure_venv
  fi
  if [[ $need_gcloud -eq 1 ]]; then
    command -v gcloud >/dev/null 2>&1 \
      || die "gcloud is not installed or not on PATH: install the Google Cloud CLI (or use --dry-run)"
  fi
  cd "$ROOT"
  "$PYTHON" -m cloud.vertex "$sub" "$@"
}

main() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    local) cmd_local "$@" ;;
    test) cmd_test "$@" ;;
    preprocess|build-image|train|tune|deploy|predict|cleanup) cmd_cloud "$sub" "$@" ;;
    -h|--help|help) usage ;;
    "") usage; exit 2 ;;
    *) usage >&2; die "unknown subcommand $sub" ;;
  esac
}

main "$@"
