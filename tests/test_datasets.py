"""rawdata.registry: registry, mirror folders, zip verification/extraction, offline and unsafe cases."""
import dataclasses
import functools
import hashlib
import http.server
import io
import re
import threading
import zipfile
from pathlib import Path

import pytest

from rawdata import registry as datasets

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FAKE_RATINGS = b"1\t10\t5\t881250949\n2\t20\t3\t891717742\n"


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch):
    monkeypatch.delenv(datasets.MIRROR_ENV, raising=False)


def _need_shared(*parts):
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent (real datasets live in ../shared/data)")
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _fake_zip(path: Path, members: dict[str, bytes]) -> bytes:
    """Write a zip with ``members`` (name -> bytes) and return its bytes."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _patch(monkeypatch, name, **changes):
    entry = dataclasses.replace(datasets.REGISTRY[name], **changes)
    monkeypatch.setitem(datasets.REGISTRY, name, entry)
    return entry


@pytest.fixture
def fake_ml100k(tmp_path, monkeypatch):
    """A mirror directory holding a tiny ml-100k.zip; the registry trusts its real sha256."""
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = _fake_zip(mirror / "ml-100k.zip", {
        "ml-100k/": b"",
        "ml-100k/u.data": FAKE_RATINGS,
        "ml-100k/u1.base": FAKE_RATINGS[:19],
        "__MACOSX/ml-100k/._u.data": b"junk",
    })
    _patch(monkeypatch, "ml-100k", sha256=_sha256(data), contents=())
    return mirror, data


def _leftovers(dest: Path) -> list[str]:
    return sorted(p.name for p in dest.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- registry


def test_registry_holds_the_movielens_releases_with_official_urls():
    movielens = ["ml-100k", "ml-1m", "ml-10m", "ml-20m", "ml-25m", "ml-latest-small"]
    assert set(movielens) <= set(datasets.REGISTRY)
    for name in movielens:
        entry = datasets.REGISTRY[name]
        assert entry.name == name
        assert entry.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert entry.archive_name == f"{name}.zip"
        assert entry.ratings_file in ("u.data", "ratings.dat", "ratings.csv")
    assert datasets.REGISTRY["ml-10m"].folder == "ml-10M100K"
    assert datasets.REGISTRY["ml-100k"].ratings_file == "u.data"
    assert datasets.REGISTRY["ml-1m"].ratings_file == "ratings.dat"
    assert datasets.REGISTRY["ml-25m"].ratings_file == "ratings.csv"


def test_registry_checksums_are_well_formed_and_sourced():
    for entry in datasets.REGISTRY.values():
        assert dataclasses.is_dataclass(entry)
        with pytest.raises(dataclasses.FrozenInstanceError):
            entry.sha256 = "0" * 64
        for sha in [entry.sha256, *(f.sha256 for f in (*entry.files, *entry.contents))]:
            assert sha is None or re.fullmatch(r"[0-9a-f]{64}", sha), (entry.name, sha)
        for md5 in [entry.md5, *(f.md5 for f in entry.files)]:
            assert md5 is None or re.fullmatch(r"[0-9a-f]{32}", md5), (entry.name, md5)
        assert entry.checksum_source
    # Published values (TFDS url_checksums and GroupLens' .md5 sidecar).
    assert datasets.REGISTRY["ml-100k"].sha256 == "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    assert datasets.REGISTRY["ml-100k"].md5 == "0e33842e24a9c977be4e0107933c0723"
    assert datasets.REGISTRY["ml-1m"].md5 == "c4d9eecfca2ab87c1945afe126590906"
    lastfm = datasets.REGISTRY["lastfm_asia"]
    assert lastfm.sha256 is None and lastfm.md5 is None
    assert "no published checksum" in lastfm.checksum_status()
    ncf = datasets.REGISTRY["ncf"]
    assert ncf.is_file_set and set(ncf.default_files) <= {f.name for f in ncf.files}


def test_unknown_dataset_lists_known_names():
    with pytest.raises(datasets.DatasetError, match="unknown dataset 'ml-7k'.*ml-100k"):
        datasets.get("ml-7k")


# --------------------------------------------------------------------------- shared/data mirror folders


def test_fetch_ml100k_from_shared_mirror_folder(tmp_path, capsys):
    _need_shared("ml-100k", "u.data")
    dest = tmp_path / "datasets"
    path = datasets.fetch("ml-100k", dest, mirror=SHARED)
    assert path == dest / "ml-100k" / "u.data"
    assert _sha256(path.read_bytes()) == "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"
    assert len(path.read_bytes().splitlines()) == 100000
    assert (path.parent / "u1.base").stat().st_size == 1586544  # the splits come along
    assert _leftovers(dest) == []
    # Idempotent: a second call neither needs the mirror nor rewrites the file.
    mtime = path.stat().st_mtime_ns
    assert datasets.fetch("ml-100k", dest, mirror=tmp_path / "nowhere") == path
    assert path.stat().st_mtime_ns == mtime
    assert "already in" in capsys.readouterr().err


def test_fetch_latest_small_via_env_mirror_and_cli(tmp_path, monkeypatch, capsys):
    _need_shared("ml-latest-small", "ratings.csv")
    monkeypatch.setenv(datasets.MIRROR_ENV, str(SHARED))
    assert datasets.main(["fetch", "ml-latest-small", "--dest", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    path = Path(out[-1])
    assert path == tmp_path / "ml-latest-small" / "ratings.csv"
    lines = path.read_bytes().splitlines()
    assert lines[0] == b"userId,movieId,rating,timestamp"
    assert len(lines) == 100837


def test_fetch_ncf_files_from_shared_mirror(tmp_path):
    _need_shared("ncf", "ml-1m.test.rating")
    folder = datasets.fetch("ncf", tmp_path, mirror=SHARED, files=["ml-1m.test.rating", "ml-1m.test.negative"])
    assert folder == tmp_path / "ncf"
    assert len((folder / "ml-1m.test.rating").read_bytes().splitlines()) == 6040
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "ml-1m.test.negative", "ml-1m.test.rating"]
    with pytest.raises(datasets.DatasetError, match=r"lacks ncf/ml-1m.train.rating"):
        datasets.fetch("ncf", tmp_path / "other", mirror=SHARED)  # the full train file is not in shared/


def test_mirror_folder_readme_table_is_checked(tmp_path, monkeypatch):
    _patch(monkeypatch, "ml-100k", contents=())
    folder = tmp_path / "mirror" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_bytes(FAKE_RATINGS)
    (folder / "README.md").write_text(
        "| file | bytes | sha256 |\n| --- | ---: | --- |\n| `u.data` | 38 | `" + "ab" * 32 + "` |\n")
    with pytest.raises(datasets.DatasetError) as error:
        datasets.fetch("ml-100k", tmp_path / "dest", mirror=tmp_path / "mirror")
    message = str(error.value)
    assert "ab" * 32 in message and _sha256(FAKE_RATINGS) in message and "README.md" in message
    assert not (tmp_path / "dest" / "ml-100k").exists()
    # With the right value in the table the same folder is accepted.
    (folder / "README.md").write_text(f"| `u.data` | 38 | `{_sha256(FAKE_RATINGS)}` |\n")
    path = datasets.fetch("ml-100k", tmp_path / "dest", mirror=f"file://{tmp_path / 'mirror'}")
    assert path.read_bytes() == FAKE_RATINGS


def test_registry_content_hash_rejects_a_tampered_mirror_folder(tmp_path):
    folder = tmp_path / "mirror" / "ml-100k"
    folder.mkdir(parents=True)
    (folder / "u.data").write_bytes(FAKE_RATINGS)  # not the real u.data
    with pytest.raises(datasets.DatasetError, match="checksum mismatch for u.data.*expected sha256 06416e59"):
        datasets.fetch("ml-100k", tmp_path / "dest", mirror=tmp_path / "mirror")


# --------------------------------------------------------------------------- zips


def test_fetch_zip_from_local_mirror(tmp_path, fake_ml100k):
    mirror, data = fake_ml100k
    dest = tmp_path / "dest"
    path = datasets.fetch("ml-100k", dest, mirror=mirror)
    assert path == dest / "ml-100k" / "u.data"
    assert path.read_bytes() == FAKE_RATINGS
    assert (dest / "ml-100k" / "u1.base").read_bytes() == FAKE_RATINGS[:19]
    assert sorted(p.name for p in dest.iterdir()) == ["ml-100k"]  # no __MACOSX, no temp files
    assert (mirror / "ml-100k.zip").read_bytes() == data  # the mirror is left as it was
    # Idempotent; and a modified file is noticed and replaced.
    assert datasets.fetch("ml-100k", dest, mirror=mirror) == path
    path.write_bytes(b"edited\n")
    assert datasets.fetch("ml-100k", dest, mirror=mirror).read_bytes() == FAKE_RATINGS


def test_md5_is_used_when_no_sha256_is_recorded(tmp_path, fake_ml100k, monkeypatch, capsys):
    mirror, data = fake_ml100k
    _patch(monkeypatch, "ml-100k", sha256=None, md5=hashlib.md5(data).hexdigest())
    assert datasets.fetch("ml-100k", tmp_path / "a", mirror=mirror).read_bytes() == FAKE_RATINGS
    _patch(monkeypatch, "ml-100k", sha256=None, md5="0" * 32)
    with pytest.raises(datasets.DatasetError, match=f"expected md5 {'0' * 32}, got {hashlib.md5(data).hexdigest()}"):
        datasets.fetch("ml-100k", tmp_path / "b", mirror=mirror)
    _patch(monkeypatch, "ml-100k", sha256=None, md5=None)
    capsys.readouterr()
    assert datasets.fetch("ml-100k", tmp_path / "c", mirror=mirror).is_file()
    assert "no published checksum is recorded for ml-100k.zip" in capsys.readouterr().err


def test_checksum_mismatch_names_expected_and_actual(tmp_path, fake_ml100k, monkeypatch, capsys):
    mirror, data = fake_ml100k
    official = "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229"
    _patch(monkeypatch, "ml-100k", sha256=official)
    dest = tmp_path / "dest"
    with pytest.raises(datasets.DatasetError) as error:
        datasets.fetch("ml-100k", dest, mirror=mirror)
    assert f"expected sha256 {official}, got {_sha256(data)}" in str(error.value)
    assert list(dest.iterdir()) == []
    # Same from the CLI: one line, exit code 1, no traceback.
    capsys.readouterr()
    assert datasets.main(["fetch", "ml-100k", "--dest", str(dest), "--mirror", str(mirror)]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: checksum mismatch for ml-100k.zip in mirror")
    assert err.endswith(errors[0] + "\n") and "Traceback" not in err


@pytest.fixture
def http_mirror(tmp_path):
    """Serve a directory over http on 127.0.0.1 (nothing leaves the machine)."""
    root = tmp_path / "served"
    root.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_from_http_mirror_verifies_and_cleans_up(tmp_path, http_mirror, monkeypatch, capsys):
    root, base = http_mirror
    data = _fake_zip(root / "ml-100k.zip", {"ml-100k/u.data": FAKE_RATINGS})
    _patch(monkeypatch, "ml-100k", sha256=_sha256(data), contents=())
    path = datasets.fetch("ml-100k", tmp_path / "ok", mirror=base)
    assert path.read_bytes() == FAKE_RATINGS
    assert f"downloading {base}/ml-100k.zip" in capsys.readouterr().err
    # A mismatching download is deleted.
    _patch(monkeypatch, "ml-100k", sha256="f" * 64)
    with pytest.raises(datasets.DatasetError, match="the download was deleted"):
        datasets.fetch("ml-100k", tmp_path / "bad", mirror=base + "/")
    assert list((tmp_path / "bad").iterdir()) == []
    # A 404 names the URL.
    with pytest.raises(datasets.DatasetError, match=rf"could not download {base}/ml-1m.zip: HTTP Error 404"):
        datasets.fetch("ml-1m", tmp_path / "missing", mirror=base)


def test_offline_download_error_names_url_and_mirror_options(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(datasets.MIRROR_ENV, "http://127.0.0.1:9/")
    dest = tmp_path / "dest"
    with pytest.raises(datasets.DatasetError) as error:
        datasets.fetch("ml-100k", dest, timeout=5)
    message = str(error.value)
    assert message.startswith("could not download http://127.0.0.1:9/ml-100k.zip:")
    assert "--mirror" in message and datasets.MIRROR_ENV in message
    assert list(dest.iterdir()) == []
    # The official URL is used without a mirror; point it at the unreachable port too.
    monkeypatch.delenv(datasets.MIRROR_ENV)
    _patch(monkeypatch, "ml-1m", url="http://127.0.0.1:9/datasets/movielens/ml-1m.zip")
    assert datasets.main(["fetch", "ml-1m", "--dest", str(dest), "--timeout", "5"]) == 1
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("error: could not download http://127.0.0.1:9/datasets/movielens/ml-1m.zip: ")
    assert "MOVIELENS_MIRROR" in last


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil-tools-datasets.txt", "ml-100k/../../evil.txt"])
def test_path_traversal_zip_is_rejected(tmp_path, monkeypatch, evil):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = _fake_zip(mirror / "ml-100k.zip", {"ml-100k/u.data": FAKE_RATINGS, evil: b"pwned"})
    _patch(monkeypatch, "ml-100k", sha256=_sha256(data), contents=())
    dest = tmp_path / "a" / "dest"
    with pytest.raises(datasets.DatasetError, match="refusing to extract unsafe path"):
        datasets.fetch("ml-100k", dest, mirror=mirror)
    assert not (tmp_path / "a" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/evil-tools-datasets.txt").exists()
    assert list(dest.iterdir()) == []


def test_symlink_member_is_rejected(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("ml-100k/u.data", FAKE_RATINGS)
        link = zipfile.ZipInfo("ml-100k/link")
        link.external_attr = (0o120777 << 16)
        archive.writestr(link, "/etc/passwd")
    (mirror / "ml-100k.zip").write_bytes(buffer.getvalue())
    _patch(monkeypatch, "ml-100k", sha256=_sha256(buffer.getvalue()), contents=())
    with pytest.raises(datasets.DatasetError, match="unsafe path 'ml-100k/link'"):
        datasets.fetch("ml-100k", tmp_path / "dest", mirror=mirror)


def test_zip_without_the_ratings_file_is_rejected(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    data = _fake_zip(mirror / "ml-10m.zip", {"ml-10m/ratings.dat": b"1::2::3::4\n"})  # wrong folder name
    _patch(monkeypatch, "ml-10m", sha256=_sha256(data))
    with pytest.raises(datasets.DatasetError, match="ml-10m.zip has no ml-10M100K/ratings.dat"):
        datasets.fetch("ml-10m", tmp_path / "dest", mirror=mirror)


def test_mirror_without_the_dataset_and_list_command(tmp_path, capsys):
    with pytest.raises(datasets.DatasetError, match="has neither ml-25m.zip nor ml-25m/ratings.csv"):
        datasets.fetch("ml-25m", tmp_path / "dest", mirror=tmp_path)
    assert datasets.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in datasets.REGISTRY:
        assert name in out
    assert "NONE: no published checksum recorded" in out
