"""Interaction logs (CSV, TSV, Parquet) with a column mapping and bad lines, to datasets."""

from __future__ import annotations

import gzip
import random
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest

from pinlab_data import (
    ColumnMapping,
    InteractionFilters,
    PinlabDataError,
    _reader,
    load_dataset,
    load_interactions,
    load_sequences,
    validate_dataset,
)

MAPPING = ColumnMapping(
    user="visitor", item="sku", time="at", rating="stars", text="name", category="aisle"
)
LOG = (
    "visitor,sku,at,stars,name,aisle\n"
    "ann,tea-1,2024-01-02T10:00:00,4,Green tea,drinks\n"
    "bob,mug-7,2024-01-02T11:30:00Z,5,Big mug,\n"
    "ann,mug-7,2024-01-03 09:00:00,3,Another name,kitchen\n"
    "cid,tea-1,2024-01-04T00:00:00+02:00,2.5,,drinks\n"
)


def iso(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def check_valid(root: Path) -> None:
    report = validate_dataset(root)
    assert report.ok, report.problems


def test_string_ids_become_dense_and_keep_their_names(tmp_path: Path) -> None:
    report = load_interactions(write(tmp_path / "log.csv", LOG), tmp_path / "ds", columns=MAPPING)
    assert (report.layout, report.rows_read, report.num_users, report.num_pins) == (
        "csv",
        4,
        3,
        2,
    )
    ds = load_dataset(tmp_path / "ds")
    assert ds.users.to_pylist() == [
        {"user_id": 0, "external_id": "ann"},
        {"user_id": 1, "external_id": "bob"},
        {"user_id": 2, "external_id": "cid"},
    ]
    pins = ds.pins.select(["pin_id", "external_id", "caption", "category"]).to_pylist()
    assert pins == [  # text and category from each item's first row
        {"pin_id": 0, "external_id": "tea-1", "caption": "Green tea", "category": "drinks"},
        {"pin_id": 1, "external_id": "mug-7", "caption": "Big mug", "category": "unknown"},
    ]
    rows = ds.interactions.to_pylist()
    assert [(r["user_id"], r["pin_id"], r["weight"], r["event"]) for r in rows] == [
        (0, 0, 4.0, "rating"),
        (1, 1, 5.0, "rating"),
        (0, 1, 3.0, "rating"),
        (2, 0, 2.5, "rating"),
    ]
    assert [r["timestamp"] for r in rows] == [
        iso("2024-01-02T10:00:00"),
        iso("2024-01-02T11:30:00"),
        iso("2024-01-03T09:00:00"),
        iso("2024-01-03T22:00:00"),
    ]
    check_valid(tmp_path / "ds")


def test_tsv_with_milliseconds_and_default_column_names(tmp_path: Path) -> None:
    text = "user_id\titem_id\ttimestamp\n1\t10\t1700000000000\n2\t10\t1700000001\n"
    load_interactions(write(tmp_path / "log.tsv", text), tmp_path / "ds")
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.column("timestamp").to_pylist() == [1_700_000_000, 1_700_000_001]
    assert set(ds.interactions.column("event").to_pylist()) == {"view"}
    assert ds.users.column("external_id").to_pylist() == ["1", "2"]
    check_valid(tmp_path / "ds")


def test_without_a_time_column_the_row_order_is_the_time(tmp_path: Path) -> None:
    report = load_interactions(
        write(tmp_path / "log.csv", "user_id,item_id\na,x\nb,y\na,y\n"), tmp_path / "ds"
    )
    assert report.rows_read == 3
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.column("timestamp").to_pylist() == [0, 1, 2]
    assert ds.manifest.config["timestamps"] == "row order"
    check_valid(tmp_path / "ds")


def test_parquet_with_typed_columns_and_a_null_id(tmp_path: Path) -> None:
    table = pa.table(
        {
            "u": pa.array([5, 6, None, 5], pa.int64()),
            "i": pa.array([100, 100, 101, 102], pa.int32()),
            "t": pa.array(
                [1_700_000_000_000, 1_700_000_100_000, 0, 1_700_000_200_000], pa.timestamp("ms")
            ),
            "r": pa.array([1.0, 2.0, 3.0, 4.5], pa.float32()),
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    mapping = ColumnMapping(user="u", item="i", time="t", rating="r")
    with pytest.raises(PinlabDataError, match=r"log.parquet row 3: u None is not an id"):
        load_interactions(tmp_path / "log.parquet", tmp_path / "ds", columns=mapping)
    report = load_interactions(
        tmp_path / "log.parquet", tmp_path / "ds", columns=mapping, on_bad_lines="report"
    )
    assert (report.layout, report.rows_read, report.bad_lines) == ("parquet", 3, 1)
    assert (tmp_path / "ds" / "bad_lines.csv").read_text().splitlines()[1].startswith('3,"u None')
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.column("timestamp").to_pylist() == [
        1_700_000_000,
        1_700_000_100,
        1_700_000_200,
    ]
    assert ds.pins.column("external_id").to_pylist() == ["100", "102"]
    check_valid(tmp_path / "ds")


def test_a_folder_of_parquet_parts_reads_as_one_log_in_path_order(tmp_path: Path) -> None:
    """Spark's and Hive's layout: part files in key=value folders, beside _SUCCESS and .crc
    files and a _temporary/ folder, none of which is data."""
    rows = {
        "user_id": ["a", "b", "a", "c", "b", "a"],
        "item_id": [10, 11, 12, 10, 13, 11],
        "timestamp": [5, 6, 7, 8, 9, 10],
    }
    whole = pa.table(rows)
    logs = tmp_path / "logs"
    for day, (start, stop) in (("day=2", (2, 5)), ("day=1", (0, 2)), ("day=3", (5, 6))):
        (logs / day).mkdir(parents=True)
        pq.write_table(whole.slice(start, stop - start), logs / day / "part-00000.parquet")
    (logs / "_SUCCESS").write_bytes(b"")
    (logs / "day=1" / ".part-00000.parquet.crc").write_bytes(b"not parquet")
    (logs / "_temporary").mkdir()
    (logs / "_temporary" / "part-00009.parquet").write_bytes(b"a torn write")
    pq.write_table(whole, tmp_path / "whole.parquet")
    report = load_interactions(logs, tmp_path / "parts")
    assert (report.layout, report.rows_read) == ("parquet", 6)
    load_interactions(tmp_path / "whole.parquet", tmp_path / "one")
    parts, one = load_dataset(tmp_path / "parts"), load_dataset(tmp_path / "one")
    for table in ("interactions", "pins", "users"):  # same ids, first seen in the same order
        assert getattr(parts, table).equals(getattr(one, table)), table
    check_valid(tmp_path / "parts")

    pq.write_table(whole.drop_columns(["item_id"]), logs / "day=4.parquet")
    with pytest.raises(PinlabDataError, match=r"day=4.parquet has no column 'item_id' \(--item"):
        load_interactions(logs, tmp_path / "missing")
    pq.write_table(whole.drop_columns(["timestamp"]), logs / "day=4.parquet")
    with pytest.raises(PinlabDataError, match=r"day=4.parquet has no column 'timestamp' \(--t"):
        load_interactions(logs, tmp_path / "missing")
    (logs / "day=4.parquet").unlink()
    with pytest.raises(PinlabDataError, match=r"logs is a folder, read as Parquet part files, not"):
        load_interactions(logs, tmp_path / "csv", file_format="csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PinlabDataError, match=r"empty is a folder with no .parquet or .pq file"):
        load_interactions(tmp_path / "empty", tmp_path / "none")
    assert not any((tmp_path / name).exists() for name in ("missing", "csv", "none"))


def test_a_duration_time_column_is_read_in_its_own_unit(tmp_path: Path) -> None:
    """Time since a session started, in ms: 90,000 ms is 90 s (it was read as 90,000 s)."""
    table = pa.table(
        {
            "u": pa.array([1, 1, 2]),
            "i": pa.array([7, 8, 7]),
            "t": pa.array([90_000, 150_500, 1_000], pa.duration("ms")),
        }
    )
    pq.write_table(table, tmp_path / "log.parquet")
    mapping = ColumnMapping(user="u", item="i", time="t")
    load_interactions(tmp_path / "log.parquet", tmp_path / "ds", columns=mapping)
    ds = load_dataset(tmp_path / "ds")
    assert ds.interactions.column("timestamp").to_pylist() == [90, 150, 1]
    check_valid(tmp_path / "ds")


def test_missing_columns_are_named_with_the_flag_that_maps_them(tmp_path: Path) -> None:
    source = write(tmp_path / "log.csv", LOG)
    mapping = ColumnMapping(user="user", item="sku", time="when")
    with pytest.raises(PinlabDataError) as info:
        load_interactions(source, tmp_path / "ds", columns=mapping)
    assert str(info.value) == (
        f"{source} has no column 'user' (--user-col), 'when' (--time-col); its columns are "
        "visitor, sku, at, stars, name, aisle; pass --user-col NAME --time-col NAME"
    )
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("name", "text", "hint"),
    [
        ("log.csv", "user_id\titem_id\n1\t2\n", "it looks like tsv: pass --format tsv"),
        ("log.tsv", "user_id,item_id\n1,2\n", "it looks like csv: pass --format csv"),
        (
            "log.csv",
            "user_id;item_id\n1;2\n",
            "it looks separated by ';', which pinlab does not read: save it as CSV or TSV",
        ),
    ],
)
def test_a_file_read_with_the_wrong_separator_says_which_format_it_looks_like(
    tmp_path: Path, name: str, text: str, hint: str
) -> None:
    source = write(tmp_path / name, text)
    with pytest.raises(PinlabDataError, match=f"; {hint}$"):
        load_interactions(source, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (b"PK\x03\x04\x14\x00\x06\x00", r"holds binary data \(a NUL byte at offset 5\), not text"),
        ("user_id,item_id\n1,2\n".encode("utf-16"), "is UTF-16 text, not UTF-8"),
        (
            "user_id,item_id\n1,café\n".encode("latin-1"),
            r"is not UTF-8 text \(byte 0xe9 at offset 21 is no UTF-8 character\)",
        ),
    ],
    ids=["binary", "utf-16", "latin-1"],
)
def test_a_file_that_is_not_utf8_text_is_named_as_such(
    tmp_path: Path, data: bytes, what: str
) -> None:
    """Before: Arrow's garbage rows, a decoding traceback, or a bad-lines hint that cannot help."""
    for name in ("log.csv", "log.csv.gz"):
        source = tmp_path / name
        source.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
        with pytest.raises(
            PinlabDataError, match=f"^{source} {what}; save it as UTF-8 CSV or TSV$"
        ):
            load_interactions(source, tmp_path / "ds")
    source.with_suffix(".seq").write_bytes(data)
    with pytest.raises(PinlabDataError, match=f"{what}; save it as UTF-8 text, one user's"):
        load_sequences(source.with_suffix(".seq"), tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_bytes_that_are_not_utf8_past_the_checked_start_are_named_too(tmp_path: Path) -> None:
    rows = "".join(f"{n},{n % 7}\n" for n in range(_reader.SNIFF_BYTES // 4))
    source = tmp_path / "log.csv"
    source.write_bytes(f"user_id,item_id\n{rows}1,café\n".encode("latin-1"))
    with pytest.raises(PinlabDataError, match="it is not all UTF-8 text; save it as UTF-8 CSV or"):
        load_interactions(source, tmp_path / "ds")


@pytest.mark.parametrize(
    ("users", "message"),
    [
        # These two were Arrow's cast errors, exit 1.
        (
            pa.array([[1], [2]]),
            r"column 'user_id' \(--user-col\) holds list<element: int64>, not one value per row",
        ),
        (
            pa.array([b"ann", b"\xff"], pa.binary()),
            r"holds values that are not UTF-8 text \(Invalid UTF8 payload\)",
        ),
        # NaN was read as the user "nan".
        (pa.array([1.0, float("nan")]), r"row 2: user_id nan is not an id \(empty or missing\)"),
    ],
    ids=["list", "binary-not-utf8", "nan"],
)
def test_parquet_ids_that_are_no_plain_value_are_refused(
    tmp_path: Path, users: pa.Array, message: str
) -> None:
    source = tmp_path / "log.parquet"
    pq.write_table(pa.table({"user_id": users, "item_id": [1, 2]}), source)
    with pytest.raises(PinlabDataError, match=message):
        load_interactions(source, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()


def test_parquet_ids_stored_as_utf8_bytes_load(tmp_path: Path) -> None:
    """Hive and older Spark write text as binary columns."""
    source = tmp_path / "log.parquet"
    pq.write_table(
        pa.table({"user_id": pa.array([b"ann", b"bob"], pa.binary()), "item_id": [1, 2]}), source
    )
    assert load_interactions(source, tmp_path / "ds").num_users == 2


def test_users_and_items_from_one_column_are_refused(tmp_path: Path) -> None:
    """Accepted before: every 'user' was the item it rated."""
    source = write(tmp_path / "log.csv", "user_id,item_id\n1,2\n")
    with pytest.raises(PinlabDataError, match=r"^--user-col and --item-col both name 'item_id'"):
        load_interactions(source, tmp_path / "ds", columns=ColumnMapping(user="item_id"))
    assert not (tmp_path / "ds").exists()


@pytest.mark.parametrize("layout", ["csv", "parquet"])
def test_a_column_named_twice_is_refused_not_read_as_its_first(tmp_path: Path, layout: str) -> None:
    if layout == "csv":
        source = write(tmp_path / "log.csv", "user_id,item_id,user_id\n1,2,3\n")
    else:
        source = tmp_path / "log.parquet"
        table = pa.table([pa.array(["1"]), pa.array(["2"]), pa.array(["3"])],
                         names=["user_id", "item_id", "user_id"])  # fmt: skip
        pq.write_table(table, source)
    with pytest.raises(PinlabDataError) as info:
        load_interactions(source, tmp_path / "ds")
    assert str(info.value) == (
        f"{source} has 2 columns named 'user_id' (columns 1, 3), so --user-col user_id is "
        "ambiguous; rename all but one in its header"
    )
    assert not (tmp_path / "ds").exists()


BAD_LOG = (
    "user_id,item_id,timestamp,rating\n"  # line 1
    "a,x,100,4\n"
    "\n"  # blank lines are skipped silently, yet counted
    "b,y,101\n"  # line 4: a field short
    "c,x,oops,3\n"  # line 5: bad time
    "d,y,102,many\n"  # line 6: bad rating
    ",y,103,2\n"  # line 7: empty user
    "e,z,104,5\n"
)


def test_bad_lines_error_names_the_first_with_its_line_number(tmp_path: Path) -> None:
    source = write(tmp_path / "log.csv", BAD_LOG)
    mapping = ColumnMapping(rating="rating")
    with pytest.raises(PinlabDataError) as info:
        load_interactions(source, tmp_path / "ds", columns=mapping)
    assert str(info.value).startswith(
        f"{source} line 4: 3 fields where 4 are expected: 'b,y,101'; fix it, or pass "
        "--on-bad-lines skip"
    )
    assert not (tmp_path / "ds").exists()


def test_bad_lines_skip_and_report(tmp_path: Path) -> None:
    source = write(tmp_path / "log.csv", BAD_LOG)
    mapping = ColumnMapping(rating="rating")
    skipped = load_interactions(source, tmp_path / "s", columns=mapping, on_bad_lines="skip")
    assert (skipped.rows_read, skipped.bad_lines) == (2, 4)
    assert not (tmp_path / "s" / "bad_lines.csv").exists()
    load_interactions(source, tmp_path / "r", columns=mapping, on_bad_lines="report")
    report = pcsv.read_csv(tmp_path / "r" / "bad_lines.csv").to_pylist()
    assert [(r["line"], r["reason"]) for r in report] == [
        (4, "3 fields where 4 are expected"),
        (
            5,
            "timestamp 'oops' is not a time since 1970 (unix seconds or milliseconds, or ISO 8601)",
        ),
        (6, "rating 'many' is not a number"),
        (7, "user_id '' is not an id (empty or missing)"),
    ]
    assert report[1]["text"] == "c,x,oops,3"
    check_valid(tmp_path / "r")


def test_line_numbers_stay_right_across_many_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_reader, "BLOCK_BYTES", 256)  # dozens of blocks, parsed ahead of use
    rng = random.Random(7)
    lines, bad = ["user_id,item_id,timestamp"], []
    for number in range(2, 3000):
        kind = rng.random()
        if kind < 0.03:
            lines.append(f"u{number},i1")  # a field short
            bad.append(number)
        elif kind < 0.06:
            lines.append(f"u{number},i1,never")  # a bad value
            bad.append(number)
        elif kind < 0.08:
            lines.append("")
        else:
            lines.append(f"u{number % 50},i{number % 70},{number}")
    source = write(tmp_path / "big.csv", "\n".join(lines) + "\n")
    report = load_interactions(source, tmp_path / "ds", on_bad_lines="report")
    listed = pcsv.read_csv(tmp_path / "ds" / "bad_lines.csv")
    assert listed.column("line").to_pylist() == bad
    assert report.bad_lines == len(bad)
    texts = listed.column("text").to_pylist()
    assert all(lines[n - 1].startswith(t.split(",")[0]) for n, t in zip(bad, texts, strict=True))
    times = load_dataset(tmp_path / "ds").interactions.column("timestamp").to_pylist()
    assert times == sorted(times)  # the good rows, in order, none lost or repeated
    assert len(times) == sum(1 for line in lines[1:] if line) - len(bad)


def test_format_from_the_name_or_the_flag_and_compressed_text(tmp_path: Path) -> None:
    source = write(tmp_path / "log.txt", "user_id,item_id\na,x\n")
    with pytest.raises(PinlabDataError, match="pass --format csv, tsv or parquet"):
        load_interactions(source, tmp_path / "ds")
    assert load_interactions(source, tmp_path / "ds", file_format="csv").rows_read == 1
    packed = tmp_path / "log.csv.gz"
    packed.write_bytes(gzip.compress(b"user_id,item_id\na,x\nb,x\n"))
    report = load_interactions(packed, tmp_path / "gz")
    assert report.rows_read == 2 and load_dataset(tmp_path / "gz").manifest.name == "log"


def test_ratings_must_end_positive(tmp_path: Path) -> None:
    source = write(tmp_path / "log.csv", "user_id,item_id,r\na,x,-1\na,y,3\nb,x,0\n")
    mapping = ColumnMapping(rating="r")
    with pytest.raises(PinlabDataError, match=r"2 interactions have a rating <= 0 .*--min-rating"):
        load_interactions(source, tmp_path / "ds", columns=mapping)
    report = load_interactions(
        source, tmp_path / "ds", columns=mapping, filters=InteractionFilters(min_rating=1)
    )
    assert report.num_interactions == 1
    with pytest.raises(PinlabDataError, match=r"--min-rating needs ratings.*--rating-col"):
        load_interactions(source, tmp_path / "x", filters=InteractionFilters(min_rating=1))


def test_an_empty_log_writes_nothing(tmp_path: Path) -> None:
    source = write(tmp_path / "log.csv", "user_id,item_id\n")
    with pytest.raises(PinlabDataError, match="holds no interactions"):
        load_interactions(source, tmp_path / "ds")
    empty = write(tmp_path / "empty.csv", "")  # not even a header: nothing to skip or fix
    with pytest.raises(PinlabDataError, match=r"empty.csv is empty; pass a file with data$"):
        load_interactions(empty, tmp_path / "ds")
    assert not (tmp_path / "ds").exists()
