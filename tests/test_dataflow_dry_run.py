"""Every pipeline's Dataflow job, built offline with Beam's own ``--dry_run=True`` (nothing submitted).

The inputs are on gs:// (gcp-storage-emulator on 127.0.0.1), the output is a
gs:// path: the DataflowRunner translates each pipeline, resolves the worker
environment and packages ``--setup_file`` (or takes ``--sdk_container_image``),
and returns before its first request. The pipeline's one-line summary names the
steps and the worker setup; nothing is written to the output.

One exception to "the production path unchanged", in the MovieLens pipeline
only: tf.Transform creates its temp directory while the graph is built, through
TensorFlow's own gs:// file system, which cannot reach an emulator; with
``STORAGE_EMULATOR_HOST`` set, a dry run builds with a local temp directory
(``common.gcs_emulated``). Against real GCS it keeps ``--temp_location``.

Beam spends ~20 s per process looking for credentials unless ``--no_auth``,
and every ``python -m`` pays for the TensorFlow import, so all four pipelines
are built in one child process (``rating_graph`` from a ratings output made
locally and uploaded).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow  # one child process importing Beam, TensorFlow and tf.Transform
BUCKET = "dry-run"
DATAFLOW = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "my-project", "--region", "us-central1",
            "--temp_location", f"gs://{BUCKET}/tmp", "--no_auth"]


@pytest.fixture(scope="module")
def built(gcs_emulator, tmp_path_factory):
    """Uploads small raw inputs of each pipeline, builds every job in one child process; its printed lines."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    from rawdata import playlist_synth, synth
    from tests.conftest import two_taste_ratings

    local = tmp_path_factory.mktemp("dry_run")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator
    try:
        gcs = storage.Client(project="test", credentials=AnonymousCredentials())
        bucket = gcs.create_bucket(BUCKET)
        rows = two_taste_ratings(num_users=20, num_items=10, per_user=5, seed=1)
        bucket.blob("raw/u.data").upload_from_string("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
        for name, path in synth.write_lastfm(synth.generate_lastfm(40, seed=2, num_classes=3), str(local)).items():
            bucket.blob(f"raw/{name}").upload_from_filename(path)
        playlist_synth.write_playlists_csv(playlist_synth.generate_playlists(30, seed=3), str(local / "pl.csv"))
        bucket.blob("raw/playlists.csv").upload_from_filename(str(local / "pl.csv"))
        # GCMC's graph pipeline adds to a ratings output: one made locally, uploaded as a finished output.
        (local / "u.data").write_text("".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows))
        from beam_pipelines import movielens
        movielens.run(["--input", str(local / "u.data"), "--output", str(local / "ml"), "--num-shards", "2"])
        for path in sorted((local / "ml").rglob("*")):
            if path.is_file():
                bucket.blob(f"ml/{path.relative_to(local / 'ml')}").upload_from_filename(str(path))
        ratings_output = {b.name: b.md5_hash for b in gcs.list_blobs(BUCKET, prefix="ml/")}
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)

    raw = f"gs://{BUCKET}/raw"
    jobs = {
        "movielens": ["--input", f"{raw}/u.data", "--output", f"gs://{BUCKET}/out/movielens", "--setup_file",
                      "./setup.py"],
        "lastfm": ["--edges", f"{raw}/edges.csv", "--targets", f"{raw}/target.csv", "--features",
                   f"{raw}/features.json", "--num-classes", "3", "--output", f"gs://{BUCKET}/out/lastfm",
                   "--sdk_container_image", "us-central1-docker.pkg.dev/my-project/recsys/beam:latest"],
        "playlists": ["--input", f"{raw}/playlists.csv", "--output", f"gs://{BUCKET}/out/playlists", "--setup_file",
                      "./setup.py"],
        "rating_graph": ["--data", f"gs://{BUCKET}/ml", "--setup_file", "./setup.py"],
    }
    script = textwrap.dedent(f"""
        import importlib, json, sys
        from beam_pipelines import common
        for name, argv in {jobs!r}.items():
            module = importlib.import_module("beam_pipelines." + name)
            summary = module.run(argv + {DATAFLOW!r})
            print("RESULT", json.dumps({{"name": name, "code": 0, "job": summary.get(common.DRY_RUN_KEY)}}), flush=True)
        # The command line's own summary line (what python -m beam_pipelines.movielens prints).
        sys.exit(importlib.import_module("beam_pipelines.movielens").main({jobs["movielens"]!r} + {DATAFLOW!r}))
    """)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs_emulator, PYTHONPATH=str(REPO), TF_USE_LEGACY_KERAS="1")
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600, start_new_session=True)
    assert result.returncode == 0, result.stderr[-4000:]
    outcomes = {}
    for line in result.stdout.splitlines():
        if line.startswith("RESULT "):
            outcome = json.loads(line[len("RESULT "):])
            outcomes[outcome["name"]] = outcome
    printed = [line for line in result.stdout.splitlines() if "Dataflow dry run" in line]
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator
    try:
        written = [b.name for b in gcs.list_blobs(BUCKET, prefix="out/")]
        ratings_output_after = {b.name: b.md5_hash for b in gcs.list_blobs(BUCKET, prefix="ml/")}
    finally:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    return {"outcomes": outcomes, "printed": printed, "written": written, "stderr": result.stderr,
            "ratings_output": (ratings_output, ratings_output_after)}


