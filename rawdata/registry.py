"""Dataset download and verification: the registry of raw datasets and ``fetch``.

This module owns getting raw data onto local disk, verified: the MovieLens releases
(ml-100k, ml-1m, ml-10m, ml-20m, ml-25m, ml-latest-small), the NCF leave-one-out files
(``ncf``) and SNAP's LastFM Asia graph (``lastfm_asia``). It does not parse or transform
the data; that is ``beam_pipelines``' job.

Sources, in order: the ``mirror`` argument, else ``$MOVIELENS_MIRROR``, else the official
URL. A mirror is a local directory (or ``file://`` URL) or an ``http(s)://`` base URL. A
mirror directory may hold the archive (``<mirror>/ml-100k.zip``) or the already extracted
folder (``<mirror>/ml-100k/u.data``, the layout of ``../shared/data``); a URL mirror must
serve ``<mirror>/<archive>.zip`` (or ``<mirror>/<name>/<file>`` for file sets such as ncf).

Verification: an archive (or plain file) is checked against its sha256 when one is recorded,
else its md5; when neither is recorded, a warning says so and the data is used unverified.
Known sha256 values of extracted files (e.g. ml-100k's ``u.data``) are checked as well, and
for an extracted mirror folder the sha256 table of its ``README.md``, when there is one.
Every recorded value says where it was published (``Dataset.checksum_source``).

Layout under ``dest``: a zip dataset is extracted to ``dest/<folder>/`` (the zip's own top
folder, e.g. ``ml-10M100K`` for ml-10m); a file set goes to ``dest/<name>/``. Fetching is
idempotent: a dataset already fetched and still matching its checksums is left alone.

Usage::

    python -m rawdata.registry list
    python -m rawdata.registry fetch ml-100k --dest DIR [--mirror DIR_OR_URL]
    python -m rawdata.registry fetch ncf --dest DIR --file ml-1m.test.rating --file ml-1m.test.negative

``fetch`` prints progress on stderr and the fetched path (the ratings file; for a file set,
its folder) as the last line of stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Iterable, Sequence

MIRROR_ENV = "MOVIELENS_MIRROR"
DEFAULT_TIMEOUT = 60.0
MARKER = ".tools-datasets.json"
_CHUNK = 1 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(Exception):
    """A fetch or verification failure; the message is one line meant for the user."""


@dataclasses.dataclass(frozen=True)
class DataFile:
    """A file with the checksums recorded for it.

    Attributes:
        name: File name (relative to its dataset folder).
        sha256: Published sha256 (lowercase hex), or None when none is recorded.
        md5: Published md5 (lowercase hex), or None.
    """

    name: str
    sha256: str | None = None
    md5: str | None = None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One registry entry.

    Attributes:
        name: Registry name (``ml-100k``); also the folder name in a mirror directory.
        url: For a zip dataset, the archive URL; for a file set, the base URL the file names
            are appended to.
        sha256: sha256 of the archive, or None when no published value is recorded.
        md5: md5 of the archive (GroupLens publishes ``<zip>.md5``), or None.
        folder: Top folder inside the zip (also the folder created under ``dest``).
        ratings_file: The main interaction file inside ``folder``.
        description: One line for ``list``.
        checksum_source: Where the recorded checksums were published, or why none is.
        files: Non-empty for a file set (plain files under ``url``), with their checksums.
        default_files: The files a file set fetches when none are named (default: all).
        contents: Known sha256 of files inside the extracted folder, checked after extraction
            and for mirror folders.
    """

    name: str
    url: str
    sha256: str | None
    md5: str | None
    folder: str
    ratings_file: str
    description: str
    checksum_source: str
    files: tuple[DataFile, ...] = ()
    default_files: tuple[str, ...] = ()
    contents: tuple[DataFile, ...] = ()

    @property
    def is_file_set(self) -> bool:
        """True for a set of plain files (ncf), False for a zip archive."""
        return bool(self.files)

    @property
    def archive_name(self) -> str:
        """File name of the archive (``ml-10m.zip``); empty for a file set."""
        return "" if self.is_file_set else PurePosixPath(urllib.parse.urlparse(self.url).path).name

    def checksum_status(self) -> str:
        """Which checksum verification will use, in words (for ``list`` and warnings)."""
        if self.is_file_set:
            known = sum(1 for f in self.files if f.sha256 or f.md5)
            return f"sha256 for {known} of {len(self.files)} files"
        if self.sha256:
            return "sha256"
        if self.md5:
            return "md5 only (no sha256 recorded)"
        return "NONE: no published checksum recorded"


