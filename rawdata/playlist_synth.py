"""Generated playlist data in the "Spotify Playlists" (Pichl et al.) CSV layout, at any scale.

Owns generating fake-but-learnable playlist input for tests and benchmarks of
``beam_pipelines.playlists``: users who own playlists of tracks, and (optionally)
an interactions CSV of users following other users' playlists. It does not parse
anything (that is ``beam_pipelines.playlists``).

Planted structure (what a pairing and a ranker that learn can find, and a
popularity baseline cannot):

* every user belongs to one taste **community** (community sizes mildly skewed);
* every community has its own pool of tracks with Zipf-like popularity inside
  it; a playlist's tracks come from its owner's community pool with probability
  ``community_share`` and otherwise from the whole catalogue (with a flatter
  Zipf, so there are cross-community hits but no track everybody has);
* users follow playlists of other members of their own community (popular
  playlists of the community more often) with probability ``community_share``,
  any playlist otherwise.

So users of one community share many tracks and users of different communities
few (``tests/test_playlists_synth.py`` checks it), and the playlists a user
follows are best predicted by what similar users have.

Shape at the defaults (measured at 100k users): about 6 owned playlists per
user, 7 tracks per playlist (a few million playlist-track rows), 3 follows per
user, 2 tracks per user in the catalogue. Generation is vectorized numpy: 100k
users take a few seconds.

Usage::

    python -m rawdata.playlist_synth --num-users 100000 --output FILE.csv [--seed 0] \\
        [--interactions FOLLOWS.csv] [--num-communities C] [--community-share 0.9]

The CSV starts with the header of the real sample, byte for byte
(``PICHL_HEADER``: ``user_id`` and the three other names each quoted with a
leading space and doubled quotes inside), and rows
``user_id,artistname,trackname,playlistname`` quoted the way Python's csv module
(and pandas) quote: only fields holding a comma or a quote. The interactions CSV
has the header ``user_id,playlist_id,timestamp``, where ``playlist_id`` is
``<owner user_id>/<playlist name>`` (``schemas.playlists.playlist_id``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import IO, Iterator, Sequence

import numpy as np

from schemas import playlists as S

PICHL_HEADER = 'user_id," ""artistname"""," ""trackname"""," ""playlistname"""'
INTERACTIONS_HEADER = "user_id,playlist_id,timestamp"
_FIRST_FOLLOW = 1388534400  # 2014-01-01T00:00:00Z
_FOLLOW_WINDOW = 3 * 365 * 86400
_WRITE_CHUNK = 1 << 18  # rows per joined write

# Words for readable names; a few hold a comma or quotes so that writers and
# parsers meet CSV quoting, as the real data has.
_ADJECTIVES = (
    "Red", "Blue", "Silent", "Electric", "Golden", "Broken", "Midnight", "Velvet", "Wild", "Neon", "Lonely",
    "Crystal", "Cosmic", "Hollow", "Rusty", "Sweet", "Frozen", "Burning", "Paper", "Iron",
)
_NOUNS = (
    "Hearts", "Tigers", "Rivers", "Machines", "Echoes", "Ghosts", "Pilots", "Wolves", "Lights", "Dreams",
    "Stones", "Kings", "Sparrows", "Signals", "Shadows", "Horses", "Waves", "Engines", "Roses", "Clouds",
)
_TITLES = (
    "Intro", "Home", "Run", "Stay", "Falling", "Hello, Goodbye", "Say \"Yes\"", "Don't Stop", "Tonight",
    "Gravity", "Summer Rain", "Lost, Found", "Ocean Drive", "Paper Planes", "Heartbeat", "Outro",
    "Wannabe - Radio Edit", "Descent Into Madness (feat. Thundercat)", "Your Ghost", "This Town",
)
_PLAYLIST_THEMES = (
    "Best of", "Workout", "Chill", "Road trip", "Party", "Favorites", "To listen to", "Starred",
    "Rock, Roll & More", "Songs \"for\" you", "Morning", "Late night", "Focus", "Throwback", "Summer",
)
_GENRES = (
    "rock", "indie", "jazz", "techno", "hip hop", "folk", "metal", "soul", "house", "pop", "punk", "blues",
    "ambient", "reggae", "classical", "country", "disco", "grunge", "trance", "latin",
)


