"""Streaming reads of delimited text and Parquet, with bad lines found, numbered and handled.

Text goes through pyarrow.csv's streaming reader with every wanted column read as a string;
values are converted here, batch by batch, so a bad value is a bad line just like a line with
the wrong number of fields, and both carry the line number they have in the file.
"""

from __future__ import annotations

import codecs
import contextlib
import io
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from pinlab_data.contracts import Int64Array, OnBadLines, PinlabDataError

BoolArray = npt.NDArray[np.bool_]
Float64Array = npt.NDArray[np.float64]
Opener = Callable[[], "str | IO[bytes]"]
"""Opens a text source afresh: a path string (pyarrow reads it natively, decompressing .gz and
.bz2) or a binary file object, such as a member of a zip archive."""

BLOCK_BYTES = 16 << 20
"""Text read per batch: large enough that per-batch Python work is noise, small enough to bound
memory whatever the file's size."""
PARQUET_SUFFIXES = (".parquet", ".pq")
PARQUET_ROWS = 1 << 20
SNIFF_BYTES = 1 << 16
"""The start of a text file checked for being UTF-8 text at all, before Arrow parses it."""
MAX_TEXT = 200
"""Characters of a bad line kept in messages and reports."""
MS_THRESHOLD = 10**11
"""Integer times above this are not seconds (that is the year 5138): milliseconds, micro- or
nanoseconds, divided by 1000 until they fit."""

TIME_PROBLEM = "not a time since 1970 (unix seconds or milliseconds, or ISO 8601)"

_NUMBER = r"^\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$"
_NON_NEGATIVE_INTEGER = r"^\s*\+?\d{1,18}\s*$"


@dataclass(frozen=True)
class TextFormat:
    """How a delimited text file is laid out."""

    delimiter: str
    names: tuple[str, ...] | None = None
    """Column names of a file without a header line; None: the first line names them."""
    quoting: bool = True
    encoding: str = "utf8"


@dataclass(frozen=True)
class Chunk:
    """Some rows of a file: their positions among its data rows, and the wanted columns."""

    rows: Int64Array
    columns: dict[str, Any]
    """Column name to pyarrow Array (strings for text files, as stored for Parquet)."""

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class Parsed:
    """Converted values of one column, which rows could not be converted, and why."""

    values: npt.NDArray[Any]
    bad: BoolArray
    problem: str
    """What a bad value is not, e.g. 'not a number'."""


@dataclass
class BadLines:
    """The bad lines of one file: numbered as in the file, then raised, dropped or reported.

    Lines the parser rejects (wrong number of fields) arrive through `reject`, possibly ahead
    of the batches being converted; lines with a bad value arrive through `add`. Positions of
    good rows are turned back into line numbers by counting the rejected lines before them.
    """

    file: str
    policy: OnBadLines
    hint: str
    """The fix, appended to the error for the first bad line under policy 'error'."""
    unit: str = "line"
    first_line: int = 1
    """Line number of the first data row: 2 below a header line."""
    found: list[tuple[int, str, str]] = field(default_factory=list)
    _rejected: list[int] = field(default_factory=list)

    def reject(self, row: Any) -> str:
        """pyarrow's invalid_row_handler: note the line (blank ones silently), and skip it."""
        number = int(row.number) if row.number is not None else -1
        self._rejected.append(number)
        if row.text.strip():
            reason = f"{row.actual_columns} fields where {row.expected_columns} are expected"
            self.found.append((number, reason, row.text))
        return "skip"

    def lines(self, rows: Int64Array) -> Int64Array:
        """Line numbers of data rows (positions among the rows the parser accepted)."""
        rejected = np.sort(np.asarray(self._rejected, dtype=np.int64))
        accepted_before = rejected - self.first_line - np.arange(len(rejected))
        shift = np.searchsorted(accepted_before, rows, side="right")
        return self.first_line + rows + shift

    def add(self, rows: Int64Array, reasons: list[str], texts: list[str]) -> None:
        self.found += zip(self.lines(rows).tolist(), reasons, texts, strict=True)

    def check(self, last_row: int) -> None:
        """Under policy 'error', raise for the first bad line up to data row `last_row`."""
        if self.policy == "error" and self.found:
            first = min(self.found)
            if first[0] <= int(self.lines(np.array([last_row], dtype=np.int64))[0]):
                raise self._error(first)

    def finish(self) -> None:
        if self.policy == "error" and self.found:
            raise self._error(min(self.found))

    def count(self) -> int:
        return len(self.found)

    def report_csv(self) -> bytes:
        """`bad_lines.csv`: line, reason and text of every bad line, in file order."""
        found = sorted(self.found)
        table = pa.table(
            {
                self.unit: pa.array([f[0] for f in found], pa.int64()),
                "reason": pa.array([f[1] for f in found], pa.string()),
                "text": pa.array([f[2][:MAX_TEXT] for f in found], pa.string()),
            }
        )
        sink = io.BytesIO()
        pcsv.write_csv(table, sink)
        return sink.getvalue()

    def _error(self, bad: tuple[int, str, str]) -> PinlabDataError:
        line, reason, text = bad
        shown = text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."
        return PinlabDataError(f"{self.file} {self.unit} {line}: {reason}: {shown!r}; {self.hint}")


