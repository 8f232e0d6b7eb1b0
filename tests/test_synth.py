"""rawdata.synth: generated ratings (shape, determinism, planted learnable structure) and
the raw-format writers (each format, corruption knobs, CLI)."""
from __future__ import annotations

import gzip
import time

import numpy as np
import pytest

from beam_pipelines import common
from beam_pipelines import movielens as ml
from rawdata import synth


@pytest.fixture(scope="module")
def data() -> synth.SyntheticRatings:
    return synth.generate_ratings(400, 300, 30000, seed=3)


def _pair_keys(d: synth.SyntheticRatings) -> np.ndarray:
    return d.users.astype(np.int64) * 1_000_000 + d.items


# --------------------------------------------------------------------------- generation
def test_shapes_ranges_and_counts(data):
    assert len(data) == 30000
    for column in (data.users, data.items, data.ratings, data.timestamps):
        assert column.shape == (30000,)
    assert data.users.dtype == np.int64 and data.items.dtype == np.int64 and data.timestamps.dtype == np.int64
    assert data.users.min() == 1 and data.users.max() == 400
    assert data.items.min() >= 1 and data.items.max() <= 300
    assert set(np.unique(data.ratings).tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    per_user = np.bincount(data.users)[1:]
    assert len(per_user) == 400 and per_user.min() >= 5
    assert per_user.max() <= 150  # at most half the catalogue: negatives remain
    assert data.truth.user_factors.shape == (400, 8) and data.truth.item_factors.shape == (300, 8)
    assert np.isclose(data.truth.item_popularity.sum(), 1.0)


def test_user_activity_is_heavy_tailed():
    d = synth.generate_ratings(2000, 2000, 40000, seed=0)
    per_user = np.bincount(d.users)[1:]
    assert per_user.min() == 5 and per_user.sum() == 40000
    assert per_user.max() > 10 * np.median(per_user)


def test_no_duplicate_pairs_and_increasing_time(data):
    assert len(np.unique(_pair_keys(data))) == len(data)
    assert (np.diff(data.users) >= 0).all()
    same_user = data.users[1:] == data.users[:-1]
    assert (np.diff(data.timestamps)[same_user] > 0).all()
    assert data.timestamps.min() >= 946684800  # 2000-01-01


def test_popularity_is_skewed(data):
    per_item = np.sort(np.bincount(data.items, minlength=301)[1:])[::-1]
    top_decile_share = per_item[:30].sum() / per_item.sum()
    assert top_decile_share > 0.2  # uniform popularity gives 0.1 (capped by 400 users per item)
    # The planted popularity drives the counts.
    order = np.argsort(-data.truth.item_popularity)
    counts_by_planted = np.bincount(data.items - 1, minlength=300)[order]
    assert counts_by_planted[:30].sum() > 3 * counts_by_planted[-30:].sum()


def test_deterministic_by_seed():
    a = synth.generate_ratings(50, 40, 900, seed=11)
    b = synth.generate_ratings(50, 40, 900, seed=11)
    c = synth.generate_ratings(50, 40, 900, seed=12)
    for column in ("users", "items", "ratings", "timestamps"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    assert not (np.array_equal(a.items, c.items) and np.array_equal(a.ratings, c.ratings))


def test_dense_corner_fills_whole_catalogue():
    d = synth.generate_ratings(10, 10, 100, seed=2)
    assert len(np.unique(_pair_keys(d))) == 100  # every (user, item) pair exactly once


def test_duplicates_when_asked():
    d = synth.generate_ratings(60, 50, 2000, seed=5, duplicate_fraction=0.1)
    assert len(d) == 2000
    keys = _pair_keys(d)
    assert len(keys) - len(np.unique(keys)) == 200
    # A duplicate re-rates the pair later: the pair's rows are in time order.
    order = np.lexsort((d.timestamps, keys))
    repeated = keys[order][1:] == keys[order][:-1]
    assert repeated.sum() == 200
    assert (np.diff(d.timestamps[order])[repeated] > 0).all()


def test_half_stars_and_first_id():
    d = synth.generate_ratings(30, 20, 300, seed=1, half_stars=True, first_id=0)
    assert d.users.min() == 0 and d.items.min() >= 0 and d.users.max() == 29
    values = set(np.unique(d.ratings).tolist())
    assert values <= {x / 2 for x in range(1, 11)} and any(not v.is_integer() for v in values)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_users=10, num_items=5, num_ratings=9),  # fewer ratings than users
        dict(num_users=3, num_items=3, num_ratings=10),  # more pairs than exist
        dict(num_users=3, num_items=3, num_ratings=5, duplicate_fraction=1.0),
    ],
)
def test_impossible_sizes_raise(kwargs):
    with pytest.raises(ValueError):
        synth.generate_ratings(seed=0, **kwargs)