@dataclasses.dataclass(frozen=True)
class SyntheticPlaylists:
    """Generated playlists, their tracks and follows, with the planted communities.

    Attributes:
      user_ids: ``[U]`` 32-hex user ids (like the real data's hashed user names).
      user_community: ``[U]`` community of each user.
      playlist_owner: ``[P]`` owner (user index) of each playlist, grouped by owner.
      playlist_names: ``[P]`` names, unique per owner.
      playlist_offsets: ``[P + 1]``; playlist ``p``'s tracks are
        ``playlist_tracks[playlist_offsets[p]:playlist_offsets[p + 1]]`` (distinct, in playlist order).
      playlist_tracks: ``[R]`` track indices.
      track_community: ``[T]`` community whose pool the track belongs to.
      track_artist: ``[T]`` artist name of each track.
      track_title: ``[T]`` title of each track; (artist, title) is unique per track.
      follow_user: ``[F]`` user index of each follow (never the playlist's owner, no repeats).
      follow_playlist: ``[F]`` playlist index of each follow.
      follow_timestamp: ``[F]`` unix seconds.
    """

    user_ids: list[str]
    user_community: np.ndarray
    playlist_owner: np.ndarray
    playlist_names: list[str]
    playlist_offsets: np.ndarray
    playlist_tracks: np.ndarray
    track_community: np.ndarray
    track_artist: list[str]
    track_title: list[str]
    follow_user: np.ndarray
    follow_playlist: np.ndarray
    follow_timestamp: np.ndarray

    @property
    def num_rows(self) -> int:
        """Playlist-track rows (lines of the CSV without its header)."""
        return int(len(self.playlist_tracks))

    def row_playlists(self) -> np.ndarray:
        """``[R]`` the playlist index of every playlist-track row."""
        return np.repeat(np.arange(len(self.playlist_owner)), np.diff(self.playlist_offsets))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def _segmented_draw(rng: np.random.Generator, segment: np.ndarray, offsets: np.ndarray,
                    cdfs: np.ndarray) -> np.ndarray:
    """Draws one position inside each given segment from that segment's own CDF.

    ``cdfs`` holds every segment's CDF back to back (segment ``s`` at
    ``offsets[s]:offsets[s + 1]``, each ending at 1). Shifting segment ``s``'s CDF
    by ``s`` makes the whole array increasing, so one ``searchsorted`` serves every
    segment at once.

    Returns:
      Absolute positions into ``cdfs`` (i.e. into the concatenated segments).
    """
    shifted = cdfs + np.repeat(np.arange(len(offsets) - 1, dtype=np.float64), np.diff(offsets))
    position = np.searchsorted(shifted, segment + rng.random(len(segment)), side="right")
    return np.clip(position, offsets[segment], offsets[segment + 1] - 1)


def _segment_cdfs(sizes: np.ndarray, exponent: float) -> np.ndarray:
    """Back-to-back Zipf CDFs for segments of the given sizes (``_segmented_draw``)."""
    pieces = []
    for size in sizes.tolist():
        cdf = np.cumsum(_zipf_weights(size, exponent))
        cdf[-1] = 1.0
        pieces.append(cdf)
    return np.concatenate(pieces) if pieces else np.empty(0)


def _overdispersed_counts(rng: np.random.Generator, n: int, mean: float, minimum: int, cap: int) -> np.ndarray:
    """Counts with the given mean, at least ``minimum``: gamma-Poisson, so a few users have many."""
    extra = max(mean - minimum, 0.0)
    rates = rng.gamma(shape=1.5, scale=extra / 1.5, size=n) if extra > 0 else np.zeros(n)
    return np.minimum(minimum + rng.poisson(rates), cap).astype(np.int64)


def _first_occurrences(keys: np.ndarray) -> np.ndarray:
    """Mask of the first occurrence of every key, in the array's own order."""
    order = np.argsort(keys, kind="stable")
    first = np.ones(len(keys), dtype=bool)
    first[order[1:]] = keys[order[1:]] != keys[order[:-1]]
    return first


