"""Public types of pinlab_data: records, the dataset bundle, splits and validation reports.

Records are pydantic models for single rows (APIs, docs, tests); bulk data travels as Arrow
tables whose schemas below mirror those models column for column.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, NonNegativeInt, PositiveInt

SCHEMA_VERSION = 1

Int64Array = npt.NDArray[np.int64]
MAX_ID = 2**63 - 1
"""The largest pin or user id: ids are non-negative int64s (`PIN_SCHEMA`, `USER_SCHEMA`)."""
Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]
ImageArray = npt.NDArray[np.uint8]
"""Images packed as (N, H, W, 3) uint8 RGB."""


class PinlabDataError(ValueError):
    """Bad input: a file, directory or value that is not what pinlab expects.

    The message says what was wrong and how to fix it; the CLI turns it into exit code 2.
    """


class EventKind(StrEnum):
    VIEW = "view"
    CLICK = "click"
    SAVE = "save"
    RATING = "rating"
    """An explicit rating; its weight is the rating itself (any positive number)."""


EVENT_WEIGHTS: dict[EventKind, float] = {
    EventKind.VIEW: 1.0,
    EventKind.CLICK: 2.0,
    EventKind.SAVE: 4.0,
}
"""Default weights of the implicit events; a rating carries its own weight."""


class Pin(BaseModel):
    """One pin: an image with a caption, a category and a creator."""

    model_config = ConfigDict(frozen=True)

    pin_id: NonNegativeInt
    caption: str
    category: str
    creator_id: NonNegativeInt
    creator_group: str
    image_row: NonNegativeInt | None = Field(
        default=None, description="Row in the dataset's packed image array (images.npy)."
    )
    image_path: str | None = Field(
        default=None, description="Image file path, relative to the dataset directory."
    )
    external_id: str | None = Field(
        default=None, description="The item's id in the source data, where pinlab assigned pin_id."
    )


class User(BaseModel):
    model_config = ConfigDict(frozen=True)

    user_id: NonNegativeInt
    external_id: str | None = Field(
        default=None, description="The user's id in the source data, where pinlab assigned user_id."
    )


class Interaction(BaseModel):
    """A user engaging with a pin at a time (unix seconds)."""

    model_config = ConfigDict(frozen=True)

    user_id: NonNegativeInt
    pin_id: NonNegativeInt
    timestamp: NonNegativeInt
    event: EventKind = EventKind.VIEW
    weight: float = Field(default=1.0, gt=0)


PIN_SCHEMA = pa.schema(
    [
        pa.field("pin_id", pa.int64(), nullable=False),
        pa.field("caption", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("creator_id", pa.int64(), nullable=False),
        pa.field("creator_group", pa.string(), nullable=False),
        pa.field("image_row", pa.int64()),
        pa.field("image_path", pa.string()),
        pa.field("external_id", pa.string()),
    ]
)
USER_SCHEMA = pa.schema(
    [pa.field("user_id", pa.int64(), nullable=False), pa.field("external_id", pa.string())]
)
INTERACTION_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("pin_id", pa.int64(), nullable=False),
        pa.field("timestamp", pa.int64(), nullable=False),
        pa.field("event", pa.string(), nullable=False),
        pa.field("weight", pa.float32(), nullable=False),
    ]
)
TABLE_SCHEMAS: dict[str, pa.Schema] = {
    "pins": PIN_SCHEMA,
    "users": USER_SCHEMA,
    "interactions": INTERACTION_SCHEMA,
}
ADDED_COLUMNS = frozenset({"external_id"})
"""Nullable columns added after the first datasets were written; tables without them (older
datasets, tables built before the column existed) read them as all null."""


class DatasetManifest(BaseModel):
    """`dataset.json`: what a dataset directory holds and where it came from."""

    schema_version: int = SCHEMA_VERSION
    name: str
    source: str = Field(description="How it was made: 'synth', 'movielens', ...")
    seed: int | None = None
    config: dict[str, object] = Field(default_factory=dict, description="Generator settings.")
    num_pins: NonNegativeInt
    num_users: NonNegativeInt
    num_interactions: NonNegativeInt
    image_size: NonNegativeInt | None = Field(
        default=None, description="Side of the packed square images, if any."
    )
    categories: list[str] = Field(default_factory=list)


InteractionFormat = Literal["csv", "tsv", "parquet"]
OnBadLines = Literal["error", "skip", "report"]
SequenceLayout = Literal["auto", "user-item", "user-items"]
"""A sequence file's lines: `user item` each, or `user item item ...` (see `load_sequences`)."""
"""What a loader does with a malformed line: stop at the first, drop them, or drop them and
list them in the dataset's `bad_lines.csv`."""


