"""MovieLens in every official layout (folder or zip) and sequence files, to valid datasets."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_datasets
from pinlab_data import (
    InteractionFilters,
    PinlabDataError,
    load_dataset,
    load_movielens,
    load_sequences,
    validate_dataset,
    write_movielens_like,
)

ML100K = shared_datasets() / "ml-100k"
ML100K_MD5 = "6e47046882bad158b0efbb84cd5cb987"
needs_ml100k = pytest.mark.skipif(
    not (ML100K / "u.data").is_file(),
    reason=f"MovieLens 100K not at {ML100K}; set PINLAB_TEST_DATA to the datasets folder",
)

GENRES_100K = [
    *("unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime"),
    *("Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery"),
    *("Romance", "Sci-Fi", "Thriller", "War", "Western"),
]


def flags(*genres: str) -> str:
    return "|".join("1" if g in genres else "0" for g in GENRES_100K)


# Tiny files in exactly the official formats, one layout each.
LAYOUTS: dict[str, dict[str, bytes]] = {
    "100k": {
        "u.data": b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t242\t1\t878887116\n"
        b"196\t303\t5\t881250950\n",
        "u.item": (
            f"242|Kolya (1996)|24-Jan-1997||http://us.imdb.com/M/title-exact?Kolya%20(1996)|"
            f"{flags('Comedy')}\n"
            f"302|L.A. Confidential (1997)|01-Jan-1997||http://us.imdb.com/x|"
            f"{flags('Crime', 'Film-Noir', 'Mystery', 'Thriller')}\n"
            f"303|Café au lait (1993)|01-Jan-1993||http://us.imdb.com/y|{flags('Comedy')}\n"
            f"267|unknown||||{flags('unknown')}\n"
        ).encode("latin-1"),
        "u.genre": "".join(f"{g}|{k}\n" for k, g in enumerate(GENRES_100K)).encode() + b"\n",
        "u.user": b"196|49|M|writer|55105\n186|39|F|executive|00000\n22|25|M|writer|40206\n",
    },
    "1m": {
        "ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n",
        "movies.dat": (
            "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n"
            "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
            "2000::Amélie (2001)::Comedy|Romance\n"
        ).encode("latin-1"),
        "users.dat": b"1::F::1::10::48067\n2::M::56::16::70072\n",
    },
    "10m": {
        "ratings.dat": b"1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245777\n",
        "movies.dat": "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime\n"
        "4973::Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001)::Comedy|Romance\n".encode(),
        "tags.dat": b"15::4973::excellent!::1215184630\n",
    },
    "csv": {
        "ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.0,964981247\n"
        b"2,1,3.5,1445714835\n",
        "movies.csv": b"movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children\n"
        b'3,"American President, The (1995)",Comedy|Drama|Romance\n'
        b"4,Nobody (2021),(no genres listed)\n",
        "tags.csv": b"userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n",
        "links.csv": b"movieId,imdbId,tmdbId\n1,0114709,862\n",
    },
}
FOLDERS = {"100k": "ml-100k", "1m": "ml-1m", "10m": "ml-10M100K", "csv": "ml-latest-small"}
EXPECTED = {  # layout: (ratings, users, {pin: (caption, category)})
    "100k": (
        4,
        3,
        {
            242: ("Kolya (1996) | Comedy", "Comedy"),
            302: ("L.A. Confidential (1997) | Crime, Film-Noir, Mystery, Thriller", "Crime"),
            303: ("Café au lait (1993) | Comedy", "Comedy"),
            267: ("unknown", "unknown"),
        },
    ),
    "1m": (
        3,
        2,
        {
            1193: ("One Flew Over the Cuckoo's Nest (1975) | Drama", "Drama"),
            661: ("James and the Giant Peach (1996) | Animation, Children's, Musical", "Animation"),
            2000: ("Amélie (2001) | Comedy, Romance", "Comedy"),
        },
    ),
    "10m": (
        3,
        2,
        {
            122: ("Boomerang (1992) | Comedy, Romance", "Comedy"),
            185: ("Net, The (1995) | Action, Crime", "Action"),
            4973: (
                "Amélie (Fabuleux destin d'Amélie Poulain, Le) (2001) | Comedy, Romance",
                "Comedy",
            ),
        },
    ),
    "csv": (
        3,
        2,
        {
            1: ("Toy Story (1995) | Adventure, Animation, Children", "Adventure"),
            3: ("American President, The (1995) | Comedy, Drama, Romance", "Comedy"),
            4: ("Nobody (2021)", "unknown"),
        },
    ),
}


def write_folder(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes], folder: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return path


def check_valid(root: Path) -> None:
    report = validate_dataset(root)
    assert report.ok, report.problems
    assert {p.code for p in report.problems} <= {"pin-without-image"}


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
def test_every_movielens_layout(tmp_path: Path, layout: str, packed: bool) -> None:
    files, folder = LAYOUTS[layout], FOLDERS[layout]
    source = (
        write_zip(tmp_path / f"{folder}.zip", files, folder)
        if packed
        else write_folder(tmp_path / "download" / folder, files).parent  # found one level down
    )
    report = load_movielens(source, tmp_path / "ds")
    ratings, users, pins = EXPECTED[layout]
    assert report.layout == layout
    assert (report.rows_read, report.num_interactions, report.num_users) == (
        ratings,
        ratings,
        users,
    )
    ds = load_dataset(tmp_path / "ds")
    assert ds.manifest.name == folder and ds.manifest.source == "movielens"
    got = {
        row["pin_id"]: (row["caption"], row["category"])
        for row in ds.pins.select(["pin_id", "caption", "category"]).to_pylist()
    }
    assert got == pins
    assert set(ds.pins.column("creator_group").to_pylist()) == {"unknown"}
    assert ds.pins.column("creator_id").to_pylist() == [0] * len(pins)
    assert ds.pins.column("image_row").null_count == len(pins)
    assert set(ds.interactions.column("event").to_pylist()) == {"rating"}
    assert ds.users.column("external_id").null_count == users  # MovieLens ids are kept as is
    attributes = {  # the zip code stays behind
        "100k": [(22, 25, "M", "writer"), (186, 39, "F", "executive"), (196, 49, "M", "writer")],
        "1m": [(1, 1, "F", "K-12 student"), (2, 56, "M", "self-employed")],
    }
    if layout in attributes:
        assert ds.users.column_names == ["user_id", "external_id", "age", "gender", "occupation"]
        rows = ds.users.select(["user_id", "age", "gender", "occupation"]).to_pylist()
        assert [tuple(r.values()) for r in rows] == attributes[layout]
    else:
        assert ds.users.column_names == ["user_id", "external_id"]
    check_valid(tmp_path / "ds")


def test_a_user_without_attributes_gets_nulls_and_a_bad_age_names_its_line(
    tmp_path: Path,
) -> None:
    files = dict(LAYOUTS["100k"])
    files["u.user"] = b"196|49|M|writer|55105\n22|25|M|writer|40206\n"  # no 186
    load_movielens(write_folder(tmp_path / "ml-100k", files), tmp_path / "ds")
    users = load_dataset(tmp_path / "ds").users
    assert users.column("age").to_pylist() == [25, None, 49]
    files["u.user"] = b"196|49|M|writer|55105\n22|old|M|writer|40206\n"
    with pytest.raises(PinlabDataError, match=r"u.user.*line 2.*age 'old'"):
        load_movielens(write_folder(tmp_path / "ml-100k-bad", files), tmp_path / "ds2")
    assert not (tmp_path / "ds2").exists()


def test_ratings_keep_their_values_and_times(tmp_path: Path) -> None:
    source = write_folder(tmp_path / "ml-10M100K", LAYOUTS["10m"])
    load_movielens(source, tmp_path / "ds")
    rows = load_dataset(tmp_path / "ds").interactions.to_pylist()
    assert rows[1] == {
        "user_id": 1,
        "pin_id": 185,
        "timestamp": 838983525,
        "event": "rating",
        "weight": 4.5,
    }
    assert [r["weight"] for r in rows] == [5.0, 4.5, 0.5]


@pytest.mark.needs_data
@needs_ml100k
@pytest.mark.parametrize("packed", [False, True], ids=["folder", "zip"])
def test_real_movielens_100k(tmp_path: Path, packed: bool) -> None:
    assert hashlib.md5((ML100K / "u.data").read_bytes()).hexdigest() == ML100K_MD5
    source = ML100K
    if packed:
        files = {p.name: p.read_bytes() for p in ML100K.iterdir() if p.is_file()}
        source = write_zip(tmp_path / "ml-100k.zip", files, "ml-100k")
    report = load_movielens(source, tmp_path / "ds")
    assert (report.num_interactions, report.num_users, report.num_pins) == (100_000, 943, 1682)
    ds = load_dataset(tmp_path / "ds")
    first = ds.pins.slice(0, 1).to_pylist()[0]
    assert first["pin_id"] == 1
    assert first["caption"] == "Toy Story (1995) | Animation, Children's, Comedy"
    assert first["category"] == "Animation"
    weights = np.asarray(ds.interactions.column("weight"))
    assert set(weights.tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert len(ds.manifest.categories) == 19  # 18 genres and "unknown"
    check_valid(tmp_path / "ds")


def test_filters_apply_in_order_and_are_reported(tmp_path: Path) -> None:
    source = write_movielens_like(tmp_path / "ml", rows=5000, seed=3)
    filters = InteractionFilters(min_rating=3.5, dedupe=True, k_core=5)
    report = load_movielens(source, tmp_path / "ds", filters=filters)
    assert [s.name for s in report.filters] == ["min-rating", "dedupe", "k-core"]
    assert report.filters[0].rows_before == 5000
    for before, after in zip(report.filters, report.filters[1:], strict=False):
        assert before.rows_after == after.rows_before
    assert report.filters[-1].rows_after == report.num_interactions
    ds = load_dataset(tmp_path / "ds")
    table = ds.interactions
    assert min(table.column("weight").to_pylist()) >= 3.5
    pairs = table.group_by(["user_id", "pin_id"]).aggregate([]).num_rows
    assert pairs == table.num_rows
    for column in ("user_id", "pin_id"):
        counts = table.group_by(column).aggregate([(column, "count")])
        assert min(counts.column(f"{column}_count").to_pylist()) >= 5
    assert ds.pins.num_rows == len(set(table.column("pin_id").to_pylist()))  # k-core trims pins
    check_valid(tmp_path / "ds")


def test_a_filter_that_empties_the_dataset_says_which_and_writes_nothing(tmp_path: Path) -> None:
    source = write_folder(tmp_path / "ml-1m", LAYOUTS["1m"])
    with pytest.raises(PinlabDataError, match=r"--k-core 3 removed all 3 interactions"):
        load_movielens(source, tmp_path / "ds", filters=InteractionFilters(k_core=3))
    with pytest.raises(PinlabDataError, match=r"--min-rating 9 removed all 3"):
        load_movielens(source, tmp_path / "ds", filters=InteractionFilters(min_rating=9))
    assert not (tmp_path / "ds").exists()


def test_ratings_of_movies_missing_from_the_catalogue_get_placeholder_pins(tmp_path: Path) -> None:
    files = LAYOUTS["csv"] | {
        "ratings.csv": LAYOUTS["csv"]["ratings.csv"] + b"2,99,2.0,1445714900\n"
    }
    load_movielens(write_folder(tmp_path / "ml", files), tmp_path / "ds")
    pins = load_dataset(tmp_path / "ds").pins
    assert pins.filter(pins.column("pin_id").to_numpy() == 99).to_pylist()[0]["category"] == (
        "unknown"
    )
    check_valid(tmp_path / "ds")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"README": b"hello"}, "is not a MovieLens download"),
        ({"ratings.csv": LAYOUTS["csv"]["ratings.csv"]}, "has ratings.csv but no movies.csv"),
        (
            LAYOUTS["csv"] | {"ratings.csv": b"userId,movieId,rating,timestamp\n1,1,4.0\n"},
            r"ratings.csv line 2: 3 fields where 4 are expected: '1,1,4.0'; the download looks "
            "damaged",
        ),
        (
            LAYOUTS["1m"] | {"ratings.dat": b"1::1193::5::978300760\n1::x::3::978302109\n"},
            r"ratings.dat line 2: item 'x' is not a non-negative integer id",
        ),
        (
            LAYOUTS["csv"] | {"movies.csv": b"id,name\n1,x\n"},
            "has columns id, name, not movieId, title, genres",
        ),
        (
            LAYOUTS["100k"] | {"u.data": b"196\t242\t3\t881250949\n186\t302\t30\t891717742\n"},
            r"u.data line 2: rating '30' is not a number of stars from 0.5 to 5",
        ),
        # Arrow read these as rows of garbage; random bytes also printed an ignored traceback.
        (
            LAYOUTS["100k"] | {"u.data": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"},
            r"u.data holds binary data \(a NUL byte at offset 8\), not text; the download looks "
            "damaged",
        ),
        (
            LAYOUTS["100k"] | {"u.data": LAYOUTS["100k"]["u.data"].decode().encode("utf-16")},
            "u.data is UTF-16 text, not UTF-8; the download looks damaged",
        ),
        (
            LAYOUTS["csv"] | {"ratings.csv": b"userId,movieId,rating,timestamp\n\xff1,1,4.0,1\n"},
            r"ratings.csv is not UTF-8 text \(byte 0xff at offset 32 is no UTF-8 character\); "
            "the download looks damaged",
        ),
    ],
    ids=[
        "not-movielens",
        "half-a-layout",
        "short-line",
        "bad-id",
        "wrong-header",
        "rating-out-of-scale",
        "binary",
        "utf-16",
        "not-utf-8",
    ],
)
def test_damaged_movielens_is_one_line_naming_the_file_and_line(
    tmp_path: Path, files: dict[str, bytes], message: str
) -> None:
    with pytest.raises(PinlabDataError, match=message) as info:
        load_movielens(write_folder(tmp_path / "ml", files), tmp_path / "ds")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("compression", [zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED])
def test_a_damaged_zip_is_named_not_a_crash(tmp_path: Path, compression: int) -> None:
    """A member whose bytes changed (zlib's error, or the CRC's) used to exit 1; a zip cut
    short (no central directory) was 'neither a folder nor a .zip'."""
    source = tmp_path / "ml-100k.zip"
    rows = "".join(f"{u}\t242\t{1 + u % 5}\t{881250949 + u}\n" for u in range(1, 2000))
    with zipfile.ZipFile(source, "w", compression) as archive:
        for name, data in (LAYOUTS["100k"] | {"u.data": rows.encode()}).items():
            archive.writestr(f"ml-100k/{name}", data)
        member = archive.getinfo("ml-100k/u.data")
    middle = member.header_offset + 30 + len(member.filename) + member.compress_size // 2
    damaged = bytearray(source.read_bytes())
    damaged[middle : middle + 64] = bytes(64)
    source.write_bytes(damaged)
    with pytest.raises(
        PinlabDataError,
        match=r"ml-100k.zip:ml-100k/u.data could not be read \(.+\); the download looks damaged",
    ):
        load_movielens(source, tmp_path / "ds")
    source.write_bytes(damaged[: len(damaged) // 2])
    with pytest.raises(PinlabDataError, match=r"is a .zip cut short \(its central directory is"):
        load_movielens(source, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_a_folder_with_two_datasets_asks_for_one(tmp_path: Path) -> None:
    write_folder(tmp_path / "all" / "ml-1m", LAYOUTS["1m"])
    write_folder(tmp_path / "all" / "ml-latest-small", LAYOUTS["csv"])
    with pytest.raises(PinlabDataError, match="holds 2 MovieLens datasets"):
        load_movielens(tmp_path / "all", tmp_path / "ds")
    with pytest.raises(PinlabDataError, match="does not exist"):
        load_movielens(tmp_path / "nowhere", tmp_path / "ds")


def test_an_existing_dataset_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    with pytest.raises(PinlabDataError, match="already exists"):
        load_movielens(tmp_path / "not-even-read", tmp_path / "ds")
    assert (tmp_path / "ds" / "keep.txt").read_text() == "mine"


def test_movielens_like_files_are_deterministic(tmp_path: Path) -> None:
    a = write_movielens_like(tmp_path / "a", rows=3000, seed=1)
    b = write_movielens_like(tmp_path / "b", rows=3000, seed=1)
    for name in ("ratings.csv", "movies.csv"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "ratings.csv").read_text().splitlines()[0] == "userId,movieId,rating,timestamp"
    assert len((a / "ratings.csv").read_text().splitlines()) == 3001


# --- sequences ------------------------------------------------------------------------------


def test_sequences_get_dense_ids_and_times_from_their_order(tmp_path: Path) -> None:
    source = tmp_path / "Beauty.txt"
    source.write_text("7 100\n7 101\n9 100\n\n7 102\n9  103\n")
    report = load_sequences(source, tmp_path / "ds")
    assert (report.kind, report.rows_read, report.num_users, report.num_pins) == (
        "sequences",
        5,
        2,
        4,
    )
    ds = load_dataset(tmp_path / "ds")
    assert ds.users.column("external_id").to_pylist() == ["7", "9"]
    assert ds.pins.column("external_id").to_pylist() == ["100", "101", "102", "103"]
    rows = ds.interactions.select(["user_id", "pin_id", "timestamp"]).to_pylist()
    assert [tuple(r.values()) for r in rows] == [
        (0, 0, 1),
        (0, 1, 2),
        (1, 0, 1),
        (0, 2, 3),
        (1, 3, 2),
    ]
    check_valid(tmp_path / "ds")


def test_an_empty_sequence_file_is_named_empty(tmp_path: Path) -> None:
    source = tmp_path / "seq.txt"
    source.write_text("")
    with pytest.raises(PinlabDataError, match=r"seq.txt is empty; pass a file with data$"):
        load_sequences(source, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_sequence_bad_lines_error_skip_and_report(tmp_path: Path) -> None:
    source = tmp_path / "seq.txt"
    source.write_text("1 5\n1 6\n1 6 7\n2 5\n2\n")
    with pytest.raises(PinlabDataError, match=r"seq.txt line 3: 3 fields where 2 \(user item,"):
        load_sequences(source, tmp_path / "ds")
    assert load_sequences(source, tmp_path / "ds", on_bad_lines="skip").bad_lines == 2
    report = load_sequences(source, tmp_path / "r", on_bad_lines="report")
    assert report.rows_read == 3
    lines = (tmp_path / "r" / "bad_lines.csv").read_text().splitlines()
    assert lines[0] == '"line","reason","text"'
    assert [line.split(",")[0] for line in lines[1:]] == ["3", "5"]
    check_valid(tmp_path / "r")


def test_sequences_read_one_line_per_user(tmp_path: Path) -> None:
    """ICLRec's Amazon layout: `user item item ...`, items in time order; auto detects it."""
    source = tmp_path / "Beauty.txt"
    source.write_text("1 10 11 12\n2 11 13\n\n3 12\n")
    report = load_sequences(source, tmp_path / "auto")
    assert (report.rows_read, report.num_users, report.num_pins) == (6, 3, 4)
    assert report.layout == "user-items"  # what auto detected
    ds = load_dataset(tmp_path / "auto")
    rows = ds.interactions.select(["user_id", "pin_id", "timestamp"]).to_pylist()
    assert [tuple(r.values()) for r in rows] == [
        (0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 1, 1), (1, 3, 2), (2, 2, 1),
    ]  # fmt: skip
    named = load_sequences(source, tmp_path / "named", layout="user-items")
    assert load_dataset(tmp_path / "named").interactions.equals(ds.interactions)
    assert named.num_pins == 4
    # Read as user-item, the long lines are bad, named by line number.
    with pytest.raises(PinlabDataError, match=r"Beauty.txt line 1: 4 fields where 2"):
        load_sequences(source, tmp_path / "wrong", layout="user-item")


