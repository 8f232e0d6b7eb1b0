"""Identical output on the DirectRunner's in_memory and multi_processing modes."""
import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _shards(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): gzip.decompress(p.read_bytes())
        for p in sorted(out.glob("*/part-*.tfrecord.gz"))
    }


def _summary(out: Path) -> dict:
    summary = json.loads((out / "dataset.json").read_text())
    summary.pop("pipeline_seconds")
    return summary


@pytest.mark.slow
def test_in_memory_and_multi_processing_write_the_same_files(tmp_path):
    lines = [f"{u}\t{i}\t{1 + (u * i) % 5}\t{1000 + u * 50 + i}" for u in range(1, 41) for i in range(1, 30, 3)]
    lines += ["bad line", "", "1\t1\t5\t999999"]  # a reject, a blank line and a duplicate
    (tmp_path / "ratings.tsv").write_text("\n".join(lines) + "\n")
    outputs = {}
    for mode in ("in_memory", "multi_processing"):
        out = tmp_path / mode
        result = subprocess.run(
            [sys.executable, "-m", "beam_pipelines.movielens", "--input", str(tmp_path / "ratings.tsv"),
             "--output", str(out), "--num-shards", "3", "--max-rejected-fraction", "0.5",
             f"--direct_running_mode={mode}", "--direct_num_workers=2"],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[mode] = out
    assert _shards(outputs["in_memory"]) == _shards(outputs["multi_processing"])
    assert len(_shards(outputs["in_memory"])) == 9  # train, valid, test x 3 shards
    summary = _summary(outputs["in_memory"])
    assert summary["accounting"]["balanced"] and summary["counts"]["duplicates_dropped"] == 1
    assert summary == {**_summary(outputs["multi_processing"]), "sources": summary["sources"]}
