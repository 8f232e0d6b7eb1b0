"""LastFM pipeline with a given split file: the file's checks, a hand-made split on generated data, a rerun."""
from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from beam_pipelines import common, lastfm
from tests.conftest import read_examples


def test_parse_split_file_accepts_ints_and_digit_strings():
    text = json.dumps({"test": [5], "train": [1, "02", 3], "valid": []})
    assert lastfm.parse_split_file("s.json", text) == {"train": ["1", "2", "3"], "valid": [], "test": ["5"]}


@pytest.mark.parametrize("payload, message", [
    ('{"train": [1, 2], "valid": [3], "test": [2]}', "user 2 is listed twice: train[1] and test[0]"),
    ('{"train": [1, 1], "valid": [], "test": []}', "user 1 is listed twice: train[0] and train[1]"),
    ('{"train": [1, "07", 7], "valid": [], "test": []}', "user 7 is listed twice: train[1] and train[2]"),
    ('{"train": [1, -2], "valid": [], "test": []}', "train[1] = -2 is not a non-negative integer id"),
    ('{"train": [1, true], "valid": [], "test": []}', "train[1] = true is not a non-negative integer id"),
    ('{"train": [1], "valid": [2.5], "test": []}', "valid[0] = 2.5 is not a non-negative integer id"),
    ('{"train": [1], "test": []}', "has ['test', 'train'], not exactly the keys ['train', 'valid', 'test']"),
    ('{"train": [1], "valid": [], "test": [], "extra": []}', "not exactly the keys"),
    ('[1, 2]', "has list, not exactly the keys"),
    ('{"train": 1, "valid": [], "test": []}', "'train' is not a list"),
    ('{"train": [], "valid": [1], "test": []}', "the train list is empty"),
    ('{"train": [1,', "not JSON (Expecting value at line 1 column 14)"),
])
def test_parse_split_file_errors_are_one_line(payload, message):
    with pytest.raises(common.PipelineInputError) as raised:
        lastfm.parse_split_file("s.json", payload)
    text = str(raised.value)
    assert text.startswith("--split-file s.json: ") and message in text and "\n" not in text, text


@pytest.fixture(scope="module")
def split_run(tmp_path_factory):
    """A hand-made split of a generated graph: 10 users left out, one id that is no user, ids as ints and strings."""
    from rawdata import synth

    work = tmp_path_factory.mktemp("split_file")
    paths = synth.write_lastfm(synth.generate_lastfm(150, seed=4, num_classes=4, avg_likes=3), str(work))
    users = list(range(150))
    lists = {"train": users[:100], "valid": [str(u) for u in users[100:120]], "test": users[120:140] + [777]}
    split_path = work / "split.json"
    split_path.write_text(json.dumps(lists))
    argv = ["--edges", paths["edges.csv"], "--targets", paths["target.csv"], "--features", paths["features.json"],
            "--split-file", str(split_path), "--num-classes", "4", "--num-shards", "2"]
    summary = lastfm.run([*argv, "--output", str(work / "out")])
    return work, argv, lists, summary


def test_split_file_assigns_listed_users_and_counts_the_rest(split_run):
    work, _, lists, summary = split_run
    out = work / "out"
    assert summary["accounting"]["balanced"], summary["accounting"]
    assert summary["counts"]["users"] == {"train": 100, "valid": 20, "test": 20}
    assert summary["counts"]["unassigned_users"] == 10  # users 140..149: nodes of the graph, no example
    assert summary["accounting"]["checks"]["split_file"] == {
        "read": 141, "accounted": 141, "rule": summary["accounting"]["checks"]["split_file"]["rule"]}
    split = summary["split"]
    assert split["protocol"] == "file" and split["unknown_ids"] == 1
    assert split["sha256"] == hashlib.sha256((work / "split.json").read_bytes()).hexdigest()
    assert split["listed"] == {"train": 100, "valid": 20, "test": 21}
    assert json.loads((out / "dataset.json").read_text())["split"] == split
    for name in lastfm.SPLITS:
        roots = sorted(int(row["context/root_id"][0]) for row in read_examples(out / name / "part-*.tfrecord.gz"))
        assert roots == sorted(int(u) for u in lists[name] if int(u) < 150), name
    rejected = [json.loads(line) for f in glob.glob(str(out / "rejected" / "*.jsonl")) for line in open(f) if line.strip()]
    assert rejected == [{"source": str(work / "split.json"), "line": 21, "text": '{"test": "777"}',
                         "reason": "split file: test id has no target row (not a labelled user)"}]


def test_unassigned_users_stay_in_the_graph_without_a_label_hint(split_run):
    work, _, _, summary = split_run
    follows = [json.loads(line) for line in (work / "out" / "graph" / "follows-00000-of-00001.jsonl").read_text().splitlines()]
    assert len(follows) == summary["counts"]["follows_pairs"] == summary["graph"]["follows"]["pairs"]
    assert all(int(a) < int(b) for a, b in follows)
    hints = {}
    for row in read_examples(work / "out" / "*" / "part-*.tfrecord.gz"):
        for user, hint in zip(row["nodes/user.#id"], row["nodes/user.label_hint"]):
            hints.setdefault(int(user), set()).add(int(hint))
    left_out = [u for u in range(140, 150) if u in hints]
    assert left_out and all(hints[u] == {4} for u in left_out)  # seen as friends, their label never shown


def test_split_file_and_split_exclude_each_other(split_run, capsys):
    _, argv, _, _ = split_run
    assert lastfm.main([*argv, "--split", "0.8,0.1,0.1", "--output", "/nonexistent"]) == 2
    assert "--split and --split-file exclude each other" in capsys.readouterr().err


@pytest.mark.slow  # ~15 s: a second pipeline in its own process
def test_rerun_with_the_same_split_file_gives_identical_shards(split_run, tmp_path):
    work, argv, _, _ = split_run
    # Another process: protobuf map order and Python's hash seed differ between processes.
    subprocess.run([sys.executable, "-m", "beam_pipelines.lastfm", *argv, "--output", str(tmp_path / "again")],
                   check=True, capture_output=True, cwd=Path(__file__).resolve().parents[1], timeout=300)
    names = sorted(os.path.relpath(p, work / "out") for p in glob.glob(str(work / "out" / "*" / "*")))
    assert len([n for n in names if n.endswith(".tfrecord.gz")]) == 6 and "graph/follows-00000-of-00001.jsonl" in names
    for name in names:
        assert (work / "out" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
