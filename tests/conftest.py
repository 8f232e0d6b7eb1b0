"""Shared test helpers: the real-data location, tiny fixture files, reading pipeline output.

Nothing here is autouse and nothing imports TensorFlow at import time, so test
modules that need none of it pay nothing for it.
"""
from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Callable

import pytest

# Keras 2 must be chosen before anything imports TensorFlow (see PITFALLS.md).
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_file(*parts: str) -> Path:
    """A path under ``../shared/data``; skips the calling test when it is absent.

    Args:
      *parts: path components below the shared data folder.

    Returns:
      The existing path.
    """
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/data)")
    return path


@pytest.fixture(scope="module")
def gcs_emulator():
    """``http://127.0.0.1:PORT`` of a gcp-storage-emulator (in memory) for one test module; killed after it.

    Set ``STORAGE_EMULATOR_HOST`` to it and Beam's gs:// IO and the google-cloud-storage
    client talk to it (see PITFALLS.md). Skips when the emulator is not installed.
    """
    import signal
    import socket
    import subprocess
    import sys
    import time

    pytest.importorskip("gcp_storage_emulator", reason="pip install gcp-storage-emulator (setup.py extras 'test')")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    executable = Path(sys.executable).with_name("gcp-storage-emulator")
    process = subprocess.Popen(
        [str(executable), "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"gcp-storage-emulator did not start on 127.0.0.1:{port}") from None
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def pytest_collection_modifyitems(config, items):
    """Files with the most ``slow`` tests first, so pytest-xdist (``--dist loadfile``) starts the long files early.

    Otherwise the last long file to be handed out decides the wall time of the suite (measured: one worker
    alone for the last 5 of 23 minutes when every slow file counted the same).
    """
    slow = {}
    for item in items:
        if item.get_closest_marker("slow"):
            slow[item.path] = slow.get(item.path, 0) + 1
    items.sort(key=lambda item: -slow.get(item.path, 0))  # stable: keeps the order within each file


@pytest.fixture
def shared_data() -> Path:
    """The shared real-data folder; the test is skipped when it is absent."""
    return shared_file()


@pytest.fixture
def make_file(tmp_path: Path) -> Callable[[str, str | bytes], Path]:
    """Writes a tiny fixture file into ``tmp_path`` and returns its path.

    Text is written byte for byte as given (no newline translation), so CRLF and a
    BOM in the text end up in the file; bytes are written as they are.
    """

    def write(name: str, content: str | bytes) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
        return path

    return write


def read_records(path: str | Path) -> list[bytes]:
    """The serialized records of one gzip TFRecord file, in file order."""
    import tensorflow as tf

    return [r.numpy() for r in tf.data.TFRecordDataset(str(path), compression_type="GZIP")]


def read_examples(dir_glob: str | Path) -> list[dict[str, list[Any]]]:
    """Parses every ``tf.train.Example`` of the gzip TFRecord files matching a glob.

    Args:
      dir_glob: a glob such as ``OUT/train/part-*.tfrecord.gz``.

    Returns:
      One dict per record (files in sorted order, records in file order), mapping
      each feature name to its list of values (ints, floats or bytes).
    """
    import tensorflow as tf

    examples = []
    for path in sorted(glob.glob(str(dir_glob))):
        for record in read_records(path):
            example = tf.train.Example.FromString(record)
            row = {}
            for name, feature in example.features.feature.items():
                kind = feature.WhichOneof("kind")
                row[name] = list(getattr(feature, kind).value) if kind else []
            examples.append(row)
    return examples


def two_taste_ratings(num_users: int, num_items: int, per_user: int, seed: int,
                      spread: float = 2.0, noise: float = 0.0) -> list[tuple[int, int, int, int]]:
    """Tiny planted ratings: odd users like odd items, even users even items.

    A liked item is rated ``3 + spread``, any other ``3 - spread``, plus N(0, noise)
    when ``noise`` > 0, rounded and clipped to 1..5; timestamps increase by row.
    Returns ``(user, item, rating, timestamp)`` rows.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    rows = []
    for user in range(1, num_users + 1):
        taste = user % 2
        for item in rng.choice(np.arange(1, num_items + 1), size=per_user, replace=False):
            mean = 3 + (spread if (item % 2) == taste else -spread)
            if noise > 0:
                mean += rng.normal(0, noise)
            rating = int(np.clip(round(mean), 1, 5))
            rows.append((user, int(item), rating, 1_000_000 + len(rows)))
    return rows


REPO = Path(__file__).resolve().parents[1]
# The top level of every model's metrics.json (trainer.experiment.RunResult).
METRICS_TOP_LEVEL = {"model", "task", "data", "dataset", "valid", "test", "history", "selection", "timings",
                     "config", "outputs", "cluster"}


def run_experiment(config: str | None, data: str | Path, job: str | Path, *overrides: str, **kwargs):
    """Resolves a config (a path under configs/ or None) with ``overrides`` and runs the one experiment.

    Returns:
      The ``trainer.experiment.RunResult``.
    """
    from trainer import config as config_lib
    from trainer import experiment

    path = str(REPO / "configs" / config) if config and not os.path.isabs(config) else config
    resolved = config_lib.resolve(path, list(overrides))
    return experiment.run(config=resolved, data_dir=str(data), job=str(job), **kwargs)