_GROUPLENS = "https://files.grouplens.org/datasets/movielens/"
_TFDS = "tensorflow/datasets tensorflow_datasets/url_checksums/movielens.txt (commit 1c076ac3)"
_GL_MD5 = "md5 from GroupLens' {zip}.md5 sidecar (as quoted by MLPerf's ncf/verify_dataset.sh and others)"

REGISTRY: dict[str, Dataset] = {
    d.name: d
    for d in (
        Dataset(
            name="ml-100k",
            url=_GROUPLENS + "ml-100k.zip",
            sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
            md5="0e33842e24a9c977be4e0107933c0723",
            folder="ml-100k",
            ratings_file="u.data",
            description="MovieLens 100K (1998): 100,000 ratings, 943 users, 1682 movies, u1..u5/ua/ub splits",
            checksum_source=f"sha256 from {_TFDS}; {_GL_MD5.format(zip='ml-100k.zip')}; "
            "u.data sha256 as in ../shared/data/ml-100k/README.md",
            contents=(DataFile("u.data", "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"),),
        ),
        Dataset(
            name="ml-1m",
            url=_GROUPLENS + "ml-1m.zip",
            sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
            md5="c4d9eecfca2ab87c1945afe126590906",
            folder="ml-1m",
            ratings_file="ratings.dat",
            description="MovieLens 1M (2003): 1,000,209 ratings, 6040 users, 3706 movies ('::' separated)",
            checksum_source=f"sha256 from {_TFDS}; {_GL_MD5.format(zip='ml-1m.zip')}",
        ),
        Dataset(
            name="ml-10m",
            url=_GROUPLENS + "ml-10m.zip",
            sha256="813c411ccb6122564edfe752e7f80c4dcc5aa25fa94c93622f6877a7ba252862",
            md5="ce571fd55effeba0271552578f2648bd",
            folder="ml-10M100K",
            ratings_file="ratings.dat",
            description="MovieLens 10M (2009): 10,000,054 ratings, 69878 users, 10677 movies ('::' separated)",
            checksum_source="sha256 not in TFDS; third-party value (omnirec's MovieLens loader and other "
            "projects, 65,566,137 bytes, all stating the GroupLens md5 matched); "
            + _GL_MD5.format(zip="ml-10m.zip"),
        ),
        Dataset(
            name="ml-20m",
            url=_GROUPLENS + "ml-20m.zip",
            sha256="96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
            md5="cd245b17a1ae2cc31bb14903e1204af3",
            folder="ml-20m",
            ratings_file="ratings.csv",
            description="MovieLens 20M (2015, links updated 2016): 20,000,263 ratings, 138493 users",
            checksum_source=f"sha256 from {_TFDS}; {_GL_MD5.format(zip='ml-20m.zip')}",
        ),
        Dataset(
            name="ml-25m",
            url=_GROUPLENS + "ml-25m.zip",
            sha256="8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
            md5="6b51fb2759a8657d3bfcbfc42b592ada",
            folder="ml-25m",
            ratings_file="ratings.csv",
            description="MovieLens 25M (2019): 25,000,095 ratings, 162541 users, 62423 movies",
            checksum_source=f"sha256 from {_TFDS}; {_GL_MD5.format(zip='ml-25m.zip')}",
        ),
        Dataset(
            name="ml-latest-small",
            url=_GROUPLENS + "ml-latest-small.zip",
            sha256="696d65a3dfceac7c45750ad32df2c259311949efec81f0f144fdfb91ebc9e436",
            md5=None,
            folder="ml-latest-small",
            ratings_file="ratings.csv",
            description="MovieLens latest-small (2018-09 snapshot): 100,836 ratings, 610 users, 9742 movies",
            checksum_source=f"sha256 (978,202-byte 2018-09 snapshot) from {_TFDS}; no md5 recorded; "
            "ratings.csv sha256 as in ../shared/data/ml-latest-small/README.md",
            contents=(DataFile("ratings.csv", "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646"),),
        ),
        Dataset(
            name="ncf",
            url="https://raw.githubusercontent.com/hexiangnan/neural_collaborative_filtering/master/Data/",
            sha256=None,
            md5=None,
            folder="ncf",
            ratings_file="ml-1m.train.rating",
            description="NCF (He et al. 2017) leave-one-out files: ML-1M and Pinterest train/test.rating, "
            "test.negative",
            checksum_source="per-file sha256 as in ../shared/data/ncf/README.md (authors' repo commit 4aab159e); "
            "none recorded for the train files and pinterest-20.test.negative",
            files=(
                DataFile("ml-1m.train.rating"),
                DataFile("ml-1m.test.rating", "231ae11eb060b643a8c58c063cd17ffc743b54f569afb073d1abb6cf126b88b5"),
                DataFile("ml-1m.test.negative", "127853228a76b7d21c0481e8ef8d00dd009cd5c88670dbdd9e9debfdb9f93de4"),
                DataFile("pinterest-20.train.rating"),
                DataFile(
                    "pinterest-20.test.rating", "3a8a8f7eb8e21cc5928b8259dd2c265269ecfa219d92ba829249956aa293d732"
                ),
                DataFile("pinterest-20.test.negative"),
            ),
            default_files=("ml-1m.train.rating", "ml-1m.test.rating", "ml-1m.test.negative"),
        ),
        Dataset(
            name="lastfm_asia",
            url="https://snap.stanford.edu/data/lastfm_asia.zip",
            sha256=None,
            md5=None,
            folder="lasftm_asia",  # sic: SNAP's zip spells its folder this way
            ratings_file="lastfm_asia_edges.csv",
            description="SNAP LastFM Asia social graph (2020): 7624 users, 27806 edges, 18 country classes",
            checksum_source="no published checksum for the zip; edges/target sha256 from the author's Git LFS "
            "pointers (as in ../shared/data/lastfm_asia/README.md)",
            contents=(
                DataFile("lastfm_asia_edges.csv", "548eacff61bff564ab5007831fa4a7a30e1a3956075ffd24e43310ed33555842"),
                DataFile("lastfm_asia_target.csv", "91f19215f6eca8321feec038bd32900cf13fd4f7e041a9976cf202807c72ac16"),
            ),
        ),
    )
}