STEPS = {
    "movielens": {"ReadRatings", "Split", "TransformAndWrite", "WriteRejected"},
    "lastfm": {"ReadGraph", "AssignSplits", "SampleSubgraphs", "WriteTrain", "WriteValid", "WriteTest",
               "WriteFollows", "WriteRejected"},
    "playlists": {"Read", "AssignSplits", "Pairing", "EvalExamples", "WriteTrain", "WritePlaylistTracks",
                  "WriteRejected"},
    "rating_graph": {"ReadRatingEdges", "BuildGraphs", "WriteGraphs", "WriteLevels"},
}


@pytest.mark.parametrize("name", ["movielens", "lastfm", "playlists", "rating_graph"])
def test_the_dataflow_job_builds_with_its_steps_and_worker_setup(built, name):
    outcome = built["outcomes"].get(name)
    assert outcome is not None and outcome["code"] == 0, built["stderr"][-3000:]
    job = outcome["job"]
    assert job["project"] == "my-project" and job["region"] == "us-central1"
    assert STEPS[name] <= set(job["steps"]), job["steps"]
    assert len(job["steps"]) >= 4
    if name == "lastfm":  # a worker image given: no package staged, the image is the workers'
        assert job["worker_images"] == ["us-central1-docker.pkg.dev/my-project/recsys/beam:latest"]
        assert "workflow.tar.gz" not in job["staged"]
    else:  # the setup file packaged for the workers (Beam's image for this Python and Beam version)
        assert job["setup_file"] == "./setup.py" and "workflow.tar.gz" in job["staged"]
        assert all("beam_python3.11_sdk" in image for image in job["worker_images"]), job["worker_images"]


def test_the_command_line_prints_one_line_about_the_job(built):
    assert len(built["printed"]) == 1, built["printed"]
    line = built["printed"][0]
    assert line.startswith("movielens pipeline: Dataflow dry run: job ") and "TransformAndWrite" in line
    assert "setup file ./setup.py staged as workflow.tar.gz" in line
    assert line.endswith(f"nothing was submitted and gs://{BUCKET}/out/movielens was not written")


def test_a_dry_run_writes_nothing_to_the_output(built):
    assert built["written"] == []
    before, after = built["ratings_output"]  # the graph's dry run neither cleared nor changed the ratings output
    assert after == before and "ml/dataset.json" in before and any(n.startswith("ml/train/part-") for n in before)