class InteractionFilters(BaseModel):
    """Filters a loader applies to the interactions, in this order: min_rating, dedupe, k_core."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_rating: FiniteFloat | None = Field(
        default=None, description="Keep ratings >= this (explicit ratings to implicit positives)."
    )
    dedupe: bool = Field(
        default=False, description="Keep only the earliest interaction of each (user, item) pair."
    )
    k_core: PositiveInt | None = Field(
        default=None,
        description="Drop users and items with fewer than k interactions, until none are left.",
    )


class ColumnMapping(BaseModel):
    """Which columns of an interaction log hold what. Only user and item are required."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    user: str = "user_id"
    item: str = "item_id"
    time: str | None = Field(
        default=None,
        description="Seconds, milliseconds or ISO datetimes; None: 'timestamp' if the log has "
        "it, else the row order.",
    )
    rating: str | None = Field(default=None, description="None: every row is a 'view' of 1.0.")
    text: str | None = Field(default=None, description="Item text (its first row's), the caption.")
    category: str | None = Field(default=None, description="Item category (its first row's).")


class FilterStep(BaseModel):
    """One filter as applied: its setting and the interactions before and after it."""

    name: Literal["min-rating", "dedupe", "k-core"]
    value: float | int | bool
    rows_before: NonNegativeInt
    rows_after: NonNegativeInt


LoaderKind = Literal[
    "movielens",
    "interactions",
    "sequences",
    # pinlab new: loader kinds go above this line (`pinlab new loader KIND`)
]
"""Which loader wrote a dataset (`LoadReport.kind`)."""


class LoadReport(BaseModel):
    """What a loader read and what it wrote."""

    dataset: str = Field(description="The dataset directory written.")
    kind: LoaderKind
    source: str
    layout: str = Field(description="The source's format: '100k', '1m', 'csv', 'parquet', ...")
    rows_read: NonNegativeInt = Field(description="Interactions read, bad lines excluded.")
    bad_lines: NonNegativeInt = 0
    filters: list[FilterStep] = Field(default_factory=list)
    num_pins: NonNegativeInt
    num_users: NonNegativeInt
    num_interactions: NonNegativeInt
    seconds: float


ImageLayout = Literal["folders", "csv", "parquet"]
"""How an image collection is laid out: one folder per class, or a manifest file."""


