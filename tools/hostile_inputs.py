"""Each class of hostile input through the real commands: a markdown table (command, printed line, exit code).

Developer script (issue 11's table): writes the damaged files into --work, runs the pipelines and the trainer
on them in child processes exactly as a user would, and prints one row per case, with whether a traceback
appeared. Needs ../shared/data (ML-100K u.data, LastFM Asia targets) beside the repository.

Usage::

    python tools/hostile_inputs.py --work /tmp/hostile
"""
import argparse
import gzip
import io
import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="scratch directory (emptied first)")
    W = parser.parse_args().work
    shutil.rmtree(W, ignore_errors=True)
    W.mkdir(parents=True)
    REPO = Path(__file__).resolve().parents[1]
    PY = sys.executable
    ENV = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(REPO))
    U = (REPO.parent / "shared/data/ml-100k/u.data").read_bytes()
    good = U[:200000]
    (W / "good.data").write_bytes(good)
    (W / "random.data").write_bytes(random.Random(0).randbytes(4000))
    (W / "utf16.data").write_bytes(good.decode().encode("utf-16"))
    buf = io.BytesIO(); zipfile.ZipFile(buf, "w").writestr("u.data", good); (W / "ml.zip.data").write_bytes(buf.getvalue())
    gz = gzip.compress(good); (W / "cut.data.gz").write_bytes(gz[: len(gz) // 2])
    flip = bytearray(gz); flip[len(flip)//2] ^= 0xFF; (W / "corrupt.data.gz").write_bytes(bytes(flip))
    (W / "empty.data").write_bytes(b"")
    (W / "header_only.csv").write_text("userId,movieId,rating,timestamp\n")
    (W / "zero.data").write_text(good.decode().splitlines()[0] + "\n" + "1\t2\t0\t881250949\n" + "\n".join(good.decode().splitlines()[1:50]) + "\n")
    (W / "a_file").write_text("x")
    (W / "edges_random.csv").write_bytes(random.Random(1).randbytes(3000))
    (W / "playlists_random.csv").write_bytes(random.Random(2).randbytes(3000))
    L = REPO.parent / "shared/data/lastfm_asia"

    def run(args, note):
        r = subprocess.run([PY, "-m", *args], cwd=W, env=ENV, capture_output=True, text=True, timeout=900)
        err = [l for l in r.stderr.splitlines() if l.strip() and not l.startswith(("W0000", "I0000", "E0000", "WARNING", "INFO")) and "cuda" not in l.lower() and "absl" not in l]
        last = (err[-1] if err else (r.stdout.strip().splitlines() or [""])[-1])
        tb = "Traceback" in r.stderr
        print(f"| {note} | `python -m {' '.join(args)}` | {last[:230]} | {r.returncode} | {'YES' if tb else 'no'} |", flush=True)
        return r

    print("| case | command | printed (last line) | exit | traceback |\n| --- | --- | --- | --- | --- |")
    ml = "beam_pipelines.movielens"
    for f, note in [("random.data", "random bytes as ratings"), ("utf16.data", "UTF-16 text"), ("ml.zip.data", "zip archive under a .data name"),
                    ("cut.data.gz", "gzip cut in half"), ("corrupt.data.gz", "gzip with a flipped byte"), ("empty.data", "empty file"),
                    ("header_only.csv", "CSV header, no rows")]:
        run([ml, "--input", f, "--output", f"out-{f}"], note)
    run([ml, "--input", "zero.data", "--output", "out-zero", "--max-rejected-fraction", "0"], "rating 0 in u.data (rule 1..5)")
    run([ml, "--input", "good.data", "--output", "a_file"], "--output is an existing file")
    run([ml, "--input", "good.data", "--output", "/proc/nope/out"], "--output cannot be created")
    run(["beam_pipelines.lastfm", "--edges", "edges_random.csv", "--targets", str(L / "lastfm_asia_target.csv"), "--output", "out-lf"], "LastFM edges: random bytes")
    run(["beam_pipelines.playlists", "--input", "playlists_random.csv", "--output", "out-pl"], "playlists CSV: random bytes")
    run([ml, "--input", "good.data", "--output", "out-good", "--num-shards", "2"], "(setup) a good ratings output")
    shard = sorted((W / "out-good/train").glob("part-*"))[0]
    run(["trainer.task", "--config", str(REPO / "configs/lastfm_hetero_gnn.yaml"), "--data", "out-good", "--job-dir", "job-gnn"], "GNN config on a ratings output")
    data = shard.read_bytes(); shard.write_bytes(data[: len(data) // 2])
    run(["trainer.task", "--config", str(REPO / "configs/movielens_mf.yaml"), "--data", "out-good", "--job-dir", "job-trunc", "--set", "train.epochs=1"], "trainer on a truncated shard")
    print("\nexport written after the truncated shard:", (W / "job-trunc/export").exists())
    return 0


if __name__ == "__main__":
    sys.exit(main())
