"""gs:// through Beam against gcp-storage-emulator on 127.0.0.1.

The MovieLens pipeline reads its inputs from gs:// (match, format sniffing,
sha256, line reading: all Beam FileSystems), and the deterministic shard writer
writes gs:// shards that the google-cloud-storage client reads back.

The LastFM pipeline is covered end to end: ``python -m beam_pipelines.lastfm``
reads edges, targets and liked artists from gs:// and writes train/valid/test
shards, rejected/, dataset.json and graph_schema.pbtxt to gs:// (every read and
write is Beam FileSystems); the GCS client reads them back and TF-GNN parses a
shard record with the downloaded schema.

Not covered, by necessity: ``--output gs://`` of the whole MovieLens pipeline.
tf.Transform writes transform_fn/ through ``tf.io.gfile``, and TensorFlow's gs://
file system has no emulator endpoint (it always calls www.googleapis.com), see
PITFALLS.md.

Beam spends ~20 s per process retrying credential lookup before it falls back
to anonymous access, so the Beam side of each test runs in one child process.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


pytestmark = pytest.mark.slow  # pipelines against the emulator / several TF processes

REPO = Path(__file__).resolve().parents[1]
BUCKET = "recsys-test"


@pytest.fixture(scope="module")
def client(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = gcs_emulator
    try:
        gcs = storage.Client(project="test", credentials=AnonymousCredentials())
        gcs.create_bucket(BUCKET)
        yield gcs
    finally:
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


def _tfrecords(data: bytes) -> list[bytes]:
    """Records of an (uncompressed) TFRecord byte string; length/CRC framing only."""
    records, offset = [], 0
    while offset < len(data):
        (length,) = struct.unpack("<Q", data[offset:offset + 8])
        records.append(data[offset + 12:offset + 12 + length])
        offset += 12 + length + 4
    return records


CHILD = textwrap.dedent("""
    import glob, gzip, json, sys
    import apache_beam as beam
    from beam_pipelines import common, movielens

    bucket, local_out = sys.argv[1], sys.argv[2]
    summary = movielens.run([
        "--input", f"gs://{bucket}/raw/base.tsv", "--test-input", f"gs://{bucket}/raw/test.tsv", "--no-valid",
        "--split", "given", "--output", local_out, "--num-shards", "2", "--no_auth",
    ])
    records = []
    for path in sorted(glob.glob(f"{local_out}/train/part-*.tfrecord.gz")):
        data = gzip.decompress(open(path, "rb").read())
        offset = 0
        while offset < len(data):
            length = int.from_bytes(data[offset:offset + 8], "little")
            records.append(data[offset + 12:offset + 12 + length])
            offset += 12 + length + 4
    with beam.Pipeline(argv=["--no_auth"]) as pipeline:
        _ = (pipeline | beam.Create(records)
             | common.WriteDeterministicShards(f"gs://{bucket}/out/train/part", 3))
    common.write_json(f"gs://{bucket}/out/dataset.json", summary)
    print("CHILD-OK", len(records))