class ImageColumns(BaseModel):
    """Which manifest columns hold what; None picks the conventional name when present."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = "path"
    pin_id: str | None = Field(default=None, description="None: 'pin_id' if present.")
    caption: str | None = Field(default=None, description="None: 'caption' if present.")
    label: str | None = Field(default=None, description="None: 'label' or 'labels' if present.")


class SkippedImage(BaseModel):
    """A file that did not become a pin, and why."""

    path: str
    reason: str


class ImageLoadReport(BaseModel):
    """What `load_images` read, what it skipped and what it wrote."""

    dataset: str
    source: str
    layout: ImageLayout
    files: NonNegativeInt = Field(description="Files considered (images or not).")
    loaded: NonNegativeInt
    skipped: NonNegativeInt
    skipped_by_reason: dict[str, int] = Field(default_factory=dict)
    skipped_report: str = Field(description="The dataset's CSV listing every skipped file.")
    image_size: PositiveInt
    num_pins: NonNegativeInt
    categories: list[str] = Field(default_factory=list)
    workers: PositiveInt
    seconds: float


class DuplicateCluster(BaseModel):
    """Pins whose images are copies of one another (exact, resized or re-encoded)."""

    pin_ids: list[int] = Field(description="Sorted; the first is the one to keep.")
    max_hash_distance: NonNegativeInt = Field(
        description="Largest perceptual-hash Hamming distance among the cluster's linked pairs."
    )
    min_cosine: float | None = Field(
        default=None, description="Lowest embedding cosine among linked pairs, if confirmed."
    )


class DedupeReport(BaseModel):
    """`pinlab data dedupe`: near-duplicate clusters by perceptual hash, confirmed by embedding."""

    dataset: str
    hash: Literal["phash"] = "phash"
    max_distance: NonNegativeInt = Field(description="Hamming distance (of 64 bits) to link.")
    max_color_diff: float = Field(
        description="Largest mean absolute difference (0-255) of 8x8 colour thumbnails to link."
    )
    min_cosine: float | None = Field(
        default=None, description="Embedding cosine a hash pair needs; None: not confirmed."
    )
    model_id: str | None = Field(default=None, description="The encoder that confirmed pairs.")
    num_images: NonNegativeInt
    hash_pairs: NonNegativeInt = Field(description="Pairs within max_distance.")
    candidate_pairs: NonNegativeInt = Field(
        description="Hash pairs whose colour thumbnails also agree (pHash is colour-blind)."
    )
    confirmed_pairs: NonNegativeInt = Field(description="Candidates the embeddings confirm.")
    duplicates: NonNegativeInt = Field(description="Pins in clusters beyond each one's first.")
    clusters: list[DuplicateCluster] = Field(default_factory=list)
    report: str | None = Field(default=None, description="Where this report was written.")


@dataclass(frozen=True)
class Dataset:
    """A loaded dataset directory. Images are memory-mapped, never read whole."""

    root: Path
    manifest: DatasetManifest
    pins: pa.Table
    users: pa.Table
    interactions: pa.Table
    images: ImageArray | None = None

    def pin_ids(self) -> Int64Array:
        return np.asarray(self.pins.column("pin_id").to_numpy(), dtype=np.int64)

    def user_ids(self) -> Int64Array:
        return np.asarray(self.users.column("user_id").to_numpy(), dtype=np.int64)


@dataclass(frozen=True)
class SessionHistory:
    """A visitor's history resolved against a catalogue (`session_history`)."""

    items: Int64Array
    """Item indexes of the known pins, oldest first, cut to the model's window."""
    given: int
    """Pin ids the visitor gave."""
    unknown: list[int]
    """Given ids the catalogue lacks, left out."""
    truncated_from: int | None
    """Known items before the cut to the window; None when nothing was cut."""

    def warnings(self) -> list[str]:
        """What a response says about the history it did not use whole."""
        said = []
        if self.unknown:
            said.append(f"ignored {len(self.unknown)} unknown pin ids: {self.unknown[:20]}")
        if self.truncated_from is not None:
            said.append(
                f"the history had {self.truncated_from} known pins; the model reads the most "
                f"recent {len(self.items)}"
            )
        return said


@dataclass(frozen=True)
class InteractionLog:
    """Interactions in dense index space, the form models and metrics work on.

    `users[i]` and `items[i]` index `user_ids` and `item_ids` (the original ids).
    """

    users: Int64Array
    items: Int64Array
    timestamps: Int64Array
    weights: Float32Array
    user_ids: Int64Array
    item_ids: Int64Array

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.users)


@dataclass(frozen=True)
class LeaveLastOutSplit:
    """Per user, by time: the last distinct pin is test, the one before it validation."""

    train: InteractionLog
    valid: InteractionLog
    test: InteractionLog
    protocol: Literal["leave-last-out"] = "leave-last-out"


Severity = Literal["error", "warning"]


class Problem(BaseModel):
    """One thing wrong with a dataset, and where."""

    severity: Severity
    code: str = Field(description="Stable machine-readable kind, e.g. 'dangling-pin-id'.")
    where: str = Field(description="File and row or column, e.g. 'interactions.parquet row 12'.")
    message: str


