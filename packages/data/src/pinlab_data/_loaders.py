"""Loaders: MovieLens (every official layout), interaction logs and item sequences.

Each reads its source in streaming batches (pyarrow), keeps the interactions as compact numpy
columns, applies the filters, and writes a dataset directory with `save_dataset`, atomically:
on any error nothing is written.
"""

from __future__ import annotations

import os
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pinlab_data._filters import filter_interactions
from pinlab_data._reader import (
    BadLines,
    Chunk,
    IdMap,
    Opener,
    Parsed,
    TextFormat,
    TimeParser,
    parquet_parts,
    parquet_schema,
    parse_ids,
    parse_keys,
    parse_numbers,
    read_parquet,
    read_text,
    record_bad_values,
    require_named_once,
    text_columns,
)
from pinlab_data._store import ZIP_MAGIC, check_writable, save_dataset
from pinlab_data.contracts import (
    ColumnMapping,
    DatasetManifest,
    EventKind,
    Float32Array,
    Int64Array,
    InteractionFilters,
    InteractionFormat,
    LoaderKind,
    LoadReport,
    OnBadLines,
    PinlabDataError,
    SequenceLayout,
)

BAD_LINES_FILE = "bad_lines.csv"
UNKNOWN = "unknown"
"""Category of items without one, and creator group of items without a creator."""
NO_GENRES = frozenset({"unknown", "(no genres listed)"})
"""What MovieLens writes for a movie without genres (100K, and 20M onwards)."""
MOVIELENS_HINT = "the download looks damaged; fetch it again from GroupLens"
LOG_TEXT_HINT = "save it as UTF-8 CSV or TSV"
SEQUENCES_TEXT_HINT = "save it as UTF-8 text, one user's items per line"
BAD_LINES_HINT = (
    "fix it, or pass --on-bad-lines skip (drop bad lines) or report (drop them and list them "
    f"in {BAD_LINES_FILE})"
)
SEARCH_DEPTH = 2
"""How far below a MovieLens source folder its files are looked for."""
EXTENSIONS: dict[str, InteractionFormat] = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
COMPRESSED = (".gz", ".bz2")
"""Text compressions pyarrow undoes by itself, recognised by the file name."""