def _als_residual_fit(u, i, residual, num_users, num_items, rank=8, lam=3.0, iterations=12):
    """Alternating least squares on residuals of the bias model (closed-form solves)."""
    rng = np.random.default_rng(0)
    P = rng.normal(0, 0.1, (num_users, rank))
    Q = rng.normal(0, 0.1, (num_items, rank))
    by_user = np.split(np.argsort(u, kind="stable"), np.cumsum(np.bincount(u, minlength=num_users))[:-1])
    by_item = np.split(np.argsort(i, kind="stable"), np.cumsum(np.bincount(i, minlength=num_items))[:-1])
    eye = lam * np.eye(rank)
    for _ in range(iterations):
        for X, Y, groups, other in ((P, Q, by_user, i), (Q, P, by_item, u)):
            for e, rows in enumerate(groups):
                Ye = Y[other[rows]]
                X[e] = np.linalg.solve(Ye.T @ Ye + eye, Ye.T @ residual[rows])
    return P, Q


def test_planted_structure_is_learnable(data):
    """Biases beat the global mean, and a rank-8 factorization beats the biases, clearly."""
    u, i, r = data.users - 1, data.items - 1, data.ratings.astype(np.float64)
    test = np.random.default_rng(0).random(len(r)) < 0.2
    train = ~test
    mu = r[train].mean()

    def rmse(prediction):
        return float(np.sqrt(np.mean((r[test] - np.clip(prediction, 1, 5)) ** 2)))

    bu, bi = np.zeros(400), np.zeros(300)
    for _ in range(10):
        bi = np.bincount(i[train], r[train] - mu - bu[u[train]], 300) / (np.bincount(i[train], minlength=300) + 5)
        bu = np.bincount(u[train], r[train] - mu - bi[i[train]], 400) / (np.bincount(u[train], minlength=400) + 5)
    P, Q = _als_residual_fit(u[train], i[train], r[train] - mu - bu[u[train]] - bi[i[train]], 400, 300)

    global_rmse = rmse(np.full(test.sum(), mu))
    bias_rmse = rmse(mu + bu[u[test]] + bi[i[test]])
    mf_rmse = rmse(mu + bu[u[test]] + bi[i[test]] + np.einsum("nk,nk->n", P[u[test]], Q[i[test]]))
    oracle_rmse = rmse(data.truth.expected_rating(u[test], i[test]))
    assert global_rmse > 0.9
    assert bias_rmse < global_rmse - 0.1
    assert mf_rmse < bias_rmse - 0.15
    assert oracle_rmse < mf_rmse  # nothing beats the planted truth


@pytest.mark.slow
def test_one_million_ratings_in_seconds(tmp_path):
    started = time.perf_counter()
    d = synth.generate_ratings(9433, 16666, 1_000_000, seed=0)
    report = synth.write_ratings(d, str(tmp_path / "big.tsv"), "tab")
    elapsed = time.perf_counter() - started
    assert report.data_lines == 1_000_000 and report.total_lines == 1_000_000
    assert len(np.unique(_pair_keys(d))) == 1_000_000
    assert elapsed < 15, f"1M ratings took {elapsed:.1f} s"


# --------------------------------------------------------------------------- writers
ROWS = [(1, 10, 5.0, 881250949), (2, 20, 3.5, 891717742), (3, 30, 1.0, 7)]


@pytest.mark.parametrize(
    "fmt, name, expected",
    [
        ("tab", "u.data", "1\t10\t5\t881250949\n2\t20\t3.5\t891717742\n3\t30\t1\t7\n"),
        ("ncf", "x.rating", "1\t10\t5\t881250949\n2\t20\t3.5\t891717742\n3\t30\t1\t7\n"),
        ("dat", "ratings.dat", "1::10::5::881250949\n2::20::3.5::891717742\n3::30::1::7\n"),
        (
            "csv",
            "ratings.csv",
            "userId,movieId,rating,timestamp\n1,10,5.0,881250949\n2,20,3.5,891717742\n3,30,1.0,7\n",
        ),
    ],
)
def test_write_each_format(tmp_path, fmt, name, expected):
    path = tmp_path / name
    report = synth.write_ratings(ROWS, str(path), fmt)
    assert path.read_text(encoding="utf-8") == expected
    assert report == synth.WriteReport(str(path), fmt, 3, int(fmt == "csv"), [], 0, 3 + int(fmt == "csv"))
    # What the writer makes, the pipeline's parser and format detection read back.
    lines = path.read_text(encoding="utf-8").splitlines()
    assert ml.detect_format(str(path), lines[:2]) == fmt
    data_lines = [line for line in lines if not ml.is_header(line, fmt)]
    parsed = [ml.parse_rating_fields(line, fmt, (0.0, 5.0)) for line in data_lines]
    assert parsed == [(str(u), str(i), r, t) for u, i, r, t in ROWS]


