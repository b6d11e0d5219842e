"""Logged bandit feedback on disk: a directory with `feedback.parquet` and `feedback.json`.

`feedback.parquet` holds one row per impression (`round_id`, `action`, `position`, `reward`,
`pscore`, optional `pscore_slate`, and `context` as a fixed-size list of float64);
`feedback.json` the catalogue and slate sizes; `logger_dist.npy` the logger's full
distribution when known. Saved atomically (a hidden sibling renamed into place); loading
names missing columns and rebuilds a validated `BanditFeedback`, so bad rows are named too.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel, NonNegativeInt, PositiveInt, ValidationError

from pinlab_data._store import (
    _ARROW_ERRORS,
    _one_line,
    _swap_into_place,
    check_writable,
    make_sibling_directory,
    read_npy,
)
from pinlab_data.contracts import FEEDBACK_COLUMNS, BanditFeedback, PinlabDataError

FEEDBACK_FILE = "feedback.parquet"
FEEDBACK_MANIFEST = "feedback.json"
LOGGER_DIST_FILE = "logger_dist.npy"
FEEDBACK_SCHEMA_VERSION = 1


class FeedbackManifest(BaseModel):
    """`feedback.json`: what the Parquet table alone cannot say."""

    schema_version: PositiveInt = FEEDBACK_SCHEMA_VERSION
    n_actions: PositiveInt
    len_list: PositiveInt
    rows: NonNegativeInt
    context_dim: NonNegativeInt
    source: str = ""


def save_feedback(
    fb: BanditFeedback,
    root: Path,
    *,
    source: str = "",
    extra: dict[str, bytes] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `fb` to the directory `root` atomically and return its resolved path.

    `extra` adds small files (plain names) beside the table, e.g. a simulator's ground truth.
    """
    root = Path(root).resolve()
    reserved = {FEEDBACK_FILE, FEEDBACK_MANIFEST, LOGGER_DIST_FILE}
    extra = dict(extra or {})
    for name in extra:
        if not name or Path(name).name != name or name.startswith(".") or name in reserved:
            raise PinlabDataError(
                f"extra file name {name!r} is not allowed; use a plain file name other than "
                f"{', '.join(sorted(reserved))}"
            )
    check_writable(root, overwrite, marker=FEEDBACK_MANIFEST)
    manifest = FeedbackManifest(
        n_actions=fb.n_actions,
        len_list=fb.len_list,
        rows=len(fb),
        context_dim=fb.context_dim,
        source=source,
    )
    tmp = make_sibling_directory(root)
    try:
        pq.write_table(_table(fb), tmp / FEEDBACK_FILE)
        if fb.logger_dist is not None:
            np.save(tmp / LOGGER_DIST_FILE, fb.logger_dist)
        for name, data in extra.items():
            (tmp / name).write_bytes(data)
        (tmp / FEEDBACK_MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n")
        for path in tmp.iterdir():
            with path.open("rb") as f:
                os.fsync(f.fileno())
        _swap_into_place(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def load_feedback(root: Path) -> BanditFeedback:
    """Load a feedback directory; anything missing or broken raises a one-line PinlabDataError."""
    root = Path(root)
    manifest_path, table_path = root / FEEDBACK_MANIFEST, root / FEEDBACK_FILE
    if not manifest_path.is_file() or not table_path.is_file():
        raise PinlabDataError(
            f"{root} is not a bandit feedback directory (it needs {FEEDBACK_MANIFEST} and "
            f"{FEEDBACK_FILE}); write one with `pinlab sim run` or save_feedback"
        )
    manifest = _read_manifest(manifest_path)
    try:
        table = pq.read_table(table_path)
    except _ARROW_ERRORS as exc:
        raise PinlabDataError(
            f"{table_path} is not a readable Parquet file ({_one_line(exc)}); write it again"
        ) from exc
    missing = [name for name in FEEDBACK_COLUMNS if name not in table.column_names]
    if missing:
        raise PinlabDataError(
            f"{table_path} lacks column(s) {', '.join(missing)}; a feedback table needs "
            f"{', '.join(FEEDBACK_COLUMNS)} (and optionally pscore_slate)"
        )
    nulls = [name for name in table.column_names if table.column(name).null_count]
    if nulls:
        raise PinlabDataError(f"{table_path} has nulls in column(s) {', '.join(nulls)}; fill them")
    logger_path = root / LOGGER_DIST_FILE
    return BanditFeedback(
        n_actions=manifest.n_actions,
        len_list=manifest.len_list,
        round_id=_column(table, "round_id"),
        action=_column(table, "action"),
        position=_column(table, "position"),
        reward=_column(table, "reward"),
        pscore=_column(table, "pscore"),
        context=_context(table, manifest.context_dim, table_path),
        pscore_slate=_column(table, "pscore_slate")
        if "pscore_slate" in table.column_names
        else None,
        logger_dist=read_npy(logger_path, "write the logs again")
        if logger_path.is_file()
        else None,
    )


def _table(fb: BanditFeedback) -> pa.Table:
    d = fb.context_dim
    flat = pa.array(fb.context.reshape(-1), type=pa.float64())
    # Arrow has no fixed-size list of 0; no features is a plain list of empty lists.
    offsets = pa.array(np.arange(len(fb) + 1, dtype=np.int32) * d)
    context = (
        pa.FixedSizeListArray.from_arrays(flat, d) if d else pa.ListArray.from_arrays(offsets, flat)
    )
    columns: dict[str, pa.Array] = {
        "round_id": pa.array(fb.round_id),
        "action": pa.array(fb.action),
        "position": pa.array(fb.position),
        "reward": pa.array(fb.reward),
        "pscore": pa.array(fb.pscore),
        "context": context,
    }
    if fb.pscore_slate is not None:
        columns["pscore_slate"] = pa.array(fb.pscore_slate)
    return pa.table(columns)


def _column(table: pa.Table, name: str) -> np.ndarray:
    return np.asarray(table.column(name).to_numpy())


def _context(table: pa.Table, dim: int, path: Path) -> np.ndarray:
    column = table.column("context").combine_chunks()
    is_list = pa.types.is_fixed_size_list(column.type) or pa.types.is_list(column.type)
    if not is_list or not pa.types.is_floating(column.type.value_type):
        raise PinlabDataError(
            f"{path}: column context has type {column.type}, expected lists of {dim} floats "
            f"(context_dim in {FEEDBACK_MANIFEST}); write it with save_feedback"
        )
    lengths = np.asarray(pc.list_value_length(column).to_numpy(zero_copy_only=False))
    wrong = np.flatnonzero(lengths != dim)
    if len(wrong):
        raise PinlabDataError(
            f"{path}: context has {lengths[wrong[0]]} values at row {wrong[0]} "
            f"({len(wrong)} row(s) in all) but context_dim is {dim}; every row needs {dim}"
        )
    values = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
    return values.reshape(len(column), dim)


def _read_manifest(path: Path) -> FeedbackManifest:
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        manifest = FeedbackManifest.model_validate(raw)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValidationError) as exc:
        raise PinlabDataError(
            f"{path} is not a valid feedback manifest ({_one_line(exc)}); write the logs again"
        ) from exc
    if manifest.schema_version > FEEDBACK_SCHEMA_VERSION:
        raise PinlabDataError(
            f"{path} has schema_version {manifest.schema_version}, newer than this pinlab reads "
            f"({FEEDBACK_SCHEMA_VERSION}); upgrade pinlab"
        )
    return manifest
