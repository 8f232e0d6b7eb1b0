"""LastFM pipeline: pure parsing/split/sampling functions and one run(argv) on a tiny generated graph."""
from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipelines import common, lastfm
from tests.conftest import read_examples


# --------------------------------------------------------------------------- parsing
def test_parse_edge_line_classifies_rows():
    assert lastfm.parse_edge_line("e", 1, "node_1,node_2") == ("header", None)
    assert lastfm.parse_edge_line("e", 2, "  ") == ("blank", None)
    assert lastfm.parse_edge_line("e", 3, "9,07") == ("edge", ("7", "9", "e", 3))
    for text, reason in [("3,3", "self edge"), ("1,x", "not a non-negative integer"), ("1,2,3", "expected 2 fields"),
                         ("-1,2", "not a non-negative integer")]:
        kind, record = lastfm.parse_edge_line("e", 4, text)
        assert kind == "rejected" and reason in record["reason"] and record["line"] == 4 and record["text"] == text


def test_parse_target_line_checks_label_range():
    assert lastfm.parse_target_line("t", 1, "id,target", 18) == ("header", None)
    assert lastfm.parse_target_line("t", 2, "5,17", 18) == ("target", ("5", 17, "t", 2))
    assert lastfm.parse_target_line("t", 3, "5,18", 18)[1]["reason"].startswith("target: label outside")
    assert lastfm.parse_target_line("t", 4, "5,a", 18)[0] == "rejected"


def test_parse_features_object_and_json_lines():
    entries = list(lastfm.parse_features_entries("f", json.dumps({"1": [3, 2, 3], "x": [1], "2": ["a"], "4": []})))
    assert entries[0] == ("likes", ("1", ["2", "3"], "f", 1))
    assert [e[0] for e in entries] == ["likes", "rejected", "rejected", "likes"]
    lines = '{"1": [5]}\n{"2": [6\n\n[1, 2]\n'
    kinds = [e[0] for e in lastfm.parse_features_entries("f", lines)]
    assert kinds == ["likes", "rejected", "blank", "rejected"]


def test_stratified_split_is_stratified_and_deterministic():
    users = {c: [str(c * 1000 + i) for i in range(n)] for c, n in enumerate([100, 16, 10, 3])}
    split = lastfm.stratified_split(users, (0.8, 0.1, 0.1), seed=0)
    assert split == lastfm.stratified_split(users, (0.8, 0.1, 0.1), seed=0)
    assert split != lastfm.stratified_split(users, (0.8, 0.1, 0.1), seed=1)
    for c, members in users.items():
        got = [split[u] for u in members]
        n = len(members)
        assert got.count("train") == round(n * 0.8)
        assert got.count("train") + got.count("valid") == round(n * 0.9)
    assert [split[u] for u in users[1]].count("test") == 2  # 16 -> 13/1/2


def test_sample_subgraph_is_rooted_deduplicated_and_seeded():
    adjacency = {
        "follows": {"0": ("1", "2", "3"), "1": ("0", "2"), "2": ("0", "1"), "3": ("0",)},
        "likes": {"0": ("10",), "1": ("10", "11")},
        "liked_by": {"10": ("0", "1"), "11": ("1",)},
    }
    fanouts = {"follows": (2, 2), "likes": (1, 1), "liked_by": (0, 2)}
    sub = lastfm.sample_subgraph("0", adjacency, fanouts, seed=0)
    assert sub == lastfm.sample_subgraph("0", adjacency, fanouts, seed=0)
    users = sub["nodes"]["user"]
    assert users[0] == "0" and len(users) == len(set(users))
    assert len([e for e in sub["edges"]["follows"] if e[0] == 0]) == 2  # fan-out at the root
    for name, pairs in sub["edges"].items():
        source, target = lastfm.EDGE_SETS[name]
        assert all(s < len(sub["nodes"][source]) and t < len(sub["nodes"][target]) for s, t in pairs)


def test_subgraph_example_never_carries_the_root_label():
    sub = {"nodes": {"user": ["7", "8", "7"], "artist": []}, "edges": {n: [] for n in lastfm.EDGE_SETS}}
    example = lastfm.subgraph_example("7", 3, sub, {"7": 3, "8": 5}, num_classes=18)
    hints = list(example.features.feature["nodes/user.label_hint"].int64_list.value)
    assert hints == [18, 5, 18]
    assert list(example.features.feature["context/label"].int64_list.value) == [3]