def text_columns(open_: Opener, fmt: TextFormat, file: str, fix: str) -> list[str]:
    """The column names of a text file: from its header line, or `fmt.names`.

    `fix` ends the error for a file that cannot be read as text.
    """
    if fmt.names is not None:
        return list(fmt.names)
    require_text(open_, fmt, file, fix)
    with _arrow_errors(file, fix), _opened(open_) as source:
        reader = pcsv.open_csv(
            source,
            read_options=pcsv.ReadOptions(block_size=1 << 20, encoding=fmt.encoding),
            parse_options=_parse_options(fmt, lambda _row: "skip"),
        )
        names = list(reader.schema.names)
        reader.close()
    return names


def read_text(
    open_: Opener, fmt: TextFormat, columns: list[str], bad: BadLines, fix: str
) -> Iterator[Chunk]:
    """The wanted columns of a delimited text file as strings, a block at a time.

    Blank lines are skipped silently; lines with the wrong number of fields go to `bad`.
    `fix` ends the error for a file that cannot be read as text at all.
    """
    require_text(open_, fmt, file=bad.file, fix=fix)
    bad.first_line = 1 if fmt.names is not None else 2
    read_options = pcsv.ReadOptions(
        block_size=BLOCK_BYTES,
        encoding=fmt.encoding,
        column_names=list(fmt.names) if fmt.names is not None else None,
        use_threads=False,  # Arrow numbers rejected lines only when parsing serially
    )
    convert_options = pcsv.ConvertOptions(
        column_types={name: pa.string() for name in columns},
        include_columns=columns,
        strings_can_be_null=False,
    )
    start = 0
    with _arrow_errors(bad.file, bad.hint, text_fix=fix), _opened(open_) as source:
        reader = pcsv.open_csv(
            source,
            read_options=read_options,
            parse_options=_parse_options(fmt, bad.reject),
            convert_options=convert_options,
        )
        for batch in reader:
            rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
            start += batch.num_rows
            values = [batch.column(name) for name in columns]
            blank = np.ones(batch.num_rows, dtype=np.bool_)
            for column in values:
                blank &= np.asarray(pc.equal(column, ""), dtype=np.bool_)
            keep = pa.array(~blank)
            yield Chunk(
                rows[~blank], {n: v.filter(keep) for n, v in zip(columns, values, strict=True)}
            )
            bad.check(start - 1)
    bad.finish()