class ValidationReport(BaseModel):
    root: str
    problems: list[Problem] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(p.severity == "error" for p in self.problems)


@dataclass(frozen=True)
class SynthTruth:
    """What generated a synthetic world, so evaluation can say how much models recover.

    Tastes are over categories; `taste_end` is each user's taste at their last interaction.
    """

    categories: list[str]
    palettes: list[str]
    taste_start: Float32Array
    taste_end: Float32Array
    palette_taste: Float32Array
    pin_category: Int64Array
    pin_palette: Int64Array
    pin_appeal: Float32Array


class TruePreference(Protocol):
    """How strongly every item attracts some users: the click probability of an item seen with
    full attention, in [0, 1]. What drives the simulator (`Simulator`): the synthetic world's
    tastes (`SynthPreference`) or a fitted model's calibrated scores (`MatrixPreference`)."""

    @property
    def num_users(self) -> int: ...

    @property
    def num_items(self) -> int: ...

    def attraction(self, users: Int64Array) -> Float64Array:
        """(len(users), num_items) attraction in [0, 1]."""
        ...


@dataclass(frozen=True)
class SlateOutcome:
    """What one simulator step showed and what came of it, one row per user served."""

    users: Int64Array
    """(B,) the users served."""
    slates: Int64Array
    """(B, k) the items shown, top first."""
    clicks: Float64Array
    """(B, k) 1 where the user clicked."""
    attraction: Float64Array
    """(B, k) the shown items' attraction at that moment (after drift and fatigue)."""
    expected: Float64Array
    """(B,) expected clicks of the slate shown, from the true attraction (not the draw)."""
    best: Float64Array
    """(B,) expected clicks of the best slate for the user at that moment."""

    @property
    def regret(self) -> Float64Array:
        """(B,) expected clicks lost against the best slate."""
        return np.asarray(self.best - self.expected, dtype=np.float64)


FEEDBACK_COLUMNS = ("round_id", "action", "position", "reward", "pscore", "context")
"""Columns a logged-feedback table must have (`pscore_slate` is optional)."""
MAX_ROWS_NAMED = 5


class BanditFeedbackError(PinlabDataError):
    """Logged bandit feedback that breaks its contract; the message names the rows."""


@dataclass(frozen=True)
class BanditFeedback:
    """Logged bandit feedback: one row per impression (a slate of `len_list` has that many rows).

    The contract off-policy estimators read, filled by simulators and by loaders of real logs
    (Open Bandit Pipeline's `bandit_feedback` maps onto it field by field). Arrays are coerced
    to their dtypes and checked on construction; every broken rule is reported in one
    `BanditFeedbackError` that names the first rows (and how many) breaking it.
    """

    n_actions: int
    """Catalogue size; actions are 0..n_actions-1."""
    len_list: int
    """Slate size (1: one action per round)."""
    round_id: Int64Array
    """(n,) the slate or round a row belongs to."""
    action: Int64Array
    """(n,) in [0, n_actions)."""
    position: Int64Array
    """(n,) in [0, len_list)."""
    reward: Float64Array
    """(n,) the observed reward (a click 0/1 or any real number)."""
    pscore: Float64Array
    """(n,) in (0, 1]: the logger's marginal probability of `action` at `position`."""
    context: Float64Array
    """(n, d) the round's context features, repeated on each of its rows (d may be 0)."""
    pscore_slate: Float64Array | None = None
    """(n,) in (0, 1]: the logger's probability of the whole logged slate (same on its rows)."""
    logger_dist: Float64Array | None = None
    """(n, n_actions, len_list): the logger's full distribution per row, when known (simulators).

    Lets estimators check support exactly: a target's mass where this is 0 is unsupported.
    """

    def __post_init__(self) -> None:
        n = _coerce(self, "round_id", np.int64)
        for name in ("action", "position"):
            _coerce(self, name, np.int64)
        for name in ("reward", "pscore"):
            _coerce(self, name, np.float64)
        _coerce(self, "context", np.float64, ndim=2)
        if self.pscore_slate is not None:
            _coerce(self, "pscore_slate", np.float64)
        if self.logger_dist is not None:
            _coerce(self, "logger_dist", np.float64, ndim=3)
        problems = _feedback_problems(self, n)
        if problems:
            raise BanditFeedbackError(
                f"bandit feedback is invalid: {'; '.join(problems)}; fix the logs (or the code "
                "that wrote them) and load them again"
            )

    def __len__(self) -> int:
        return len(self.action)

    @property
    def n_rounds(self) -> int:
        return len(np.unique(self.round_id))

    @property
    def context_dim(self) -> int:
        return int(self.context.shape[1])

    def round_index(self) -> Int64Array:
        """Each row's round as 0..n_rounds-1 (rounds in sorted round_id order)."""
        return np.unique(self.round_id, return_inverse=True)[1].astype(np.int64)