# --------------------------------------------------------------------------- run(argv)
@pytest.fixture(scope="module")
def tiny_output(tmp_path_factory) -> tuple[Path, dict]:
    from rawdata import synth

    work = tmp_path_factory.mktemp("lastfm")
    graph = synth.generate_lastfm(120, seed=3, num_classes=4, avg_likes=4)
    paths = synth.write_lastfm(graph, str(work))
    # Bad rows, each of which must land in rejected/ with its reason.
    with open(paths["edges.csv"], "a") as handle:
        handle.write("5,5\n1,999\nfoo,bar\n\n")
        a, b = graph.edges[0].tolist()
        handle.write(f"{b},{a}\n")  # duplicate in the other direction
    with open(paths["target.csv"], "a") as handle:
        handle.write("0,1\n7,x\n")  # duplicate user (first row wins), malformed
    likes = json.loads(Path(paths["features.json"]).read_text())
    likes["500"] = [1, 2]  # unlabelled user
    likes["9"] = "not a list"
    Path(paths["features.json"]).write_text(json.dumps(likes))
    out = work / "out"
    summary = lastfm.run([
        "--edges", paths["edges.csv"], "--targets", paths["target.csv"], "--features", paths["features.json"],
        "--output", str(out), "--num-classes", "4", "--num-shards", "2", "--max-rejected-fraction", "0.5",
    ])
    return out, summary


def test_run_counts_add_up_and_rejects_have_reasons(tiny_output):
    out, summary = tiny_output
    assert summary["accounting"]["balanced"], summary["accounting"]
    c = summary["counts"]
    assert sum(c["users"].values()) == 120 == sum(c["examples"].values())
    rejected = [json.loads(l) for f in glob.glob(str(out / "rejected" / "*.jsonl")) for l in open(f) if l.strip()]
    reasons = sorted(r["reason"] for r in rejected)
    assert len(rejected) == c["rejected_rows"] == 8
    for expected in ("self edge", "dangling endpoint", "not a non-negative integer", "duplicate_edge",
                     "duplicate_target", "label is not an integer", "unlabelled user", "must be a list"):
        assert any(expected in r for r in reasons), (expected, reasons)
    assert json.loads((out / "dataset.json").read_text()) == json.loads(json.dumps(summary))


def test_graph_tensors_parse_with_schema_and_hide_root_label(tiny_output):
    import tensorflow as tf
    import tensorflow_gnn as tfgnn

    out, summary = tiny_output
    schema = tfgnn.read_schema(str(out / "graph_schema.pbtxt"))
    spec = tfgnn.create_graph_spec_from_schema_pb(schema)
    labels_by_user = {}
    for split in lastfm.SPLITS:
        rows = read_examples(out / split / "part-*.tfrecord.gz")
        assert len(rows) == summary["counts"]["examples"][split]
        for row in rows:
            labels_by_user[row["context/root_id"][0].decode()] = (split, row["context/label"][0])
    train_labels = {u: l for u, (s, l) in labels_by_user.items() if s == "train"}
    files = sorted(glob.glob(str(out / "*" / "part-*.tfrecord.gz")))
    saw_likes = False
    for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
        graph = tfgnn.parse_single_example(spec, record)
        root = graph.context["root_id"].numpy()[0].decode()
        ids = [i.decode() for i in graph.node_sets["user"]["#id"].numpy()]
        hints = graph.node_sets["user"]["label_hint"].numpy().tolist()
        assert ids[0] == root
        assert all(h == 4 for i, h in zip(ids, hints) if i == root), "root label leaked into its input"
        assert all(h == train_labels.get(i, 4) for i, h in zip(ids, hints) if i != root)
        saw_likes |= int(graph.edge_sets["likes"].sizes.numpy().sum()) > 0
    assert saw_likes


def test_rerun_gives_identical_shards(tiny_output, tmp_path):
    out, summary = tiny_output
    sources = {s["side"]: s["path"] for s in summary["sources"]}
    again = tmp_path / "again"
    # Another process: protobuf map order (and Python's hash seed) differ between processes.
    subprocess.run(
        [sys.executable, "-m", "beam_pipelines.lastfm", "--edges", sources["edges"], "--targets", sources["targets"],
         "--features", sources["features"], "--output", str(again), "--num-classes", "4", "--num-shards", "2",
         "--max-rejected-fraction", "0.5"],
        check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=300,
    )
    for split in lastfm.SPLITS:
        paths = sorted(glob.glob(str(out / split / "*")))
        assert paths
        for path in paths:
            assert Path(path).read_bytes() == (again / split / os.path.basename(path)).read_bytes()


def test_bad_flags_are_one_line_errors(tmp_path, capsys):
    assert lastfm.main(["--edges", str(tmp_path / "none.csv"), "--targets", "x", "--output", str(tmp_path)]) == 2
    assert "matches no file" in capsys.readouterr().err
    with pytest.raises(common.PipelineInputError):
        lastfm.parse_fanouts(["knows=3"], 2)