def require_text(open_: Opener, fmt: TextFormat, file: str, fix: str) -> None:
    """Refuse a UTF-8 text format's file whose start is binary data or another encoding.

    Arrow would read such bytes as rows of garbage (or print a decoding traceback on the way),
    so the start, decompressed as Arrow reads it, is checked first to say what the file is.
    Bytes that are not UTF-8 further on fail Arrow's conversion; `_arrow_errors` names that.
    """
    if codecs.lookup(fmt.encoding).name != "utf-8":
        return
    with _arrow_errors(file, fix), _opened(open_) as source:
        if isinstance(source, str):
            with pa.input_stream(source, compression="detect") as stream:
                head = stream.read(SNIFF_BYTES)
        else:
            head = source.read(SNIFF_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise PinlabDataError(f"{file} is UTF-16 text, not UTF-8; {fix}")
    if b"\0" in head:
        at = head.index(b"\0")
        raise PinlabDataError(
            f"{file} holds binary data (a NUL byte at offset {at}), not text; {fix}"
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < SNIFF_BYTES)
    except UnicodeDecodeError as exc:
        raise PinlabDataError(
            f"{file} is not UTF-8 text (byte 0x{head[exc.start]:02x} at offset {exc.start} "
            f"is no UTF-8 character); {fix}"
        ) from None


def require_named_once(names: list[str], column: str, flag: str, file: object) -> None:
    """Refuse a header that names a used column twice: Arrow reads the first, silently."""
    places = [str(i + 1) for i, name in enumerate(names) if name == column]
    if len(places) > 1:
        raise PinlabDataError(
            f"{file} has {len(places)} columns named {column!r} (columns {', '.join(places)}), "
            f"so {flag} {column} is ambiguous; rename all but one in its header"
        )


def parquet_parts(path: Path) -> list[Path]:
    """The files of a Parquet log: `path`, or for a folder every .parquet or .pq file below it
    in path order (what Spark, Hive and pyarrow write: part files, key=value folders, whose keys
    are not read as columns), but hidden and _-prefixed ones (_SUCCESS, .crc, _temporary/)."""
    if not path.is_dir():
        return [path]
    parts = sorted(
        part
        for part in path.rglob("*")
        if part.is_file()
        and part.suffix.lower() in PARQUET_SUFFIXES
        and not any(name.startswith((".", "_")) for name in part.relative_to(path).parts)
    )
    if not parts:
        raise PinlabDataError(
            f"{path} is a folder with no .parquet or .pq file below it; pass a CSV, TSV or "
            "Parquet log, or a folder of Parquet part files"
        )
    return parts


def parquet_schema(path: Path) -> pa.Schema:
    with _arrow_errors(str(path), "pass a Parquet file"):
        return pq.read_schema(path)


def read_parquet(parts: list[Path], columns: list[str], bad: BadLines) -> Iterator[Chunk]:
    """The wanted columns of a Parquet log's files as stored, a million rows at a time; rows
    are numbered on through the files, in their order."""
    start = 0
    for part in parts:
        with _arrow_errors(str(part), "pass a readable Parquet file"):
            batches = pq.ParquetFile(part).iter_batches(batch_size=PARQUET_ROWS, columns=columns)
            for batch in batches:
                rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
                start += batch.num_rows
                yield Chunk(rows, {name: batch.column(name) for name in columns})
                bad.check(start - 1)
    bad.finish()


def record_bad_values(
    chunk: Chunk, parsed: dict[str, Parsed], bad: BadLines, sep: str
) -> BoolArray:
    """Note every row with a bad value as a bad line (the first bad column is the reason).

    Returns the mask of rows whose values are all good.
    """
    good = np.ones(len(chunk), dtype=np.bool_)
    for result in parsed.values():
        good &= ~result.bad
    if good.all():
        return good
    positions = np.flatnonzero(~good)
    raw = {
        name: column.take(pa.array(positions)).to_pylist() for name, column in chunk.columns.items()
    }
    reasons = []
    for k, position in enumerate(positions):
        name, result = next((n, r) for n, r in parsed.items() if r.bad[position])
        reasons.append(f"{name} {raw[name][k]!r} is {result.problem}")
    texts = [
        sep.join("" if raw[n][k] is None else str(raw[n][k]) for n in raw)
        for k in range(len(positions))
    ]
    bad.add(chunk.rows[positions], reasons, texts)
    return good


def parse_ids(values: Any) -> Parsed:
    """Non-negative integer ids, as MovieLens stores them."""
    values = _as_strings(values)
    try:
        ids = pc.cast(values, pa.int64())
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(values, _NON_NEGATIVE_INTEGER), False)
        ids = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, values, "0")), pa.int64())
        bad = ~np.asarray(ok, dtype=np.bool_)
    else:
        bad = np.asarray(pc.is_null(ids), dtype=np.bool_)
    out = np.asarray(pc.fill_null(ids, 0), dtype=np.int64)
    return Parsed(out, bad | (out < 0), "not a non-negative integer id")