@pytest.mark.parametrize(
    ("first", "rest"),
    [("user item", "1 10\n1 11\n2 10\n"), ("# user items", "\n1 10 11\n2 10\n")],
)
def test_a_sequence_file_header_is_a_bad_line(tmp_path: Path, first: str, rest: str) -> None:
    """Sequence files have no header: a first line of words over numeric ids is not a user."""
    source = tmp_path / "seq.txt"
    source.write_text(f"{first}\n{rest}")
    with pytest.raises(PinlabDataError, match=rf"seq.txt line 1: a header, not data .*'{first}'"):
        load_sequences(source, tmp_path / "a")
    report = load_sequences(source, tmp_path / "b", on_bad_lines="report")
    assert (report.bad_lines, report.num_users, report.num_pins) == (1, 2, 2)
    ds = load_dataset(tmp_path / "b")
    assert ds.users.column("external_id").to_pylist() == ["1", "2"]
    # Ids of any kind still load: a first line of words is a header only over numbers.
    words = tmp_path / "words.txt"
    words.write_text("ann pin_a pin_b\nbob pin_a\n")
    assert load_sequences(words, tmp_path / "w").num_users == 2


def test_sequence_layout_detection_and_bad_lines(tmp_path: Path) -> None:
    # A user on two lines is SASRec's layout, even with a long (bad) line among them.
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("1 5 6\n1 6\n")
    read_as = r"\(user item, as --layout auto read the first lines; --layout user-items reads"
    with pytest.raises(PinlabDataError, match=rf"line 1: 3 fields where 2 {read_as}"):
        load_sequences(repeated, tmp_path / "a")
    report = load_sequences(repeated, tmp_path / "lines", layout="user-items")
    assert (report.layout, report.num_interactions) == ("user-items", 3)
    # One line per user: a user with no items is a bad line, reported by number.
    source = tmp_path / "users.txt"
    source.write_text("1 5 6\n2\n3 7 8 9\n")
    with pytest.raises(PinlabDataError, match=r"users.txt line 2: a user and no items"):
        load_sequences(source, tmp_path / "b")
    report = load_sequences(source, tmp_path / "c", on_bad_lines="report")
    assert (report.rows_read, report.bad_lines) == (5, 1)
    lines = (tmp_path / "c" / "bad_lines.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in lines[1:]] == ["2"]
    check_valid(tmp_path / "c")