def get(name: str) -> Dataset:
    """Look a dataset up in the registry.

    Args:
        name: Registry name, e.g. ``ml-100k``.

    Returns:
        The registry entry.

    Raises:
        DatasetError: Unknown name (the message lists the known ones).
    """
    try:
        return REGISTRY[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(REGISTRY)}") from None


# --------------------------------------------------------------------------- hashing


def file_digests(path: Path) -> tuple[str, str]:
    """Hash a file once for both algorithms.

    Args:
        path: File to hash.

    Returns:
        ``(sha256, md5)`` as lowercase hex.
    """
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            sha.update(chunk)
            md5.update(chunk)
    return sha.hexdigest(), md5.hexdigest()


def verify_file(path: Path, sha256: str | None, md5: str | None, label: str, log: IO[str]) -> str:
    """Check a file against its recorded checksum: sha256 when known, md5 otherwise.

    Args:
        path: File to check.
        sha256: Expected sha256, or None.
        md5: Expected md5, or None.
        label: How to name the file in messages (e.g. ``ml-100k.zip from URL``).
        log: Stream for the warning printed when no checksum is recorded.

    Returns:
        The file's actual sha256.

    Raises:
        DatasetError: The checksum does not match (message has expected and actual).
    """
    actual_sha, actual_md5 = file_digests(path)
    if sha256:
        if actual_sha != sha256:
            raise DatasetError(f"checksum mismatch for {label}: expected sha256 {sha256}, got {actual_sha}")
    elif md5:
        if actual_md5 != md5:
            raise DatasetError(f"checksum mismatch for {label}: expected md5 {md5}, got {actual_md5}")
    else:
        print(
            f"WARNING: no published checksum is recorded for {label}; it was NOT verified "
            f"(sha256 {actual_sha})",
            file=log,
        )
    return actual_sha