def parse_keys(values: Any) -> tuple[Any, BoolArray]:
    """Ids of any type as trimmed strings (to be mapped to dense ids); null or empty is bad."""
    keys = pc.utf8_trim_whitespace(_as_strings(nan_as_null(values)))
    bad = np.asarray(pc.fill_null(pc.equal(keys, ""), True), dtype=np.bool_)
    return keys, bad


def nan_as_null(values: Any) -> Any:
    """Floats with NaN as missing, so that text made of them is null, not "nan"."""
    if pa.types.is_floating(values.type):
        return pc.if_else(pc.is_nan(values), pa.scalar(None, values.type), values)
    return values


def parse_numbers(values: Any) -> Parsed:
    """Finite floats from numbers or numeric text."""
    if pa.types.is_integer(values.type) or pa.types.is_floating(values.type):
        numbers = pc.cast(values, pa.float64())
        ok = np.ones(len(values), dtype=np.bool_)
    else:
        numbers, ok = _text_numbers(_as_strings(values))
    out = np.asarray(pc.fill_null(numbers, math.nan), dtype=np.float64)
    return Parsed(out, ~(ok & np.isfinite(out)), "not a number")


@dataclass
class TimeParser:
    """Unix seconds from seconds (or ms, us, ns), ISO 8601 text, or Arrow dates and timestamps;
    seconds from Arrow durations (in their own unit).

    Text is read as numbers or as datetimes, decided by the first value seen, so one column is
    read one way throughout. Naive datetimes are taken as UTC.
    """

    text_mode: str | None = None

    def __call__(self, values: Any) -> Parsed:
        kind = values.type
        if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
            target = (
                pa.timestamp("s", tz=kind.tz) if pa.types.is_timestamp(kind) else pa.timestamp("s")
            )
            seconds = pc.cast(pc.cast(values, target, safe=False), pa.int64())
            return self._checked(
                np.asarray(pc.fill_null(seconds, 0), dtype=np.int64), pc.is_null(seconds)
            )
        if pa.types.is_duration(kind):  # time since some start, in the column's own unit
            seconds = pc.cast(pc.cast(values, pa.duration("s"), safe=False), pa.int64())
            return self._checked(
                np.asarray(pc.fill_null(seconds, 0), dtype=np.int64), pc.is_null(seconds)
            )
        if pa.types.is_integer(kind) or pa.types.is_floating(kind):
            return self._numeric(values, np.ones(len(values), dtype=np.bool_))
        text = _as_strings(values)
        if self.text_mode is None:
            first = pc.drop_null(pc.filter(text, pc.not_equal(pc.utf8_trim_whitespace(text), "")))
            if len(first) == 0:
                return Parsed(
                    np.zeros(len(text), dtype=np.int64),
                    np.ones(len(text), dtype=np.bool_),
                    TIME_PROBLEM,
                )
            self.text_mode = "number" if re.match(_NUMBER, first[0].as_py()) else "datetime"
        if self.text_mode == "number":
            try:
                return self._numeric(pc.cast(text, pa.int64()), np.ones(len(text), dtype=np.bool_))
            except pa.ArrowInvalid:
                numbers, ok = _text_numbers(text)
                return self._numeric(numbers, ok)
        seconds, ok = _datetimes(text)
        return self._checked(seconds, ~ok)

    def _numeric(self, values: Any, ok: BoolArray) -> Parsed:
        if pa.types.is_integer(values.type):
            seconds = np.asarray(pc.fill_null(pc.cast(values, pa.int64()), 0), dtype=np.int64)
            ok = ok & ~np.asarray(pc.is_null(values), dtype=np.bool_)
        else:
            floats = np.asarray(
                pc.fill_null(pc.cast(values, pa.float64()), math.nan), dtype=np.float64
            )
            ok = ok & np.isfinite(floats) & (np.abs(floats) < 2.0**62)
            seconds = np.floor(np.where(ok, floats, 0.0)).astype(np.int64)
        for _ in range(3):  # ms, then us, then ns
            seconds = np.where(seconds > MS_THRESHOLD, seconds // 1000, seconds)
        return self._checked(seconds, ~ok)

    @staticmethod
    def _checked(seconds: Int64Array, bad: Any) -> Parsed:
        bad = np.asarray(bad, dtype=np.bool_) | (seconds < 0)
        return Parsed(seconds, bad, TIME_PROBLEM)


class IdMap:
    """Dense int64 ids for external ids (strings), in the order they are first seen."""

    def __init__(self) -> None:
        self._ids: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def encode(self, keys: Any) -> Int64Array:
        encoded = pc.dictionary_encode(keys)  # its dictionary is in first-seen order
        ids = self._ids
        codes = np.fromiter(
            (ids.setdefault(key, len(ids)) for key in encoded.dictionary.to_pylist()),
            dtype=np.int64,
            count=len(encoded.dictionary),
        )
        return codes[np.asarray(encoded.indices, dtype=np.int64)]

    def external(self) -> Any:
        """The external id of each dense id, as a pyarrow string array."""
        return pa.array(list(self._ids), pa.string())


def _text_numbers(text: Any) -> tuple[Any, BoolArray]:
    """Floats from text, and which values were numbers (the regex only runs on a bad batch)."""
    try:
        numbers = pc.cast(text, pa.float64())
    except pa.ArrowInvalid:
        ok = pc.fill_null(pc.match_substring_regex(text, _NUMBER), False)
        numbers = pc.cast(pc.utf8_trim_whitespace(pc.if_else(ok, text, "0")), pa.float64())
        return numbers, np.asarray(ok, dtype=np.bool_)
    return numbers, ~np.asarray(pc.is_null(numbers), dtype=np.bool_)


def _datetimes(text: Any) -> tuple[Int64Array, BoolArray]:
    """Seconds from ISO 8601 text; Arrow parses whole batches, Python only mixed or bad ones."""
    for target in (pa.timestamp("ns"), pa.timestamp("ns", tz="UTC")):
        try:
            parsed = pc.cast(pc.utf8_trim_whitespace(text), target)
        except pa.ArrowInvalid:
            continue
        nanos = np.asarray(pc.fill_null(pc.cast(parsed, pa.int64()), 0), dtype=np.int64)
        return nanos // 10**9, ~np.asarray(pc.is_null(parsed), dtype=np.bool_)
    seconds = np.zeros(len(text), dtype=np.int64)
    ok = np.zeros(len(text), dtype=np.bool_)
    for i, value in enumerate(text.to_pylist()):
        try:
            moment = datetime.fromisoformat(value.strip())
        except (AttributeError, ValueError):
            continue
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds[i], ok[i] = math.floor(moment.timestamp()), True
    return seconds, ok


def _as_strings(values: Any) -> Any:
    return values if pa.types.is_string(values.type) else pc.cast(values, pa.string())


def _parse_options(fmt: TextFormat, handler: Callable[[Any], str]) -> Any:
    return pcsv.ParseOptions(
        delimiter=fmt.delimiter,
        quote_char='"' if fmt.quoting else False,
        ignore_empty_lines=False,  # so that every line is a row, and rows count lines
        invalid_row_handler=handler,
    )


@contextlib.contextmanager
def _opened(open_: Opener) -> Iterator[str | IO[bytes]]:
    """The opened source, closed afterwards if it is a file object."""
    source = open_()
    if isinstance(source, str):
        yield source
    else:
        with source:
            yield source


@contextlib.contextmanager
def _arrow_errors(file: str, hint: str, text_fix: str | None = None) -> Iterator[None]:
    """Turn Arrow's read errors into one PinlabDataError line naming the file.

    `text_fix` replaces `hint` when the bytes are not UTF-8 (a bad-lines hint cannot help:
    Arrow refuses the whole batch).
    """
    try:
        yield
    # zlib and zipfile errors come from a damaged member of a zip archive, read through Arrow.
    except (pa.ArrowException, OSError, UnicodeDecodeError, zlib.error, zipfile.BadZipFile) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if first == "Empty CSV file":  # no line to fix or skip: the hint would mislead
            raise PinlabDataError(f"{file} is empty; pass a file with data") from exc
        if text_fix is not None and "invalid UTF8" in first:
            hint = f"it is not all UTF-8 text; {text_fix}"
        raise PinlabDataError(f"{file} could not be read ({first}); {hint}") from exc