def _names(rng: np.random.Generator, counts: np.ndarray, community: np.ndarray) -> list[str]:
    """Playlist names, unique per owner: a theme plus a year or the owner's genre."""
    names: list[str] = []
    per_theme = 2 + 2018 - 2008  # the genre and each year 2008..2018
    total = len(_PLAYLIST_THEMES) * per_theme
    starts = rng.integers(0, total, size=len(counts))
    for count, start, genre in zip(counts.tolist(), starts.tolist(), community.tolist()):
        for j in range(count):
            k = (start + j) % total
            theme, variant = _PLAYLIST_THEMES[k // per_theme], k % per_theme
            base = f"{theme} {_GENRES[genre % len(_GENRES)]}" if variant == 0 else (
                theme if variant == 1 else f"{theme} {2008 + variant - 2}")
            names.append(base if j < total else f"{base} ({j // total + 1})")
    return names


def generate_playlists(
    num_users: int,
    seed: int,
    *,
    num_communities: int | None = None,
    playlists_per_user: float = 6.0,
    tracks_per_playlist: float = 7.0,
    tracks_per_user: float = 2.0,
    follows_per_user: float = 3.0,
    community_share: float = 0.9,
    zipf_exponent: float = 1.0,
    background_exponent: float = 0.5,
) -> SyntheticPlaylists:
    """Generates users in taste communities who own and follow playlists of tracks.

    Args:
      num_users: users to generate (each owns at least one playlist).
      seed: generator seed; the same arguments give the same data.
      num_communities: taste communities; default one per 1000 users, at least 3.
      playlists_per_user: mean owned playlists per user (at least 1 each).
      tracks_per_playlist: mean distinct tracks per playlist (at least 2 drawn; a
        repeated draw is dropped, so a few playlists end up a little shorter).
      tracks_per_user: catalogue size as a multiple of ``num_users``.
      follows_per_user: mean follows of other users' playlists per user (0: none).
      community_share: probability that a track slot (or a follow) comes from the
        owner's (follower's) own community rather than the whole catalogue.
      zipf_exponent: popularity skew of tracks (and playlists, for follows) inside a community.
      background_exponent: popularity skew of the cross-community draws (flatter,
        so no track is in everybody's collection).

    Returns:
      ``SyntheticPlaylists``.

    Raises:
      ValueError: sizes or probabilities out of range.
    """
    if num_users < 2:
        raise ValueError("--num-users must be >= 2")
    if playlists_per_user < 1 or tracks_per_playlist < 1 or tracks_per_user <= 0 or follows_per_user < 0:
        raise ValueError("playlists and tracks per user/playlist must be >= 1, follows >= 0")
    if not 0.0 <= community_share <= 1.0:
        raise ValueError(f"community_share must be in [0, 1], got {community_share}")
    rng = np.random.default_rng(seed)
    num_communities = num_communities or max(3, num_users // 1000)
    num_communities = min(num_communities, num_users)

    # Communities: mildly skewed sizes, every community present.
    community_p = _zipf_weights(num_communities, 0.3)
    user_community = rng.choice(num_communities, size=num_users, p=community_p)
    user_community[:num_communities] = np.arange(num_communities)
    raw = rng.integers(0, 2**63, size=(num_users, 2), dtype=np.int64)
    user_ids = [f"{a:016x}{b:016x}" for a, b in raw.tolist()]

    # Tracks: each community's pool in proportion to its users; popularity within
    # the pool is Zipf over a random order (so popularity is not index order).
    community_users = np.bincount(user_community, minlength=num_communities)
    num_tracks = max(num_communities * 5, int(round(tracks_per_user * num_users)))
    pool_sizes = np.maximum(5, np.round(community_users / num_users * num_tracks)).astype(np.int64)
    pool_offsets = np.concatenate([[0], np.cumsum(pool_sizes)])
    num_tracks = int(pool_offsets[-1])
    track_community = np.repeat(np.arange(num_communities), pool_sizes)
    # pool position -> track index: a random permutation inside each pool
    pool_track = np.empty(num_tracks, dtype=np.int64)
    for c in range(num_communities):  # one small permutation per community
        low, high = pool_offsets[c], pool_offsets[c + 1]
        pool_track[low:high] = low + rng.permutation(high - low)
    pool_cdfs = _segment_cdfs(pool_sizes, zipf_exponent)
    background_cdf = np.cumsum(_zipf_weights(num_tracks, background_exponent))
    background_cdf[-1] = 1.0
    background_order = rng.permutation(num_tracks)

    # Owned playlists and their track slots.
    owned = _overdispersed_counts(rng, num_users, playlists_per_user, 1, 500)
    playlist_owner = np.repeat(np.arange(num_users), owned)
    num_playlists = len(playlist_owner)
    lengths = _overdispersed_counts(rng, num_playlists, tracks_per_playlist, 2, 1000)
    slot_playlist = np.repeat(np.arange(num_playlists), lengths)
    slot_community = user_community[playlist_owner][slot_playlist]
    tracks = pool_track[_segmented_draw(rng, slot_community, pool_offsets, pool_cdfs)]
    background = rng.random(len(tracks)) >= community_share
    tracks[background] = background_order[
        np.minimum(np.searchsorted(background_cdf, rng.random(int(background.sum())), side="right"), num_tracks - 1)
    ]
    keep = _first_occurrences(slot_playlist * num_tracks + tracks)  # a track once per playlist
    slot_playlist, tracks = slot_playlist[keep], tracks[keep]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(slot_playlist, minlength=num_playlists))])

    follow_user, follow_playlist = _draw_follows(
        rng, user_community, playlist_owner, follows_per_user, community_share, zipf_exponent
    )
    follow_timestamp = _FIRST_FOLLOW + rng.integers(0, _FOLLOW_WINDOW, size=len(follow_user))

    artists, titles = _track_names(rng, track_community, num_communities)
    return SyntheticPlaylists(
        user_ids=user_ids,
        user_community=user_community,
        playlist_owner=playlist_owner,
        playlist_names=_names(rng, owned, user_community),
        playlist_offsets=offsets.astype(np.int64),
        playlist_tracks=tracks.astype(np.int64),
        track_community=track_community,
        track_artist=artists,
        track_title=titles,
        follow_user=follow_user,
        follow_playlist=follow_playlist,
        follow_timestamp=follow_timestamp,
    )