def readme_sha256(folder: Path) -> dict[str, str]:
    """Read the ``| file | ... | sha256 |`` table of ``folder/README.md`` (the shared/data layout).

    Args:
        folder: A mirror folder.

    Returns:
        File name -> sha256; empty when there is no README.md or no such table.
    """
    readme = folder / "README.md"
    if not readme.is_file():
        return {}
    table: dict[str, str] = {}
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        cells = [cell.strip().strip("`").strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) < 2:
            continue
        hashes = [cell.lower() for cell in cells[1:] if _HEX64.match(cell.lower())]
        if hashes:
            table[cells[0]] = hashes[-1]
    return table


# --------------------------------------------------------------------------- sources


def _resolve_mirror(mirror: str | os.PathLike[str] | None) -> tuple[str, str] | None:
    """Classify the mirror: ``("dir", path)``, ``("url", base)`` or None (official URL)."""
    if mirror is None:
        mirror = os.environ.get(MIRROR_ENV) or None
    if mirror is None:
        return None
    text = os.fspath(mirror)
    scheme = urllib.parse.urlparse(text).scheme.lower()
    if scheme == "file":
        return "dir", urllib.request.url2pathname(urllib.parse.urlparse(text).path)
    if scheme in ("http", "https"):
        return "url", text if text.endswith("/") else text + "/"
    if scheme and len(scheme) > 1:  # one letter would be a Windows drive
        raise DatasetError(f"unsupported mirror {text!r}: use a directory, a file:// URL or an http(s):// URL")
    return "dir", text


def _offline_hint(dataset: Dataset) -> str:
    what = (
        f"{dataset.name}/<file>" if dataset.is_file_set
        else f"{dataset.archive_name} or an extracted {dataset.name}/ folder"
    )
    return f"if offline, pass --mirror DIR_OR_URL (or set {MIRROR_ENV}) to a mirror holding {what}"


def download(url: str, target: Path, timeout: float, log: IO[str], hint: str = "") -> None:
    """Stream ``url`` into ``target``, printing progress.

    Args:
        url: http(s) (or file) URL.
        target: Destination file (overwritten).
        timeout: Socket timeout in seconds.
        log: Progress stream.
        hint: Appended to the error message (e.g. how to use a mirror).

    Raises:
        DatasetError: The download failed; the message names the URL.
    """
    print(f"downloading {url}", file=log)
    started = time.monotonic()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done, next_report = 0, 0.0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                now = time.monotonic() - started
                if now >= next_report:
                    share = f" ({100 * done / total:.0f}%)" if total else ""
                    print(f"  {done / 1e6:.1f} MB{share}", file=log)
                    next_report = now + 2.0
            if total and done != total:
                raise DatasetError(f"download of {url} was cut short: got {done} of {total} bytes")
    except DatasetError:
        raise
    except (OSError, ValueError, http.client.HTTPException) as error:  # URLError, HTTPError, timeouts
        reason = error if isinstance(error, urllib.error.HTTPError) else getattr(error, "reason", None) or error
        raise DatasetError(f"could not download {url}: {reason}" + (f"; {hint}" if hint else "")) from None
    print(f"  {done / 1e6:.1f} MB in {time.monotonic() - started:.1f} s", file=log)


# --------------------------------------------------------------------------- extraction