def load_movielens(
    source: Path,
    out: Path,
    *,
    filters: InteractionFilters | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """Convert a MovieLens download (a folder or the .zip GroupLens serves) to a dataset.

    Every official layout is recognised: 100K (`u.data`, `u.item`, `u.genre`), 1M and 10M
    (`ratings.dat`, `movies.dat`) and 20M, 25M, 32M and latest(-small) (`ratings.csv`,
    `movies.csv`). Movies become pins with caption "Title (Year) | Genre1, Genre2" and their
    first genre as category; ratings become "rating" events weighted by the rating. Ids stay
    MovieLens's own. Where the download has them (100K's `u.user`, 1M's `users.dat`), users
    keep their age, gender and occupation as attribute columns, for quality per user group;
    the zip code is left out (a quasi-identifier that no metric here needs). `tags.csv` is
    left out: tags are timestamped user actions, and folding them into item text would leak
    later behaviour into features of earlier splits.
    """
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    check_writable(out.resolve(), overwrite)
    with _MovieLensFiles(source) as files:
        layout, folder = files.detect()
        catalogue = _MOVIELENS_ITEMS[layout](files, folder)
        ratings_file, fmt, columns = _MOVIELENS_RATINGS[layout]
        member = _join(folder, ratings_file)
        if layout == "csv":
            _require_columns(files, member, list(columns))
        bad = BadLines(files.label(member), "error", MOVIELENS_HINT)
        log = _read_ratings(files.opener(member), fmt, columns, bad)
        reader = _MOVIELENS_USERS.get(layout)
        attributes = None if reader is None else reader(files, folder)
    name = PurePosixPath(folder).name or source.stem
    return _write(
        out,
        kind="movielens",
        source=source,
        layout=layout,
        name=name,
        log=log,
        catalogue=catalogue,
        users_external=None,
        filters=filters or InteractionFilters(),
        bad=bad,
        overwrite=overwrite,
        config={},
        started=started,
        user_attributes=attributes,
    )


def load_interactions(
    source: Path,
    out: Path,
    *,
    columns: ColumnMapping | None = None,
    file_format: InteractionFormat | None = None,
    on_bad_lines: OnBadLines = "error",
    filters: InteractionFilters | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """Convert an interaction log (CSV, TSV or Parquet, or a folder of Parquet part files read
    in path order, `parquet_parts`) to a dataset.

    Users and items get dense ids in the order first seen; their ids in the log are kept as
    `external_id`. Times are unix seconds (milliseconds and finer are scaled down) or ISO 8601;
    without a time column the row order is the time. With a rating column every row is a
    "rating" event weighted by it, else a "view" of weight 1. An item's caption and category
    come from its first row.
    """
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    mapping = columns or ColumnMapping()
    check_writable(out.resolve(), overwrite)
    if source.is_dir():
        if file_format not in (None, "parquet"):
            raise PinlabDataError(
                f"{source} is a folder, read as Parquet part files, not {file_format}; pass "
                f"the {file_format} file itself"
            )
        file_format = "parquet"
    elif not source.is_file():
        raise PinlabDataError(
            f"{source} is not a file; pass a CSV, TSV or Parquet log, or a folder of Parquet "
            "part files"
        )
    file_format = file_format or _format_of(source)
    parts: list[Path] = []
    if file_format == "parquet":
        parts = parquet_parts(source)
        schemas = {part: parquet_schema(part) for part in parts}
        roles = _resolve_columns(mapping, schemas[parts[0]].names, parts[0])
        # Every part has the first part's columns, its 'timestamp' too where that was taken.
        resolved = mapping.model_copy(update={"time": roles.get("time")})
        for part, schema in schemas.items():
            _resolve_columns(resolved, schema.names, part)
            _require_plain_values(schema, roles, part)
    else:
        fmt = TextFormat("," if file_format == "csv" else "\t")
        names = text_columns(lambda: str(source), fmt, str(source), LOG_TEXT_HINT)
        roles = _resolve_columns(mapping, names, source)
    wanted = list(dict.fromkeys(roles.values()))
    unit = "row" if file_format == "parquet" else "line"
    bad = BadLines(str(source), on_bad_lines, BAD_LINES_HINT, unit=unit)
    chunks: Iterator[Chunk] = (
        read_parquet(parts, wanted, bad)
        if file_format == "parquet"
        else read_text(lambda: str(source), fmt, wanted, bad, LOG_TEXT_HINT)
    )
    reader = _LogReader(roles)
    try:
        for chunk in chunks:
            reader.add(chunk, bad, sep="," if file_format != "tsv" else "\t")
    except pa.ArrowInvalid as exc:
        if "UTF8" not in str(exc):  # only Parquet's binary columns can hold bytes not text
            raise
        raise PinlabDataError(
            f"{source} holds values that are not UTF-8 text ({str(exc).strip()}); store its "
            "id and text columns as UTF-8 strings or integers"
        ) from exc
    return _write(
        out,
        kind="interactions",
        source=source,
        layout=file_format,
        name=_stem(source),
        log=reader.log(),
        catalogue=reader.catalogue(),
        users_external=reader.user_ids.external(),
        filters=filters or InteractionFilters(),
        bad=bad,
        overwrite=overwrite,
        config={
            "columns": {role: roles.get(role) for role in _ROLES},
            "timestamps": "file" if "time" in roles else "row order",
            "on_bad_lines": on_bad_lines,
        },
        started=started,
    )


def load_sequences(
    source: Path,
    out: Path,
    *,
    layout: SequenceLayout = "auto",
    on_bad_lines: OnBadLines = "error",
    filters: InteractionFilters | None = None,
    overwrite: bool = False,
) -> LoadReport:
    """Convert a sequence file: `user item` per line (`user-item`, SASRec's data files, each
    user's lines in time order) or `user item item ...` per line (`user-items`, the Amazon
    files S3-Rec and ICLRec release, items in time order).

    Whitespace separated, no times, so a user's k-th item gets time k. `auto` reads the first
    block of lines: a user on two lines, or no line past two fields, means `user-item`, else
    `user-items` (where every line has two fields and no user repeats, both read the same).
    Ids become dense, in first-seen order, with the file's ids kept as `external_id`; every
    item is a "view" of weight 1. Bad lines are named by their line number; a first line of
    words over lines of numeric ids is a header, and so a bad line, not a user.
    """
    started = time.perf_counter()
    source, out = Path(source), Path(out)
    check_writable(out.resolve(), overwrite)
    if not source.is_file():
        raise PinlabDataError(
            f"{source} is not a file; pass a text file of `user item` or `user item item ...` lines"
        )
    # A delimiter that text files do not hold, so each line is one field, split below.
    fmt = TextFormat("\x1f", names=("line",), quoting=False)
    bad = BadLines(str(source), on_bad_lines, BAD_LINES_HINT)
    users, items = IdMap(), IdMap()
    columns = _Columns(with_ratings=False)
    seen = np.zeros(0, dtype=np.int64)  # items per user so far
    resolved: SequenceLayout = layout
    shape = "user item"
    if layout == "auto":
        shape += ", as --layout auto read the first lines; --layout user-items reads lines of items"
    first_block = True
    for chunk in read_text(lambda: str(source), fmt, ["line"], bad, SEQUENCES_TEXT_HINT):
        fields = pc.utf8_split_whitespace(chunk.columns["line"])
        count = np.asarray(pc.list_value_length(fields), dtype=np.int64)
        if first_block:
            first_block = False
            header = _header_row(fields, count)
            if header is not None:
                reason = "a header, not data (the lines after it hold numeric ids)"
                text = chunk.columns["line"][header].as_py()
                bad.add(chunk.rows[header : header + 1], [reason], [text])
                count[header] = 0  # read on as a blank line
        if resolved == "auto":
            resolved = _sequence_layout(fields, count)
        if resolved == "user-item":
            _bad_shapes(chunk, count, 2, shape, bad)
            good = count == 2
        else:
            wrong = count == 1
            if wrong.any():
                rows = np.flatnonzero(wrong)
                texts = chunk.columns["line"].take(pa.array(rows)).to_pylist()
                reason = "a user and no items (user item item ... expected)"
                bad.add(chunk.rows[rows], [reason] * len(rows), texts)
            good = count >= 2
        if not good.any():
            continue
        fields = fields.filter(pa.array(good))
        per_line = count[good] - 1
        line_user = users.encode(pc.list_element(fields, 0))
        user = np.repeat(line_user, per_line)
        item = items.encode(pc.list_flatten(pc.list_slice(fields, 1)))
        seen = np.concatenate([seen, np.zeros(len(users) - len(seen), dtype=np.int64)])
        order = np.argsort(user, kind="stable")
        ordered = user[order]
        starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
        rank = np.arange(len(user)) - np.repeat(starts, np.diff(np.r_[starts, len(user)]))
        step = np.empty(len(user), dtype=np.int64)
        step[order] = seen[ordered] + rank + 1
        seen += np.bincount(user, minlength=len(seen))
        columns.add(user, item, step, None)
    catalogue = _dense_catalogue(items.external(), None, None)
    return _write(
        out,
        kind="sequences",
        source=source,
        layout="user-item" if resolved == "auto" else resolved,
        name=_stem(source),
        log=columns.log(),
        catalogue=catalogue,
        users_external=users.external(),
        filters=filters or InteractionFilters(),
        bad=bad,
        overwrite=overwrite,
        config={
            "timestamps": "position in the user's sequence",
            "layout": layout,
            "on_bad_lines": on_bad_lines,
        },
        started=started,
    )


def _header_row(fields: Any, count: Int64Array) -> int | None:
    """The block's first non-blank line, where it is a header: no numeric id in it, while
    every field of the lines after it is one (SASRec's and ICLRec's files have no header)."""
    filled = np.flatnonzero(count > 0)
    if len(filled) < 2:
        return None
    numeric = pc.match_substring_regex(pc.list_flatten(fields), r"^-?\d+$")
    starts = np.r_[0, np.cumsum(count)]
    first, rest = starts[filled[0]], starts[filled[0] + 1]
    head = np.asarray(numeric[first:rest], dtype=bool)
    after = np.asarray(numeric[rest:], dtype=bool)
    return int(filled[0]) if not head.any() and after.all() else None


def _sequence_layout(fields: Any, count: Int64Array) -> SequenceLayout:
    """`auto`'s choice from one block of split lines (see `load_sequences`)."""
    filled = count > 0
    if not (count > 2).any():
        return "user-item"
    firsts = pc.list_element(fields.filter(pa.array(filled)), 0)
    repeats = pc.count_distinct(firsts).as_py() < int(filled.sum())
    return "user-item" if repeats else "user-items"


# --- the shared end: filter, build the three tables, save ---------------------------------


@dataclass
class _Log:
    """Interactions as read, with ids as they will be stored."""

    users: Int64Array
    items: Int64Array
    times: Int64Array
    ratings: Float32Array | None


@dataclass
class _Columns:
    """Interaction columns gathered batch by batch."""

    with_ratings: bool
    users: list[Int64Array] = field(default_factory=list)
    items: list[Int64Array] = field(default_factory=list)
    times: list[Int64Array] = field(default_factory=list)
    ratings: list[Float32Array] = field(default_factory=list)

    def add(
        self, users: Int64Array, items: Int64Array, times: Int64Array, ratings: Any | None
    ) -> None:
        self.users.append(users)
        self.items.append(items)
        self.times.append(times)
        if ratings is not None:
            self.ratings.append(np.asarray(ratings, dtype=np.float32))

    def log(self) -> _Log:
        """The gathered columns joined (the parts are released as each is joined)."""
        return _Log(
            users=_concat(self.users, np.int64),
            items=_concat(self.items, np.int64),
            times=_concat(self.times, np.int64),
            ratings=_concat(self.ratings, np.float32) if self.with_ratings else None,
        )


def _concat(parts: list[Any], dtype: type[np.generic]) -> Any:
    joined = np.concatenate(parts) if parts else np.zeros(0, dtype=dtype)
    parts.clear()
    return joined


def _write(
    out: Path,
    *,
    kind: LoaderKind,
    source: Path,
    layout: str,
    name: str,
    log: _Log,
    catalogue: pa.Table,
    users_external: Any | None,
    filters: InteractionFilters,
    bad: BadLines,
    overwrite: bool,
    config: dict[str, object],
    started: float,
    user_attributes: pa.Table | None = None,
) -> LoadReport:
    """Filter `log`, build the pins, users and interactions tables, and save them.

    `user_attributes` (a `user_id` column and attribute columns) is joined onto the users;
    one without a row gets nulls."""
    if len(log.users) == 0:
        raise PinlabDataError(
            f"{source} holds no interactions ({bad.count()} bad lines); pass a file with some"
        )
    read = len(log.users)
    rows, steps = filter_interactions(log.users, log.items, log.times, log.ratings, filters)
    if len(rows) < read:
        log = _Log(
            log.users[rows],
            log.items[rows],
            log.times[rows],
            None if log.ratings is None else log.ratings[rows],
        )
    users, items, times = log.users, log.items, log.times
    weights = np.ones(len(rows), np.float32) if log.ratings is None else log.ratings
    if (weights <= 0).any():
        first = float(weights[weights <= 0][0])
        raise PinlabDataError(
            f"{int((weights <= 0).sum())} interactions have a rating <= 0 (first: {first:g}), "
            "which cannot be a weight; keep the positive ones with --min-rating"
        )
    event = EventKind.VIEW if log.ratings is None else EventKind.RATING
    pins = _pins(catalogue, np.unique(items), only_used=filters.k_core is not None)
    user_ids = np.unique(users)
    external = (
        pa.nulls(len(user_ids), pa.string())
        if users_external is None
        else users_external.take(pa.array(user_ids))
    )
    interactions = pa.table(
        {
            "user_id": users,
            "pin_id": items,
            "timestamp": times,
            "event": pa.repeat(event.value, len(rows)),
            "weight": weights,
        }
    )
    categories = sorted(pc.unique(pins.column("category")).to_pylist())
    manifest = DatasetManifest(
        name=name,
        source=kind,
        config={
            "path": str(source),
            "layout": layout,
            "filters": filters.model_dump(),
            "bad_lines": bad.count(),
            **config,
        },
        num_pins=pins.num_rows,
        num_users=len(user_ids),
        num_interactions=len(rows),
        categories=categories,
    )
    extra = {BAD_LINES_FILE: bad.report_csv()} if bad.policy == "report" else None
    root = save_dataset(
        out,
        manifest,
        pins,
        _with_attributes(pa.table({"user_id": user_ids, "external_id": external}), user_attributes),
        interactions,
        extra=extra,
        overwrite=overwrite,
    )
    return LoadReport(
        dataset=str(root),
        kind=kind,
        source=str(source),
        layout=layout,
        rows_read=read,
        bad_lines=bad.count(),
        filters=steps,
        num_pins=manifest.num_pins,
        num_users=manifest.num_users,
        num_interactions=manifest.num_interactions,
        seconds=round(time.perf_counter() - started, 3),
    )


def _with_attributes(users: pa.Table, attributes: pa.Table | None) -> pa.Table:
    if attributes is None:
        return users
    ids = np.asarray(attributes.column("user_id"), dtype=np.int64)
    where = {int(u): row for row, u in enumerate(ids)}
    rows = pa.array([where.get(int(u)) for u in users.column("user_id").to_pylist()], pa.int64())
    for name in attributes.column_names[1:]:
        users = users.append_column(name, attributes.column(name).take(rows))
    return users


def _pins(catalogue: pa.Table, used: Int64Array, only_used: bool) -> pa.Table:
    """The catalogue (first row of each id), with a placeholder for each used id it lacks."""
    ids = np.asarray(catalogue.column("pin_id"), dtype=np.int64)
    _, first = np.unique(ids, return_index=True)
    catalogue = catalogue.take(pa.array(np.sort(first)))
    ids = np.asarray(catalogue.column("pin_id"), dtype=np.int64)
    missing = used[~np.isin(used, ids)]
    if len(missing):
        catalogue = pa.concat_tables(
            [
                catalogue,
                pa.table(
                    {
                        "pin_id": missing,
                        "caption": pa.repeat("", len(missing)),
                        "category": pa.repeat(UNKNOWN, len(missing)),
                        "external_id": pa.nulls(len(missing), pa.string()),
                    },
                    schema=catalogue.schema,
                ),
            ]
        )
    if only_used:
        catalogue = catalogue.filter(pc.is_in(catalogue.column("pin_id"), pa.array(used)))
    n = catalogue.num_rows
    return pa.table(
        {
            "pin_id": catalogue.column("pin_id"),
            "caption": catalogue.column("caption"),
            "category": catalogue.column("category"),
            "creator_id": np.zeros(n, dtype=np.int64),  # no creators in these sources
            "creator_group": pa.repeat(UNKNOWN, n),
            "image_row": pa.nulls(n, pa.int64()),
            "image_path": pa.nulls(n, pa.string()),
            "external_id": catalogue.column("external_id"),
        }
    )


def _catalogue(ids: Any, captions: list[str], categories: list[str], external: Any) -> pa.Table:
    return pa.table(
        {
            "pin_id": pa.array(ids, pa.int64()),
            "caption": pa.array(captions, pa.string()),
            "category": pa.array(categories, pa.string()),
            "external_id": external,
        }
    )


def _dense_catalogue(external: Any, captions: Any | None, categories: Any | None) -> pa.Table:
    """Items numbered 0.. in first-seen order, with their external ids (and text, if any)."""
    n = len(external)
    return pa.table(
        {
            "pin_id": np.arange(n, dtype=np.int64),
            "caption": pa.repeat("", n) if captions is None else captions,
            "category": pa.repeat(UNKNOWN, n) if categories is None else categories,
            "external_id": external,
        }
    )


# --- interaction logs ---------------------------------------------------------------------

_ROLES = ("user", "item", "time", "rating", "text", "category")
_FLAGS = {role: f"--{role}-col" for role in _ROLES}


def _format_of(source: Path) -> InteractionFormat:
    suffixes = [s.lower() for s in source.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes = suffixes[:-1]
    found = EXTENSIONS.get(suffixes[-1]) if suffixes else None
    if found is None:
        raise PinlabDataError(
            f"cannot tell the format of {source} from its name; pass --format csv, tsv or parquet"
        )
    return found


def _resolve_columns(mapping: ColumnMapping, names: list[str], source: Path) -> dict[str, str]:
    """Role to column name, for the roles in use; names every missing column at once."""
    wanted = mapping.model_dump()
    if wanted["time"] is None and "timestamp" in names:
        wanted["time"] = "timestamp"
    roles = {role: column for role, column in wanted.items() if column is not None}
    missing = [(role, column) for role, column in roles.items() if column not in names]
    if missing:
        which = ", ".join(f"{column!r} ({_FLAGS[role]})" for role, column in missing)
        fix = " ".join(f"{_FLAGS[role]} NAME" for role, _ in missing)
        # One column whose name holds the other separator: the file was read as the wrong one.
        header = names[0] if len(names) == 1 else ""
        kind = "tsv" if "\t" in header else "csv" if "," in header else None
        hint = f"; it looks like {kind}: pass --format {kind}" if kind else ""
        if not kind and ";" in header:
            hint = "; it looks separated by ';', which pinlab does not read: save it as CSV or TSV"
        raise PinlabDataError(
            f"{source} has no column {which}; its columns are {', '.join(names) or '(none)'}; "
            f"pass {fix}{hint}"
        )
    if roles["user"] == roles["item"]:
        raise PinlabDataError(
            f"--user-col and --item-col both name {roles['user']!r}; a log needs a column of "
            "users and another of items"
        )
    for role, column in roles.items():
        require_named_once(names, column, _FLAGS[role], source)
    return roles


def _require_plain_values(schema: pa.Schema, roles: dict[str, str], source: Path) -> None:
    """A used Parquet column holds one value per row: not a list, struct, map or union."""
    for role, column in roles.items():
        kind = schema.field(column).type
        if pa.types.is_nested(kind):
            raise PinlabDataError(
                f"{source} column {column!r} ({_FLAGS[role]}) holds {kind}, not one value per "
                "row; flatten it, or name another column"
            )


@dataclass
class _LogReader:
    """Turns chunks of a log into dense-id columns and the first text of each item."""

    roles: dict[str, str]
    user_ids: IdMap = field(default_factory=IdMap)
    item_ids: IdMap = field(default_factory=IdMap)
    times: TimeParser = field(default_factory=TimeParser)
    columns: _Columns = field(init=False)
    captions: list[Any] = field(default_factory=list)
    categories: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.columns = _Columns(with_ratings="rating" in self.roles)

    def add(self, chunk: Chunk, bad: BadLines, sep: str) -> None:
        roles, values = self.roles, chunk.columns
        users, users_bad = parse_keys(values[roles["user"]])
        items, items_bad = parse_keys(values[roles["item"]])
        parsed = {
            roles["user"]: Parsed(np.zeros(0), users_bad, "not an id (empty or missing)"),
            roles["item"]: Parsed(np.zeros(0), items_bad, "not an id (empty or missing)"),
        }
        if "time" in roles:
            parsed[roles["time"]] = self.times(values[roles["time"]])
        if "rating" in roles:
            parsed[roles["rating"]] = parse_numbers(values[roles["rating"]])
        good = record_bad_values(chunk, parsed, bad, sep)
        if not good.any():
            return
        keep = pa.array(good)
        user = self.user_ids.encode(users.filter(keep))
        known = len(self.item_ids)
        item = self.item_ids.encode(items.filter(keep))
        stamps = parsed[roles["time"]].values[good] if "time" in roles else chunk.rows[good]
        rating = parsed[roles["rating"]].values[good] if "rating" in roles else None
        self.columns.add(user, item, stamps, rating)
        # New items are numbered in the order first seen, so their first rows come in id order.
        ids, first = np.unique(item, return_index=True)
        new_rows = pa.array(np.flatnonzero(good)[first[ids >= known]])
        if "text" in roles:
            self.captions.append(_text(values[roles["text"]].take(new_rows), ""))
        if "category" in roles:
            self.categories.append(_text(values[roles["category"]].take(new_rows), UNKNOWN))

    def log(self) -> _Log:
        return self.columns.log()

    def catalogue(self) -> pa.Table:
        return _dense_catalogue(
            self.item_ids.external(),
            pa.chunked_array(self.captions, pa.string()) if "text" in self.roles else None,
            pa.chunked_array(self.categories, pa.string()) if "category" in self.roles else None,
        )


def _text(values: Any, default: str) -> Any:
    """Text of any type, trimmed, with `default` for nulls and empty strings."""
    text = values if pa.types.is_string(values.type) else pc.cast(values, pa.string())
    text = pc.utf8_trim_whitespace(text)
    return pc.if_else(pc.fill_null(pc.equal(text, ""), True), default, text)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in reversed(path.suffixes):
        name = name.removesuffix(suffix)
    return name or path.name


# --- MovieLens ----------------------------------------------------------------------------

_MARKERS = {
    "100k": ("u.data", "u.item", "u.genre"),
    "dat": ("ratings.dat", "movies.dat"),
    "csv": ("ratings.csv", "movies.csv"),
}
_RATINGS_DAT = TextFormat(
    ":", names=("user", "_1", "item", "_2", "rating", "_3", "timestamp"), quoting=False
)
"""`::`-separated, read with ':' as the delimiter: every other field is empty."""
_MOVIELENS_RATINGS: dict[str, tuple[str, TextFormat, tuple[str, str, str, str]]] = {
    "100k": (
        "u.data",
        TextFormat("\t", names=("user", "item", "rating", "timestamp"), quoting=False),
        ("user", "item", "rating", "timestamp"),
    ),
    "1m": ("ratings.dat", _RATINGS_DAT, ("user", "item", "rating", "timestamp")),
    "10m": ("ratings.dat", _RATINGS_DAT, ("user", "item", "rating", "timestamp")),
    "csv": ("ratings.csv", TextFormat(","), ("userId", "movieId", "rating", "timestamp")),
}


def _starts_as_zip(path: Path) -> bool:
    with path.open("rb") as file:
        return file.read(4) == ZIP_MAGIC


class _MovieLensFiles:
    """The files of a MovieLens download, from a folder or straight from its .zip."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self._zip: zipfile.ZipFile | None = None
        if source.is_dir():
            self.names = _files_below(source, SEARCH_DEPTH)
        elif source.is_file() and zipfile.is_zipfile(source):
            self._zip = zipfile.ZipFile(source)
            self.names = [info.filename for info in self._zip.infolist() if not info.is_dir()]
        elif source.is_file() and _starts_as_zip(source):
            raise PinlabDataError(
                f"{source} is a .zip cut short (its central directory is missing); {MOVIELENS_HINT}"
            )
        elif source.exists():
            raise PinlabDataError(
                f"{source} is neither a folder nor a .zip; pass a MovieLens folder or the .zip "
                "from GroupLens"
            )
        else:
            raise PinlabDataError(
                f"{source} does not exist; get it with `pinlab data download movielens-100k` "
                "(or another size)"
            )

    def __enter__(self) -> _MovieLensFiles:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._zip is not None:
            self._zip.close()

    def detect(self) -> tuple[str, str]:
        """The layout ('100k', '1m', '10m' or 'csv') and the folder holding its files."""
        by_folder: dict[str, set[str]] = {}
        for name in self.names:
            folder, _, base = name.rpartition("/")
            by_folder.setdefault(folder, set()).add(base)
        found = [
            (layout, folder)
            for folder, bases in sorted(by_folder.items())
            for layout, markers in _MARKERS.items()
            if set(markers) <= bases and not PurePosixPath(folder).name.startswith("__MACOSX")
        ]
        partial = [
            (folder, sorted(bases & set(markers)), sorted(set(markers) - bases))
            for folder, bases in sorted(by_folder.items())
            for markers in _MARKERS.values()
            if bases & set(markers) and not set(markers) <= bases
        ]
        if not found and partial:
            folder, present, absent = partial[0]
            raise PinlabDataError(
                f"{self.label(folder or '.')} has {', '.join(present)} but no "
                f"{', '.join(absent)}; the download looks incomplete, fetch it again"
            )
        if not found:
            raise PinlabDataError(
                f"{self.source} is not a MovieLens download: none of u.data+u.item+u.genre, "
                "ratings.dat+movies.dat or ratings.csv+movies.csv is in it or its subfolders; "
                "pass the folder or .zip from GroupLens (`pinlab data download movielens-100k`)"
            )
        if len(found) > 1:
            folders = ", ".join(self.label(folder or ".") for _, folder in found)
            raise PinlabDataError(
                f"{self.source} holds {len(found)} MovieLens datasets ({folders}); pass one"
            )
        layout, folder = found[0]
        if layout == "dat":
            layout = "1m" if "users.dat" in by_folder[folder] else "10m"
        return layout, folder

    def label(self, member: str) -> str:
        return f"{self.source}:{member}" if self._zip is not None else str(self.source / member)

    def opener(self, member: str) -> Opener:
        if self._zip is None:
            return lambda: str(self.source / member)
        archive = self._zip
        return lambda: archive.open(member)

    def read_bytes(self, member: str) -> bytes:
        opened = self.opener(member)()
        if isinstance(opened, str):
            return Path(opened).read_bytes()
        with opened:
            return opened.read()


def _files_below(root: Path, depth: int) -> list[str]:
    """Files under `root` at most `depth` folders down, as relative POSIX paths."""
    found = []
    for folder, subfolders, files in os.walk(root):
        relative = Path(folder).relative_to(root)
        if len(relative.parts) >= depth:
            subfolders.clear()
        found += [(relative / name).as_posix() for name in files]
    return found


def _join(folder: str, name: str) -> str:
    return f"{folder}/{name}" if folder else name


def _read_ratings(
    open_: Opener, fmt: TextFormat, columns: tuple[str, str, str, str], bad: BadLines
) -> _Log:
    user, item, rating, stamp = columns
    times = TimeParser()
    gathered = _Columns(with_ratings=True)
    for chunk in read_text(open_, fmt, list(columns), bad, MOVIELENS_HINT):
        values = chunk.columns
        parsed = {
            user: parse_ids(values[user]),
            item: parse_ids(values[item]),
            rating: _stars(values[rating]),
            stamp: times(values[stamp]),
        }
        good = record_bad_values(chunk, parsed, bad, sep=fmt.delimiter)
        picked = [parsed[c].values if good.all() else parsed[c].values[good] for c in columns]
        gathered.add(picked[0], picked[1], picked[3], picked[2])
    return gathered.log()


def _stars(values: Any) -> Parsed:
    """MovieLens ratings: whole stars from 1 to 5 (100K, 1M), half stars from 0.5 since 10M."""
    numbers = parse_numbers(values)
    outside = (numbers.values < 0.5) | (numbers.values > 5)
    return Parsed(numbers.values, numbers.bad | outside, "not a number of stars from 0.5 to 5")


def _bad_shapes(chunk: Chunk, count: Int64Array, expected: int, shape: str, bad: BadLines) -> None:
    """Note the non-blank lines of `chunk` that have not `expected` fields as bad lines."""
    wrong = np.flatnonzero((count != expected) & (count != 0))
    if len(wrong):
        texts = chunk.columns["line"].take(pa.array(wrong)).to_pylist()
        reasons = [f"{count[k]} fields where {expected} ({shape}) are expected" for k in wrong]
        bad.add(chunk.rows[wrong], reasons, texts)


def _caption(title: str, genres: list[str]) -> str:
    return f"{title} | {', '.join(genres)}" if genres else title


def _movies(ids: Any, titles: list[str], genres: list[list[str]]) -> pa.Table:
    genres = [[g for g in names if g not in NO_GENRES] for names in genres]
    return _catalogue(
        ids,
        [_caption(title.strip(), names) for title, names in zip(titles, genres, strict=True)],
        [names[0] if names else UNKNOWN for names in genres],
        pa.nulls(len(titles), pa.string()),
    )


def _read_all(
    files: _MovieLensFiles, member: str, fmt: TextFormat, columns: list[str]
) -> tuple[Chunk, BadLines]:
    """A small MovieLens file whole (its lines all good, or an error), and its line counter."""
    bad = BadLines(files.label(member), "error", MOVIELENS_HINT)
    chunks = list(read_text(files.opener(member), fmt, columns, bad, MOVIELENS_HINT))
    rows = np.concatenate([c.rows for c in chunks]) if chunks else np.zeros(0, np.int64)
    joined = {
        name: pa.concat_arrays([c.columns[name] for c in chunks])
        if chunks
        else pa.array([], pa.string())
        for name in columns
    }
    return Chunk(rows, joined), bad


def _checked_ids(chunk: Chunk, column: str, bad: BadLines, sep: str) -> Int64Array:
    """The ids in `column`, or an error naming the first line whose id is bad."""
    parsed = parse_ids(chunk.columns[column])
    record_bad_values(chunk, {column: parsed}, bad, sep)
    bad.finish()
    return parsed.values


def _items_100k(files: _MovieLensFiles, folder: str) -> pa.Table:
    genre_fmt = TextFormat("|", names=("genre", "index"), quoting=False)
    listed, bad = _read_all(files, _join(folder, "u.genre"), genre_fmt, ["genre", "index"])
    order = np.argsort(_checked_ids(listed, "index", bad, "|"), kind="stable")
    genres = [listed.columns["genre"].to_pylist()[k] for k in order]
    flags = [f"flag{k}" for k in range(len(genres))]
    item_fmt = TextFormat(
        "|",
        names=("movie", "title", "release", "video", "url", *flags),
        quoting=False,
        encoding="latin-1",
    )
    items, bad = _read_all(files, _join(folder, "u.item"), item_fmt, ["movie", "title", *flags])
    ids = _checked_ids(items, "movie", bad, "|")
    marked = [np.asarray(pc.equal(items.columns[f], "1"), dtype=np.bool_) for f in flags]
    movie_genres = [
        [genres[k] for k in range(len(genres)) if marked[k][row]] for row in range(len(ids))
    ]
    return _movies(ids, items.columns["title"].to_pylist(), movie_genres)


def _items_dat(files: _MovieLensFiles, folder: str) -> pa.Table:
    member = _join(folder, "movies.dat")
    raw = files.read_bytes(member)
    try:  # 10M is UTF-8; 1M predates that and is Latin-1
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    lines = pa.array(text.splitlines(), pa.string())
    fields = pc.split_pattern(lines, "::", max_splits=2)
    count = np.asarray(pc.list_value_length(fields), dtype=np.int64)
    blank = np.asarray(pc.equal(pc.utf8_trim_whitespace(lines), ""), dtype=np.bool_)
    bad = BadLines(files.label(member), "error", MOVIELENS_HINT)
    chunk = Chunk(np.arange(len(lines), dtype=np.int64), {"line": lines})
    _bad_shapes(chunk, np.where(blank, 3, count), 3, "MovieID::Title::Genres", bad)
    bad.finish()
    keep = np.flatnonzero(~blank)
    fields = fields.take(pa.array(keep))
    ids = _checked_ids(Chunk(keep, {"MovieID": pc.list_element(fields, 0)}), "MovieID", bad, "")
    genres = pc.split_pattern(pc.list_element(fields, 2), "|").to_pylist()
    return _movies(ids, pc.list_element(fields, 1).to_pylist(), genres)


def _items_csv(files: _MovieLensFiles, folder: str) -> pa.Table:
    member = _join(folder, "movies.csv")
    _require_columns(files, member, ["movieId", "title", "genres"])
    movies, bad = _read_all(files, member, TextFormat(","), ["movieId", "title", "genres"])
    ids = _checked_ids(movies, "movieId", bad, ",")
    genres = pc.split_pattern(movies.columns["genres"], "|").to_pylist()
    return _movies(ids, movies.columns["title"].to_pylist(), genres)


def _require_columns(files: _MovieLensFiles, member: str, expected: list[str]) -> None:
    names = text_columns(files.opener(member), TextFormat(","), files.label(member), MOVIELENS_HINT)
    if not set(expected) <= set(names):
        raise PinlabDataError(
            f"{files.label(member)} has columns {', '.join(names)}, not {', '.join(expected)}; "
            f"{MOVIELENS_HINT}"
        )


_MOVIELENS_ITEMS = {"100k": _items_100k, "1m": _items_dat, "10m": _items_dat, "csv": _items_csv}
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
"""1M's occupation codes 0..20, as its README lists them."""


def _users_100k(files: _MovieLensFiles, folder: str) -> pa.Table | None:
    """`u.user` (user|age|gender|occupation|zip) as user_id, age, gender, occupation."""
    member = _join(folder, "u.user")
    if member not in files.names:
        return None
    fmt = TextFormat("|", names=("user", "age", "gender", "occupation", "zip"), quoting=False)
    users, bad = _read_all(files, member, fmt, ["user", "age", "gender", "occupation"])
    ages = parse_ids(users.columns["age"])
    record_bad_values(users, {"age": ages}, bad, "|")
    return pa.table(
        {
            "user_id": _checked_ids(users, "user", bad, "|"),
            "age": ages.values,
            "gender": users.columns["gender"],
            "occupation": users.columns["occupation"],
        }
    )


def _users_1m(files: _MovieLensFiles, folder: str) -> pa.Table | None:
    """`users.dat` (UserID::Gender::Age::Occupation::Zip) with the occupation named; 1M's
    age is already its bucket's lower bound (1, 18, 25, 35, 45, 50, 56)."""
    member = _join(folder, "users.dat")
    if member not in files.names:
        return None
    names = ("user", "_1", "gender", "_2", "age", "_3", "occupation", "_4", "zip")
    fmt = TextFormat(":", names=names, quoting=False)
    users, bad = _read_all(files, member, fmt, ["user", "gender", "age", "occupation"])
    parsed = {name: parse_ids(users.columns[name]) for name in ("age", "occupation")}
    record_bad_values(users, parsed, bad, "::")
    ids = _checked_ids(users, "user", bad, "::")  # raises on any bad line noted so far
    codes = parsed["occupation"].values
    if len(codes) and codes.max() >= len(ML1M_OCCUPATIONS):
        raise PinlabDataError(
            f"{files.label(member)} has occupation code {int(codes.max())}; 1M's are 0 to "
            f"{len(ML1M_OCCUPATIONS) - 1}. {MOVIELENS_HINT}"
        )
    return pa.table(
        {
            "user_id": ids,
            "age": parsed["age"].values,
            "gender": users.columns["gender"],
            "occupation": pa.array([ML1M_OCCUPATIONS[c] for c in codes], pa.string()),
        }
    )


_MOVIELENS_USERS = {"100k": _users_100k, "1m": _users_1m}