def _draw_follows(rng, user_community, playlist_owner, per_user: float, share: float, exponent: float):
    """Each user follows other users' playlists, of their own community mostly (popular ones more)."""
    num_users, num_playlists = len(user_community), len(playlist_owner)
    if per_user <= 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    counts = _overdispersed_counts(rng, num_users, per_user, 0, 500)
    users = np.repeat(np.arange(num_users), counts)
    # Playlists grouped by the owner's community, in a random order inside it
    # (the Zipf rank: a community's "hit" playlists are followed most).
    playlist_community = user_community[playlist_owner]
    order = np.lexsort((rng.random(num_playlists), playlist_community))
    num_communities = int(user_community.max()) + 1
    sizes = np.bincount(playlist_community, minlength=num_communities)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    community = user_community[users]
    chosen = order[_segmented_draw(rng, community, offsets, _segment_cdfs(sizes, exponent))]
    anywhere = rng.random(len(users)) >= share
    chosen[anywhere] = rng.integers(0, num_playlists, size=int(anywhere.sum()))
    keep = (playlist_owner[chosen] != users) & _first_occurrences(users * num_playlists + chosen)
    return users[keep].astype(np.int64), chosen[keep].astype(np.int64)


def _track_names(rng, track_community: np.ndarray, num_communities: int) -> tuple[list[str], list[str]]:
    """Artist and title of every track: about 8 tracks per artist, artists inside one community."""
    num_tracks = len(track_community)
    artists_per_track = 8
    # k-th track of a community goes to artist (community, k // 8); titles number
    # an artist's tracks, so (artist, title) is unique.
    first = np.searchsorted(track_community, np.arange(num_communities))
    rank = np.arange(num_tracks) - first[track_community]
    artist_serial = np.concatenate([[0], np.cumsum(np.ceil(np.bincount(track_community, minlength=num_communities)
                                                           / artists_per_track).astype(np.int64))])
    artist_index = artist_serial[track_community] + rank // artists_per_track
    words = len(_ADJECTIVES) * len(_NOUNS)
    shuffle = rng.permutation(int(artist_index.max()) + 1 if num_tracks else 0)
    artist_names = []
    for a in shuffle.tolist():
        base = f"The {_ADJECTIVES[a % len(_ADJECTIVES)]} {_NOUNS[(a // len(_ADJECTIVES)) % len(_NOUNS)]}"
        artist_names.append(base if a < words else f"{base} {a // words + 1}")
    artists = [artist_names[a] for a in artist_index.tolist()]
    within = rank % artists_per_track
    titles = [
        _TITLES[(t + 7 * a) % len(_TITLES)] if w == 0 else f"{_TITLES[(t + 7 * a) % len(_TITLES)]} Pt. {w + 1}"
        for t, a, w in zip(np.arange(num_tracks).tolist(), artist_index.tolist(), within.tolist())
    ]
    # Title variants collide only inside one artist when two of its 8 tracks pick the
    # same word; the part number (w) keeps them apart.
    return artists, titles