def _safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Members of ``archive``, refusing absolute paths, ``..``, drive letters and symlinks."""
    members = []
    for info in archive.infolist():
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        mode = info.external_attr >> 16
        if (
            name.startswith(("/", "\\"))
            or ".." in parts
            or (parts and ":" in parts[0])
            or stat.S_ISLNK(mode)
        ):
            raise DatasetError(f"refusing to extract unsafe path {name!r} from {archive.filename}")
        members.append(info)
    return members


def extract_zip(zip_path: Path, dataset: Dataset, dest: Path) -> Path:
    """Extract ``zip_path`` safely and move its folder to ``dest/<folder>``.

    Args:
        zip_path: A verified archive.
        dataset: Its registry entry (for the folder and ratings file names).
        dest: Destination root.

    Returns:
        ``dest/<folder>``.

    Raises:
        DatasetError: Not a zip, an unsafe member, or the ratings file is missing.
    """
    try:
        archive = zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile:
        raise DatasetError(f"{zip_path.name} is not a valid zip archive") from None
    with archive:
        members = _safe_members(archive)
        expected = f"{dataset.folder}/{dataset.ratings_file}"
        if expected not in {m.filename for m in members}:
            raise DatasetError(f"{zip_path.name} has no {expected}")
        staging = Path(tempfile.mkdtemp(prefix=f".{dataset.folder}.", dir=dest))
        try:
            root = staging.resolve()
            for info in members:
                target = (staging / info.filename).resolve()
                if root not in target.parents and target != root:
                    raise DatasetError(f"refusing to extract unsafe path {info.filename!r} from {zip_path.name}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(info) as source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out, _CHUNK)
            return _install(staging / dataset.folder, dest / dataset.folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _install(staged: Path, final: Path) -> Path:
    """Replace ``final`` with the ``staged`` folder."""
    if final.exists():
        shutil.rmtree(final)
    staged.rename(final)
    return final


def _copy_folder(source: Path, final: Path, dest: Path) -> Path:
    """Copy a mirror folder (files only, without the mirror's read-only modes) to ``final``."""
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=dest))
    try:
        staged = staging / final.name
        for directory, _, names in os.walk(source):
            relative = Path(directory).relative_to(source)
            (staged / relative).mkdir(parents=True, exist_ok=True)
            for name in names:
                shutil.copyfile(Path(directory) / name, staged / relative / name)
        return _install(staged, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- verification of results


def _check_contents(folder: Path, dataset: Dataset, label: str) -> dict[str, str]:
    """Check the registry's known sha256 of extracted files that are present in ``folder``."""
    seen = {}
    for known in dataset.contents:
        path = folder / known.name
        if path.is_file():
            actual = file_digests(path)[0]
            if actual != known.sha256:
                raise DatasetError(
                    f"checksum mismatch for {known.name} in {label}: expected sha256 {known.sha256}, got {actual}"
                )
            seen[known.name] = actual
    return seen


def _read_marker(folder: Path) -> dict:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return {}


def _write_marker(folder: Path, dataset: Dataset, source: str, hashes: dict[str, str]) -> None:
    marker = {"dataset": dataset.name, "source": source, "sha256": dict(sorted(hashes.items()))}
    (folder / MARKER).write_text(json.dumps(marker, indent=1) + "\n")


def _already_fetched(folder: Path, dataset: Dataset, names: Iterable[str]) -> bool:
    """True when every file in ``names`` is in ``folder`` and matches the marker and registry."""
    recorded = _read_marker(folder).get("sha256", {})
    known = {f.name: f.sha256 for f in (*dataset.files, *dataset.contents) if f.sha256}
    for name in names:
        path = folder / name
        if not path.is_file() or name not in recorded:
            return False
        actual = file_digests(path)[0]
        if actual != recorded[name] or (name in known and actual != known[name]):
            return False
    return True


# --------------------------------------------------------------------------- fetch


def fetch(
    name: str,
    dest: str | os.PathLike[str],
    mirror: str | os.PathLike[str] | None = None,
    *,
    files: Sequence[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    log: IO[str] | None = None,
) -> Path:
    """Make a verified copy of a dataset under ``dest`` (idempotent).

    Args:
        name: Registry name (see ``REGISTRY``).
        dest: Destination root; created if missing.
        mirror: A directory / ``file://`` URL or ``http(s)://`` base URL to use instead of the
            official URL; None means ``$MOVIELENS_MIRROR`` when set, else the official URL.
        files: For a file set (ncf), which files to fetch; default ``Dataset.default_files``.
        timeout: Socket timeout for downloads, in seconds.
        log: Progress / warning stream (default stderr).

    Returns:
        The ratings file (``dest/<folder>/<ratings_file>``) for a zip dataset; the folder
        (``dest/<name>``) for a file set.

    Raises:
        DatasetError: Unknown dataset, download failure, checksum mismatch, unsafe archive,
            or a mirror that does not hold the dataset.
    """
    dataset = get(name)
    log = sys.stderr if log is None else log
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    source = _resolve_mirror(mirror)
    if dataset.is_file_set:
        return _fetch_files(dataset, dest, source, files, timeout, log)
    if files:
        raise DatasetError(f"{name} is a zip archive; --file only applies to file sets ({_file_sets()})")
    return _fetch_zip(dataset, dest, source, timeout, log)


def _file_sets() -> str:
    return ", ".join(d.name for d in REGISTRY.values() if d.is_file_set)


def _fetch_zip(dataset: Dataset, dest: Path, source: tuple[str, str] | None, timeout: float, log: IO[str]) -> Path:
    folder = dest / dataset.folder
    ratings = folder / dataset.ratings_file
    if _already_fetched(folder, dataset, [dataset.ratings_file]):
        print(f"{dataset.name}: already in {folder}, verified", file=log)
        return ratings

    if source and source[0] == "dir":
        mirror_dir = Path(source[1]).expanduser()
        if not mirror_dir.is_dir():
            raise DatasetError(f"mirror directory {mirror_dir} does not exist")
        local_zip = mirror_dir / dataset.archive_name
        if local_zip.is_file():
            label = f"{dataset.archive_name} in mirror {mirror_dir}"
            print(f"{dataset.name}: verifying {local_zip}", file=log)
            archive_sha = verify_file(local_zip, dataset.sha256, dataset.md5, label, log)
            return _finish_zip(local_zip, dataset, dest, str(local_zip), archive_sha)
        for candidate in dict.fromkeys((dataset.name, dataset.folder)):
            if (mirror_dir / candidate / dataset.ratings_file).is_file():
                return _from_mirror_folder(mirror_dir / candidate, dataset, dest, log)
        raise DatasetError(
            f"mirror {mirror_dir} has neither {dataset.archive_name} nor {dataset.name}/{dataset.ratings_file}"
        )

    url = source[1] + dataset.archive_name if source else dataset.url
    handle, temp_name = tempfile.mkstemp(prefix=f".{dataset.archive_name}.", suffix=".part", dir=dest)
    os.close(handle)
    temp = Path(temp_name)
    try:
        download(url, temp, timeout, log, hint=_offline_hint(dataset))
        try:
            archive_sha = verify_file(temp, dataset.sha256, dataset.md5, f"{dataset.archive_name} from {url}", log)
        except DatasetError as error:
            raise DatasetError(f"{error}; the download was deleted") from None
        return _finish_zip(temp, dataset, dest, url, archive_sha)
    finally:
        temp.unlink(missing_ok=True)


def _finish_zip(zip_path: Path, dataset: Dataset, dest: Path, source: str, archive_sha: str) -> Path:
    folder = extract_zip(zip_path, dataset, dest)
    try:
        hashes = _check_contents(folder, dataset, f"{dataset.archive_name} from {source}")
    except DatasetError:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    hashes.setdefault(dataset.ratings_file, file_digests(folder / dataset.ratings_file)[0])
    _write_marker(folder, dataset, f"{source} (archive sha256 {archive_sha})", hashes)
    return folder / dataset.ratings_file


def _from_mirror_folder(source: Path, dataset: Dataset, dest: Path, log: IO[str]) -> Path:
    """Verify an extracted mirror folder (registry contents + README.md table) and copy it."""
    label = f"mirror folder {source}"
    print(f"{dataset.name}: using extracted {label}", file=log)
    hashes = _check_contents(source, dataset, label)
    table = readme_sha256(source)
    if dataset.ratings_file in table:
        actual = hashes.get(dataset.ratings_file) or file_digests(source / dataset.ratings_file)[0]
        if actual != table[dataset.ratings_file]:
            raise DatasetError(
                f"checksum mismatch for {dataset.ratings_file} in {label}: expected sha256 "
                f"{table[dataset.ratings_file]} (from its README.md), got {actual}"
            )
        hashes[dataset.ratings_file] = actual
    elif not hashes:
        print(f"WARNING: no checksum is recorded for {dataset.ratings_file} in {label}; NOT verified", file=log)
    folder = _copy_folder(source, dest / dataset.folder, dest)
    hashes.setdefault(dataset.ratings_file, file_digests(folder / dataset.ratings_file)[0])
    _write_marker(folder, dataset, str(source), hashes)
    return folder / dataset.ratings_file


def _fetch_files(
    dataset: Dataset,
    dest: Path,
    source: tuple[str, str] | None,
    names: Sequence[str] | None,
    timeout: float,
    log: IO[str],
) -> Path:
    by_name = {f.name: f for f in dataset.files}
    names = list(dict.fromkeys(names or dataset.default_files or by_name))
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise DatasetError(f"{dataset.name} has no file(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    folder = dest / dataset.folder
    if _already_fetched(folder, dataset, names):
        print(f"{dataset.name}: already in {folder}, verified", file=log)
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    marker = _read_marker(folder)
    hashes: dict[str, str] = dict(marker.get("sha256", {}))
    mirror_dir = Path(source[1]).expanduser() if source and source[0] == "dir" else None
    table = {}
    if mirror_dir is not None:
        candidates = [mirror_dir / dataset.name, mirror_dir]
        mirror_dir = next((c for c in candidates if all((c / n).is_file() for n in names)), None)
        if mirror_dir is None:
            missing = [n for n in names if not (candidates[0] / n).is_file()]
            raise DatasetError(f"mirror {candidates[1]} lacks {dataset.name}/{', '.join(missing)}")
        table = readme_sha256(mirror_dir)
    for name in names:
        entry = by_name[name]
        target = folder / name
        if _already_fetched(folder, dataset, [name]):
            continue
        handle, temp_name = tempfile.mkstemp(prefix=f".{name}.", suffix=".part", dir=folder)
        os.close(handle)
        temp = Path(temp_name)
        try:
            if mirror_dir is not None:
                origin = str(mirror_dir / name)
                print(f"{dataset.name}: copying {origin}", file=log)
                shutil.copyfile(mirror_dir / name, temp)
            else:
                origin = (source[1] + f"{dataset.name}/" if source else dataset.url) + name
                download(origin, temp, timeout, log, hint=_offline_hint(dataset))
            expected = entry.sha256 or table.get(name)
            try:
                hashes[name] = verify_file(temp, expected, entry.md5, f"{name} from {origin}", log)
            except DatasetError as error:
                raise DatasetError(f"{error}; the copy was deleted") from None
            temp.replace(target)
        finally:
            temp.unlink(missing_ok=True)
        _write_marker(folder, dataset, str(source[1]) if source else dataset.url, hashes)
    return folder


# --------------------------------------------------------------------------- CLI


def _list(out: IO[str]) -> None:
    width = max(len(n) for n in REGISTRY)
    for dataset in REGISTRY.values():
        print(f"{dataset.name:<{width}}  {dataset.description}", file=out)
        where = dataset.url
        if dataset.is_file_set:
            where += "{" + ",".join(f.name for f in dataset.files) + "}"
        print(f"{'':<{width}}  url: {where}", file=out)
        ratings = dataset.ratings_file if dataset.is_file_set else f"{dataset.folder}/{dataset.ratings_file}"
        print(f"{'':<{width}}  ratings: {ratings}; checksum: {dataset.checksum_status()}", file=out)
        print(f"{'':<{width}}  source of checksums: {dataset.checksum_source}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point.

    Args:
        argv: Arguments without the program name (default ``sys.argv[1:]``).

    Returns:
        Process exit code: 0 on success, 1 on a dataset error (one line on stderr).
    """
    parser = argparse.ArgumentParser(prog="python -m rawdata.registry", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="show the registry")
    fetch_parser = commands.add_parser("fetch", help="download (or copy from a mirror), verify and extract")
    fetch_parser.add_argument("name", help=", ".join(REGISTRY))
    fetch_parser.add_argument("--dest", required=True, help="destination root directory")
    fetch_parser.add_argument("--mirror", help=f"directory, file:// or http(s):// mirror (default ${MIRROR_ENV})")
    fetch_parser.add_argument("--file", action="append", dest="files", help="file of a file set (repeatable)")
    fetch_parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="download timeout, seconds")
    args = parser.parse_args(argv)
    try:
        if args.command == "list":
            _list(sys.stdout)
            return 0
        path = fetch(args.name, args.dest, args.mirror, files=args.files, timeout=args.timeout)
    except DatasetError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(f"error: {error.strerror or error}: {error.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