def _coerce(fb: BanditFeedback, name: str, dtype: type[np.generic], ndim: int = 1) -> int:
    """Set field `name` to a C-contiguous array of `dtype`; return its length."""
    raw = np.asarray(getattr(fb, name))
    if raw.ndim != ndim:
        raise BanditFeedbackError(
            f"bandit feedback field {name!r} has {raw.ndim} dimension(s), expected {ndim}; "
            "see BanditFeedback's field docs"
        )
    if dtype is np.int64 and raw.size and not np.issubdtype(raw.dtype, np.integer):
        raise BanditFeedbackError(
            f"bandit feedback field {name!r} holds {raw.dtype} values, expected integers; cast "
            "the column to an integer type"
        )
    if dtype is np.float64 and raw.size and not np.issubdtype(raw.dtype, np.number):
        raise BanditFeedbackError(
            f"bandit feedback field {name!r} holds {raw.dtype} values, expected numbers"
        )
    object.__setattr__(fb, name, np.ascontiguousarray(raw, dtype=dtype))
    return len(raw)


def _named_rows(
    mask: npt.NDArray[np.bool_], what: str, values: npt.NDArray[Any] | None = None
) -> list[str]:
    """'what at N row(s) (rows 3, 7, ...; values ...)', or nothing when no row is in `mask`."""
    rows = np.flatnonzero(mask)
    if len(rows) == 0:
        return []
    shown = rows[:MAX_ROWS_NAMED]
    more = ", ..." if len(rows) > len(shown) else ""
    detail = f"rows {', '.join(str(r) for r in shown)}{more}"
    if values is not None:
        detail += f"; values {', '.join(repr(v.item()) for v in values[shown])}{more}"
    return [f"{what} at {len(rows)} row(s) ({detail})"]


def _feedback_problems(fb: BanditFeedback, n: int) -> list[str]:
    if fb.n_actions < 1 or fb.len_list < 1:
        return [f"n_actions ({fb.n_actions}) and len_list ({fb.len_list}) must be at least 1"]
    lengths = {
        "action": len(fb.action),
        "position": len(fb.position),
        "reward": len(fb.reward),
        "pscore": len(fb.pscore),
        "context": len(fb.context),
    }
    if fb.pscore_slate is not None:
        lengths["pscore_slate"] = len(fb.pscore_slate)
    if fb.logger_dist is not None:
        lengths["logger_dist"] = len(fb.logger_dist)
    wrong = {name: size for name, size in lengths.items() if size != n}
    if wrong:
        said = ", ".join(f"{name} has {size}" for name, size in wrong.items())
        return [f"every field needs one entry per row: round_id has {n} rows but {said}"]
    problems = [
        *_named_rows(
            (fb.action < 0) | (fb.action >= fb.n_actions),
            f"action outside the catalogue [0, {fb.n_actions})",
            fb.action,
        ),
        *_named_rows(
            (fb.position < 0) | (fb.position >= fb.len_list),
            f"position outside the slate [0, {fb.len_list})",
            fb.position,
        ),
        *_named_rows(~((fb.pscore > 0) & (fb.pscore <= 1)), "pscore not in (0, 1]", fb.pscore),
        *_named_rows(~np.isfinite(fb.reward), "reward not finite", fb.reward),
    ]
    finite_context = np.asarray(np.isfinite(fb.context).all(axis=1), dtype=np.bool_)
    problems += _named_rows(~finite_context, "context not finite")
    if fb.pscore_slate is not None:
        problems += _named_rows(
            ~((fb.pscore_slate > 0) & (fb.pscore_slate <= 1)),
            "pscore_slate not in (0, 1]",
            fb.pscore_slate,
        )
    if n and not problems:
        problems += _round_problems(fb)
    if fb.logger_dist is not None and n and not problems:
        problems += _logger_problems(fb, fb.logger_dist)
    return problems