def test_write_corruption_knobs(tmp_path):
    path = tmp_path / "ratings.csv"
    report = synth.write_ratings(
        ROWS,
        str(path),
        "csv",
        crlf=True,
        bom=True,
        trailing_blank_lines=2,
        malformed=[(1, "1,2,three,4"), (0, "oops"), (99, "end,,,"), (1, "x")],
    )
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n")
    assert raw.endswith(b"3,30,1.0,7\r\nend,,,\r\n\r\n\r\n")
    lines = raw.split(b"\r\n")[:-1]
    assert b"\n" not in b"".join(lines)
    assert [common.decode_line(line, n == 1) for n, line in enumerate(lines, 1)] == [
        "userId,movieId,rating,timestamp",
        "oops",
        "1,10,5.0,881250949",
        "1,2,three,4",
        "x",
        "2,20,3.5,891717742",
        "3,30,1.0,7",
        "end,,,",
        "",
        "",
    ]
    assert report.malformed_lines == [2, 4, 5, 8]
    assert (report.data_lines, report.header_lines, report.blank_lines, report.total_lines) == (3, 1, 2, 10)


def test_write_malformed_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "_CHUNK_ROWS", 4)
    rows = [(u, u, 3.0, u) for u in range(1, 11)]
    path = tmp_path / "u.data"
    report = synth.write_ratings(rows, str(path), "tab", malformed=[(4, "m4"), (8, "m8"), (3, "m3"), (10, "m10")])
    lines = path.read_text().splitlines()
    assert len(lines) == report.total_lines == 14
    assert [lines[n - 1] for n in report.malformed_lines] == ["m3", "m4", "m8", "m10"]
    assert [line for line in lines if not line.startswith("m")] == [f"{u}\t{u}\t3\t{u}" for u in range(1, 11)]


def test_write_synthetic_gzip_and_empty(tmp_path):
    d = synth.generate_ratings(20, 15, 150, seed=0, first_id=0)
    path = tmp_path / "train.rating.gz"
    report = synth.write_ratings(d, str(path), "ncf")
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    assert len(lines) == report.data_lines == 150
    assert lines[0] == "\t".join(str(x) for x in (d.users[0], d.items[0], int(d.ratings[0]), d.timestamps[0]))

    empty = tmp_path / "empty.dat"
    assert synth.write_ratings([], str(empty), "dat", bom=True).total_lines == 0
    assert empty.read_bytes() == b"\xef\xbb\xbf"
    with pytest.raises(ValueError, match="unknown format"):
        synth.write_ratings(ROWS, str(tmp_path / "x"), "parquet")


def test_cli_movielens(tmp_path, capsys):
    path = tmp_path / "ratings.dat"
    argv = ["movielens", "--num-ratings", "2000", "--num-users", "40", "--num-items", "60"]
    assert synth.main([*argv, "--format", "dat", "--output", str(path), "--seed", "4"]) == 0
    out = capsys.readouterr().out
    assert "wrote 2000 ratings (40 users" in out and str(path) in out
    lines = path.read_text().splitlines()
    assert len(lines) == 2000 and all(line.count("::") == 3 for line in lines)
    expected = synth.generate_ratings(40, 60, 2000, seed=4)
    assert lines[-1] == "::".join(
        str(x) for x in (expected.users[-1], expected.items[-1], int(expected.ratings[-1]), expected.timestamps[-1])
    )

    # Sizes default from the number of ratings (as tools/benchmark.py calls it), at any scale.
    for n in (10, 5000):
        default = tmp_path / f"default-{n}.tsv"
        assert synth.main(["movielens", "--num-ratings", str(n), "--output", str(default), "--seed", "0"]) == 0
        assert len(default.read_text().splitlines()) == n
    capsys.readouterr()

    assert synth.main(["movielens", "--num-ratings", "5", "--num-users", "10", "--output", str(path)]) == 2
    assert "cannot cover 10 users" in capsys.readouterr().err
