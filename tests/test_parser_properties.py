"""Property-based tests (hypothesis) of every raw-input parser: arbitrary lines never crash,
and every line lands in exactly one place (issue 11).

"One place" per parser: a MovieLens line is blank, a first-line header, one
``Rating`` or one rejection carrying its own text and line; an NCF negatives line
is parsed or a ``RowError``; a LastFM edge/target line is one of header, blank,
row, rejected; every entry of a features file (object or JSON lines, duplicate
keys included) is one yielded item; a playlists CSV/follows line is parsed or a
``RowError``, an MPD document is its list or a ``RowError``. Accepted values are
canonical (ids are ASCII digits without leading zeros, ratings obey the file's
rule) and parse back to themselves.

Reading: for any bytes, a compressed file either reads back exactly (whole) or
fails with ``InputFileError`` (any strict prefix): never a shorter file.

CI runs each property with a fixed number of derandomized examples
(``settings`` below; ~1.5k examples in all, a few seconds).
"""
from __future__ import annotations

import bz2
import gzip
import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apache_beam.pvalue import TaggedOutput

from beam_pipelines import common, lastfm
from beam_pipelines import movielens as ml
from beam_pipelines import playlist_collections as pc

# Reproducible in CI (same examples every run), no example database written into the repo.
PROPERTY = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

FIELDS = st.one_of(
    st.integers(-3, 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "0", "0.5", "1", "3.5", "5", "5.0", "007", "+3", "1e0", "0x10", "1_0", "nan", "-inf",
                     "\u00b2", "\u0661", "\uff11", "\t", " 4 ", '"', "(1,2)", "a,b", "1/2", "mpd:3"]),
    st.text(max_size=6),
)


def _line(text: str) -> str:
    """A text as ``read_positioned_lines`` gives it: no line break inside, none at the end."""
    return text.replace("\n", " ").rstrip("\r\n")


def delimited(delimiter: str):
    return st.lists(FIELDS, max_size=6).map(delimiter.join).map(_line)


LINES = st.one_of(st.text(max_size=40).map(_line), delimited("\t"), delimited("::"), delimited(","))
# Lines of every layout that are valid or nearly so, so accepted rows are exercised too.
RATING_LIKE = st.builds(
    lambda d, u, i, r, t: _line(d.join([u, i, r, t])), st.sampled_from(["\t", "::", ","]),
    st.integers(0, 10**7).map(str), st.integers(0, 10**7).map(str),
    st.sampled_from(["0", "0.5", "1", "2.5", "3", "4.0", "5", "5.5", " 4 ", "1e0"]), st.integers(-1, 2**40).map(str))
ASCII_ID = re.compile(r"0|[1-9][0-9]*")


# --------------------------------------------------------------------------- MovieLens ratings
@PROPERTY
@given(lines=st.lists(st.one_of(LINES, RATING_LIKE), min_size=1, max_size=8), fmt=st.sampled_from(ml.FORMATS),
       path=st.sampled_from(["/d/ml-100k/u.data", "/d/ml-1m/ratings.dat", "/d/ml-10M100K/ratings.dat",
                             "/d/ml-25m/ratings.csv", "/d/ncf/ml-1m.train.rating"]))
def test_rating_lines_each_land_in_exactly_one_place(lines, fmt, path):
    rule = ml.default_rating_rule(path, fmt)[0]
    parse = ml.ParseRatingLines({path: fmt}, ml.INPUT_SIDE, {path: rule})
    for number, text in enumerate(lines, start=1):
        out = list(parse.process((path, number, text)))
        if not text.strip() or (number == 1 and ml.is_header(text, fmt)):
            assert out == []  # counted as a blank or header line
            continue
        assert len(out) == 1, (text, out)
        if isinstance(out[0], TaggedOutput):
            assert out[0].tag == "rejected"
            record = out[0].value
            assert (record["source"], record["line"], record["text"]) == (path, number, text) and record["reason"]
            continue
        rating = out[0]
        assert ASCII_ID.fullmatch(rating.user) and ASCII_ID.fullmatch(rating.item)
        assert rule.low <= rating.rating <= rule.high and (rating.rating / rule.step).is_integer()
        assert rating.timestamp >= 0 and (rating.source, rating.line, rating.text) == (path, number, text)
        again = ml.DELIMITERS[fmt].join([rating.user, rating.item, repr(rating.rating), str(rating.timestamp)])
        assert ml.parse_rating_fields(again, fmt, rule) == (rating.user, rating.item, rating.rating, rating.timestamp)


@PROPERTY
@given(text=st.one_of(LINES, st.builds(lambda u, i, negs: f"({u},{i})\t" + "\t".join(negs),
                                        FIELDS, FIELDS, st.lists(FIELDS, max_size=5)).map(_line)))
def test_ncf_negative_lines_parse_or_are_rejected(text):
    try:
        user, item, negatives = ml.parse_negative_line(text)
    except ml.RowError as error:
        assert str(error)
        return
    assert ASCII_ID.fullmatch(user) and ASCII_ID.fullmatch(item) and negatives
    assert all(ASCII_ID.fullmatch(n) for n in negatives)