""")


def test_pipeline_reads_gs_inputs_and_beam_writes_gs_shards(client, gcs_emulator, tmp_path):
    rows = [(u, i, 1 + (u * i) % 5, 1_000_000 + u * 100 + i) for u in range(1, 41) for i in range(1, 16)]
    base = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows if (u + i) % 5)
    test = "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, r, t in rows if not (u + i) % 5)
    bucket = client.bucket(BUCKET)
    bucket.blob("raw/base.tsv").upload_from_string(base)
    bucket.blob("raw/test.tsv").upload_from_string(test)

    local_out = tmp_path / "out"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs_emulator, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", CHILD, BUCKET, str(local_out)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=240, start_new_session=True)
    assert result.returncode == 0 and "CHILD-OK" in result.stdout, result.stderr[-4000:]

    # The pipeline read every gs:// input row, hashed the gs:// objects and recorded their paths.
    summary = json.loads((local_out / "dataset.json").read_text())
    assert summary["counts"]["train_rows"] == base.count("\n")
    assert summary["counts"]["test_rows"] == test.count("\n")
    sources = {s["path"]: s for s in summary["sources"]}
    assert sources[f"gs://{BUCKET}/raw/base.tsv"]["sha256"] == hashlib.sha256(base.encode()).hexdigest()
    assert sources[f"gs://{BUCKET}/raw/test.tsv"]["format"] == "tab"

    # Shards written through Beam to gs:// come back intact through the GCS client.
    names = sorted(b.name for b in client.list_blobs(BUCKET, prefix="out/train/"))
    assert names == [f"out/train/part-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
    from_gcs = []
    for name in names:
        from_gcs += _tfrecords(gzip.decompress(bucket.blob(name).download_as_bytes()))
    local = []
    for path in sorted((local_out / "train").glob("part-*.tfrecord.gz")):
        local += _tfrecords(gzip.decompress(path.read_bytes()))
    assert len(local) == summary["counts"]["train_rows"]
    assert sorted(from_gcs) == sorted(local)
    assert json.loads(bucket.blob("out/dataset.json").download_as_text())["counts"] == summary["counts"]


def test_lastfm_pipeline_runs_from_gs_to_gs(client, gcs_emulator, tmp_path):
    from rawdata import synth

    num_users = 60
    graph = synth.generate_lastfm(num_users, seed=5, num_classes=4, avg_likes=4)
    paths = synth.write_lastfm(graph, str(tmp_path))
    bucket = client.bucket(BUCKET)
    for name, path in paths.items():
        data = Path(path).read_bytes()
        if name == "edges.csv":
            data += b"7,7\n"  # a self edge: must come back in rejected/ with its gs:// source
        bucket.blob(f"lastfm/raw/{name}").upload_from_string(data)
    stale = "lastfm/out/train/part-00007-of-00008.tfrecord.gz"  # from an earlier run with 8 shards
    bucket.blob(stale).upload_from_string(b"stale")

    raw, out = f"gs://{BUCKET}/lastfm/raw", f"gs://{BUCKET}/lastfm/out"
    env = dict(os.environ, STORAGE_EMULATOR_HOST=gcs_emulator, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-m", "beam_pipelines.lastfm", "--edges", f"{raw}/edges.csv", "--targets", f"{raw}/target.csv",
         "--features", f"{raw}/features.json", "--output", out, "--num-classes", "4", "--num-shards", "2", "--no_auth"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300, start_new_session=True,
    )
    assert result.returncode == 0 and "lastfm pipeline: users train/valid/test" in result.stdout, result.stderr[-4000:]

    names = sorted(b.name for b in client.list_blobs(BUCKET, prefix="lastfm/out/"))
    shards = [f"lastfm/out/{split}/part-0000{i}-of-00002.tfrecord.gz" for split in ("test", "train", "valid") for i in range(2)]
    assert names == sorted([*shards, "lastfm/out/rejected/part-00000-of-00001.jsonl",
                            "lastfm/out/graph/follows-00000-of-00001.jsonl",
                            "lastfm/out/dataset.json", "lastfm/out/graph_schema.pbtxt"]), names
    assert stale not in names

    summary = json.loads(bucket.blob("lastfm/out/dataset.json").download_as_text())
    assert summary["accounting"]["balanced"], summary["accounting"]
    assert sum(summary["counts"]["users"].values()) == num_users == sum(summary["counts"]["examples"].values())
    sources = {s["side"]: s for s in summary["sources"]}
    assert sources["edges"]["path"] == f"{raw}/edges.csv"
    assert sources["features"]["sha256"] == hashlib.sha256(Path(paths["features.json"]).read_bytes()).hexdigest()
    rejected = [json.loads(line) for line in
                bucket.blob("lastfm/out/rejected/part-00000-of-00001.jsonl").download_as_text().splitlines()]
    assert [(r["source"], r["reason"]) for r in rejected] == [(f"{raw}/edges.csv", "edge: self edge")]
    assert summary["counts"]["rejected_rows"] == 1

    records = []
    for name in shards:
        records += _tfrecords(gzip.decompress(bucket.blob(name).download_as_bytes()))
    assert len(records) == num_users

    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    schema = tfgnn.parse_schema(bucket.blob("lastfm/out/graph_schema.pbtxt").download_as_text())
    graph_tensor = tfgnn.parse_single_example(tfgnn.create_graph_spec_from_schema_pb(schema), tf.constant(records[0]))
    root = graph_tensor.context["root_id"].numpy()[0].decode()
    assert graph_tensor.node_sets["user"]["#id"].numpy()[0].decode() == root
    assert 0 <= int(graph_tensor.context["label"].numpy()[0]) < 4
    assert int(graph_tensor.node_sets["user"]["label_hint"].numpy()[0]) == 4  # the root's own label is hidden