def _round_problems(fb: BanditFeedback) -> list[str]:
    """A round shows each position at most once, and its rows agree on pscore_slate."""
    order = np.lexsort((fb.position, fb.round_id))
    same = (np.diff(fb.round_id[order]) == 0) & (np.diff(fb.position[order]) == 0)
    repeated = np.zeros(len(fb.action), dtype=np.bool_)
    repeated[order[1:][same]] = True
    problems = _named_rows(repeated, "position repeated within its round", fb.position)
    if fb.pscore_slate is not None:
        by_round = np.lexsort((fb.round_id,))
        sorted_ps = fb.pscore_slate[by_round]
        same_round = np.diff(fb.round_id[by_round]) == 0
        differs = np.zeros(len(fb.action), dtype=np.bool_)
        differs[by_round[1:][same_round & (sorted_ps[1:] != sorted_ps[:-1])]] = True
        problems += _named_rows(
            differs, "pscore_slate differing from its round's first row", fb.pscore_slate
        )
    return problems


def _logger_problems(fb: BanditFeedback, dist: Float64Array) -> list[str]:
    if dist.shape[1:] != (fb.n_actions, fb.len_list):
        return [
            f"logger_dist has shape {dist.shape}, expected (rows, n_actions={fb.n_actions}, "
            f"len_list={fb.len_list})"
        ]
    rows = np.arange(len(dist))
    column = dist[rows, :, fb.position]
    bad_sum = ~np.isclose(column.sum(axis=1), 1.0, atol=1e-6) | (column < 0).any(axis=1)
    problems = _named_rows(
        bad_sum,
        "logger_dist not a distribution over actions at the row's position",
        column.sum(axis=1),
    )
    logged = dist[rows, fb.action, fb.position]
    problems += _named_rows(
        ~np.isclose(logged, fb.pscore, rtol=0.0, atol=1e-6),
        "logger_dist at the logged action differing from pscore",
        logged,
    )
    return problems


EMBEDDINGS_FORMAT = 1
EmbeddingKind = Literal["image", "text"]
"""A set of vectors in an embeddings directory: pin images, or pin captions."""


def embedding_schema(dim: int) -> pa.Schema:
    """One shard of vectors: the pin's id (as the pins table has it) and a float32 vector."""
    return pa.schema(
        [
            pa.field("pin_id", PIN_SCHEMA.field("pin_id").type, nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dim), nullable=False),
        ]
    )


class EmbeddingSet(BaseModel):
    """One kind of vector in an embeddings directory, as Parquet shards of `embedding_schema`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: EmbeddingKind
    model_id: str = Field(description="Fingerprint of the model that made the vectors.")
    dim: PositiveInt
    count: NonNegativeInt = Field(description="Vectors over all shards.")
    shards: list[str] = Field(description="Shard file names, in pin-table order.")
    note: str = Field(default="", description="What was embedded, and what was left out.")


class EmbeddingsManifest(BaseModel):
    """`manifest.json` of an embeddings directory; written last, so its presence means the
    shards it lists are complete."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = EMBEDDINGS_FORMAT
    engine: str = Field(description="What computed the vectors: 'local' or 'ray'.")
    created: str
    dataset: str = Field(description="The dataset directory embedded.")
    dataset_fingerprint: str
    count: NonNegativeInt = Field(description="Pins in the dataset.")
    sets: dict[str, EmbeddingSet] = Field(description="Kind ('image', 'text') to its shards.")
    config: dict[str, object] = Field(default_factory=dict, description="Engine settings.")