@PROPERTY
@given(raw=st.binary(max_size=60), first=st.booleans())
def test_decode_line_takes_any_bytes(raw, first):
    text = common.decode_line(raw + b"\r\n", first)
    assert isinstance(text, str) and not text.endswith(("\n", "\r\n"))


# --------------------------------------------------------------------------- reading files
@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(min_size=1, max_size=3000), kind=st.sampled_from(["gz", "bz2"]), cut=st.floats(0, 1))
def test_a_compressed_file_reads_back_whole_or_fails(tmp_path, data, kind, cut):
    packed = gzip.compress(data, mtime=0) if kind == "gz" else bz2.compress(data)
    whole = tmp_path / f"whole.{kind}"
    whole.write_bytes(packed)
    assert b"".join(common.read_byte_lines(str(whole))) == data
    prefix = tmp_path / f"prefix.{kind}"
    prefix.write_bytes(packed[: int(cut * (len(packed) - 1))])  # every strict prefix, the empty one included
    with pytest.raises(common.InputFileError):
        b"".join(common.read_byte_lines(str(prefix)))


# --------------------------------------------------------------------------- LastFM
@PROPERTY
@given(lines=st.lists(st.one_of(delimited(","), st.text(max_size=20).map(_line)), min_size=1, max_size=8),
       num_classes=st.integers(2, 20))
def test_lastfm_edge_and_target_lines_each_land_in_exactly_one_place(lines, num_classes):
    for number, text in enumerate(lines, start=1):
        kind, payload = lastfm.parse_edge_line("e.csv", number, text)
        assert kind in ("header", "blank", "edge", "rejected")
        if kind == "edge":
            a, b, path, line = payload
            assert ASCII_ID.fullmatch(a) and ASCII_ID.fullmatch(b) and int(a) < int(b) and (path, line) == ("e.csv", number)
        elif kind == "rejected":
            assert payload["text"] == text and payload["line"] == number and payload["reason"]
        kind, payload = lastfm.parse_target_line("t.csv", number, text, num_classes)
        assert kind in ("header", "blank", "target", "rejected")
        if kind == "target":
            user, label, _, _ = payload
            assert ASCII_ID.fullmatch(user) and 0 <= label < num_classes
        elif kind == "rejected":
            assert payload["text"] == text and payload["reason"]
        if kind in ("header", "blank"):
            assert not text.strip() or number == 1


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=False), FIELDS),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=3), inner, max_size=3)),
    max_leaves=8,
)


@PROPERTY
@given(pairs=st.lists(st.tuples(st.one_of(FIELDS, st.integers(0, 99).map(str)), JSON_VALUES), max_size=6),
       layout=st.sampled_from(["object", "lines"]), junk=st.lists(st.text(max_size=12).map(_line), max_size=3))
def test_lastfm_features_every_entry_lands_in_exactly_one_place(pairs, layout, junk):
    """Duplicate user ids included: each entry is one yielded item (json.loads alone keeps the last)."""
    entries = [f"{json.dumps(str(k))}: {json.dumps(v)}" for k, v in pairs]
    if layout == "object":
        content = "{" + ", ".join(entries) + "}"
    else:
        content = "\n".join(["{" + e + "}" for e in entries] + junk)
    try:  # a document that is one object (also one line of JSON lines alone) has one entry per pair
        whole = json.loads(content, object_pairs_hook=lambda found: ("object", len(found)))
    except json.JSONDecodeError:
        whole = None
    expected = whole[1] if isinstance(whole, tuple) else len(content.splitlines())
    assert layout == "lines" or expected == len(pairs)
    out = list(lastfm.parse_features_entries("f.json", content))
    assert len(out) == expected
    for kind, payload in out:
        assert kind in ("likes", "rejected", "blank")
        if kind == "likes":
            user, artists, _, _ = payload
            assert ASCII_ID.fullmatch(user) and all(ASCII_ID.fullmatch(a) for a in artists)


# --------------------------------------------------------------------------- playlists
@PROPERTY
@given(text=st.one_of(LINES, delimited(", "), st.lists(FIELDS, max_size=5).map(
    lambda fs: ",".join('"' + f.replace('"', '""') + '"' for f in fs)).map(_line)))
def test_playlist_csv_and_follow_lines_parse_or_are_rejected(text):
    for parse in (pc.parse_pichl_line, pc.parse_interaction_line):
        try:
            parsed = parse(text)
        except pc.RowError as error:
            assert str(error)
            continue
        owner = parsed[0]
        assert owner and owner == owner.strip() and "/" not in owner and not owner.startswith("mpd:")
    pc.is_header(text)  # never raises
    pc.detect_format("x.csv", text)


@PROPERTY
@given(document=st.one_of(st.text(max_size=30), JSON_VALUES.map(json.dumps),
                          st.lists(JSON_VALUES, max_size=4).map(lambda ps: json.dumps({"playlists": ps}))))
def test_mpd_documents_and_entries_parse_or_are_rejected(document):
    try:
        entries = pc.parse_mpd_document(document)
    except pc.RowError as error:
        assert str(error).startswith("mpd:")
        return
    for entry in entries:
        try:
            pid, name, tracks = pc.check_mpd_playlist(entry)
        except pc.RowError:
            continue
        assert pid >= 0 and name
        for track in tracks:
            try:
                assert pc.check_mpd_track(track).strip()
            except pc.RowError:
                pass
