"""The data pointer gs://BUCKET/data/DATASET/LATEST against gcp-storage-emulator on 127.0.0.1.

``preprocess`` records its output there once the pipeline succeeded; ``train``/``tune``
without ``--data`` read it. Here the same functions (``cloud.vertex.write_latest``,
``read_latest``, ``resolve_data``, ``storage_client``) write and read a real object through
the google-cloud-storage client, with the emulator standing in for Cloud Storage.
"""
from __future__ import annotations


import pytest

from cloud import vertex


SETTINGS_ENV = {"GCP_PROJECT": "test-project", "GCS_BUCKET": "test-bucket", "GCP_REGION": "europe-west4"}


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    """The client cloud.vertex builds when STORAGE_EMULATOR_HOST is set, with the bucket created."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    settings = vertex.load_settings(None, SETTINGS_ENV)
    client = vertex.storage_client(settings)
    if client.lookup_bucket("test-bucket") is None:
        client.create_bucket("test-bucket")
    return settings, client


def test_latest_round_trip(gcs):
    settings, client = gcs
    latest = vertex.latest_uri(settings, "movielens")
    assert latest == "gs://test-bucket/data/movielens/LATEST"
    pointer = client.bucket("test-bucket").blob("data/movielens/LATEST")
    if pointer.exists():  # another test of this module wrote one
        pointer.delete()
    with pytest.raises(vertex.CloudError, match=r"gs://test-bucket/data/movielens/LATEST does not exist: "
                                                r"run ./run-cloud.sh preprocess movielens first"):
        vertex.resolve_data(settings, None, "movielens", dry_run=False, client=client)
    vertex.write_latest(client, latest, "gs://test-bucket/data/movielens/ml-1m/")
    blob = client.bucket("test-bucket").blob("data/movielens/LATEST")
    assert blob.download_as_text() == "gs://test-bucket/data/movielens/ml-1m\n"
    assert vertex.resolve_data(settings, None, "movielens", dry_run=False, client=client) == "gs://test-bucket/data/movielens/ml-1m"
    # a newer preprocess replaces it; other datasets keep their own pointer
    vertex.write_latest(client, latest, "gs://test-bucket/data/movielens/ml-1m-loo")
    vertex.write_latest(client, vertex.latest_uri(settings, "lastfm"), "gs://test-bucket/data/lastfm/20260101-000000")
    assert vertex.resolve_data(settings, None, "movielens", dry_run=False, client=client).endswith("/ml-1m-loo")
    assert vertex.resolve_data(settings, None, "lastfm", dry_run=False, client=client).endswith("/20260101-000000")
    # --data wins and is never read
    assert vertex.resolve_data(settings, "gs://x/y", "movielens", dry_run=False, client=client) == "gs://x/y"


def test_latest_that_is_not_a_path_is_an_error(gcs):
    settings, client = gcs
    client.bucket("test-bucket").blob("data/movielens/LATEST").upload_from_string("oops\n")
    with pytest.raises(vertex.CloudError, match="holds 'oops', not a gs:// path"):
        vertex.resolve_data(settings, None, "movielens", dry_run=False, client=client)
