#!/usr/bin/env bash
# The operator's front door: the same steps locally (DirectRunner + local
# TensorFlow) and, later, on Dataflow + Vertex AI.
#
#   ./run-cloud.sh local [options]   pipeline + training on ML-100K, locally
#   ./run-cloud.sh test [pytest args] the test suite (what .ci/run calls)
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
  local   run the MovieLens pipeline and MF training on this machine
  test    run the test suite (creates or reuses .venv)

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
    log "installing the package and its dependencies into $VENV (about 2 minutes the first time)"
    "$PYTHON" -m pip install --quiet --upgrade pip
    "$PYTHON" -m pip install --quiet -e "${ROOT}[test]"
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
  local work="$ROOT/runs/local" config="$ROOT/configs/movielens_mf.yaml" fold="u1"
  local -a sets=()
  while [[ $# -gt 0 ]]; do
    case "$1" in
      -h|--help)
        cat <<'EOF'
usage: ./run-cloud.sh local [--work DIR] [--config YAML] [--fold u1..u5] [--set KEY=VALUE ...]

Creates .venv if needed, fetches ML-100K (official URL, or the mirror in
$MOVIELENS_MIRROR / ../shared/data when present), runs
beam_pipelines.movielens on the canonical FOLD.base/FOLD.test split with the
DirectRunner, trains MF with trainer.task, and prints the metrics and where
the outputs are.

  --work DIR     where datasets, pipeline output and the job go (default runs/local)
  --config YAML  trainer config (default configs/movielens_mf.yaml)
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
  ratings="$("$PYTHON" -m tools.datasets fetch ml-100k --dest "$work/datasets" ${mirror:+--mirror "$mirror"} | tail -n 1)"
  local dataset_dir
  dataset_dir="$(dirname "$ratings")"
  local data="$work/data/ml-100k-$fold" job="$work/jobs/mf-ml-100k-$fold"
  log "pipeline: $dataset_dir/$fold.base + $fold.test -> $data"
  "$PYTHON" -m beam_pipelines.movielens --input "$dataset_dir/$fold.base" \
    --eval-input "$dataset_dir/$fold.test" --split given --output "$data"
  log "training: $config -> $job"
  "$PYTHON" -m trainer.task --config "$config" --data "$data" --job-dir "$job" ${sets[@]+"${sets[@]}"}
  log "done in $((SECONDS - started)) s"
  cat <<EOF
pipeline output : $data  (dataset.json, train/, eval/, rejected/, transform_fn/)
job             : $job
  metrics       : $job/metrics.json
  SavedModel    : $job/export  (signature serving_default: user_id, item_id -> rating)
  plots         : $job/plots/loss.png
  TensorBoard   : $job/tensorboard
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

main() {
  local sub="${1:-}"
  [[ $# -gt 0 ]] && shift
  case "$sub" in
    local) cmd_local "$@" ;;
    test) cmd_test "$@" ;;
    -h|--help|help) usage ;;
    "") usage; exit 2 ;;
    *) usage >&2; die "unknown subcommand $sub" ;;
  esac
}

main "$@"