# --------------------------------------------------------------------------- writing
def csv_field(text: str) -> str:
    """One CSV field quoted as Python's csv module (QUOTE_MINIMAL) does."""
    if any(c in text for c in ',"\r\n'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _open_for_write(path: str) -> IO[bytes]:
    """Opens through Beam's FileSystems: gs:// works, ``.gz``/``.bz2`` are compressed."""
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.create(path, compression_type=CompressionTypes.AUTO)


def playlist_rows(data: SyntheticPlaylists) -> Iterator[str]:
    """The CSV data lines (without newline), grouped by owner and playlist, in playlist order."""
    users = [csv_field(u) for u in data.user_ids]
    tracks = [csv_field(a) + "," + csv_field(t) for a, t in zip(data.track_artist, data.track_title)]
    playlist_prefix = [users[o] for o in data.playlist_owner.tolist()]
    names = [csv_field(n) for n in data.playlist_names]
    row_playlist = data.row_playlists().tolist()
    for p, t in zip(row_playlist, data.playlist_tracks.tolist()):
        yield f"{playlist_prefix[p]},{tracks[t]},{names[p]}"


def interaction_rows(data: SyntheticPlaylists) -> Iterator[str]:
    """The interactions CSV data lines: ``user_id,playlist_id,timestamp``."""
    for u, p, ts in zip(data.follow_user.tolist(), data.follow_playlist.tolist(), data.follow_timestamp.tolist()):
        owner = data.user_ids[data.playlist_owner[p]]
        yield f"{data.user_ids[u]},{csv_field(S.playlist_id(owner, data.playlist_names[p]))},{ts}"


def _write_lines(path: str, header: str, lines: Iterator[str]) -> int:
    count = 0
    with _open_for_write(path) as handle:
        handle.write((header + "\n").encode("utf-8"))
        chunk: list[str] = []
        for line in lines:
            chunk.append(line)
            if len(chunk) >= _WRITE_CHUNK:
                handle.write(("\n".join(chunk) + "\n").encode("utf-8"))
                count += len(chunk)
                chunk = []
        if chunk:
            handle.write(("\n".join(chunk) + "\n").encode("utf-8"))
            count += len(chunk)
    return count


def write_playlists_csv(data: SyntheticPlaylists, path: str) -> int:
    """Writes the Pichl-layout CSV (the real sample's header); returns the data rows written."""
    return _write_lines(path, PICHL_HEADER, playlist_rows(data))


def write_interactions_csv(data: SyntheticPlaylists, path: str) -> int:
    """Writes the follows as ``user_id,playlist_id,timestamp``; returns the rows written."""
    return _write_lines(path, INTERACTIONS_HEADER, interaction_rows(data))


# --------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rawdata.playlist_synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-users", type=int, required=True)
    parser.add_argument("--output", required=True, help="playlists CSV to write (local or gs://; .gz compresses)")
    parser.add_argument("--interactions", help="also write the follows CSV here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-communities", type=int)
    parser.add_argument("--playlists-per-user", type=float, default=6.0)
    parser.add_argument("--tracks-per-playlist", type=float, default=7.0)
    parser.add_argument("--tracks-per-user", type=float, default=2.0)
    parser.add_argument("--follows-per-user", type=float, default=3.0)
    parser.add_argument("--community-share", type=float, default=0.9)
    args = parser.parse_args(argv)
    started = time.time()
    try:
        data = generate_playlists(
            args.num_users, args.seed, num_communities=args.num_communities,
            playlists_per_user=args.playlists_per_user, tracks_per_playlist=args.tracks_per_playlist,
            tracks_per_user=args.tracks_per_user, follows_per_user=args.follows_per_user,
            community_share=args.community_share,
        )
    except ValueError as error:
        print(f"rawdata.playlist_synth: error: {error}", file=sys.stderr)
        return 2
    rows = write_playlists_csv(data, args.output)
    follows = write_interactions_csv(data, args.interactions) if args.interactions else 0
    print(
        f"wrote {rows} playlist-track rows ({len(data.user_ids)} users, {len(data.playlist_owner)} playlists, "
        f"{len(data.track_artist)} tracks, {int(data.user_community.max()) + 1} communities, seed {args.seed}) "
        f"to {args.output}" + (f", {follows} follows to {args.interactions}" if args.interactions else "")
        + f" in {time.time() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
