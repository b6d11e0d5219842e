"""Public types of pinlab_eval: what metrics consume, the protocols, and the reports they return.

Metric names are lower case `name@k` (`ndcg@10`); whole-ranking metrics have no `@`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, model_validator

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog, PinlabDataError

Float64Array = npt.NDArray[np.float64]

Csr = tuple[Int64Array, Int64Array]
"""Rows of item lists as `(indptr, indices)`: row `r` holds `indices[indptr[r]:indptr[r + 1]]`."""


@runtime_checkable
class Scorer(Protocol):
    """Anything that scores every item for a batch of users (higher is better).

    `score(users)` returns shape (len(users), num_items) for user indices.
    """

    def score(self, users: Int64Array) -> Float32Array: ...


@runtime_checkable
class CandidateScorer(Scorer, Protocol):
    """A Scorer that can also score only given items per user, for sampled evaluation.

    `score_candidates(users, items)` takes `items` of shape (len(users), n) and returns the
    (len(users), n) scores `score(users)` would give them, without scoring the whole catalogue.
    """

    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array: ...


Metrics = dict[str, float]


class RankingReport(BaseModel):
    """Recommendation metrics under a named protocol, averaged over evaluated users."""

    protocol: str
    num_users: int
    num_items: int
    metrics: Metrics = Field(default_factory=dict)


class RetrievalReport(BaseModel):
    """Image retrieval metrics: queries and gallery share a label space (category)."""

    protocol: str
    num_queries: int
    metrics: Metrics = Field(default_factory=dict)


@dataclass(frozen=True)
class QueryRetrieval:
    """Retrieval by label kept per query, for intervals and groups of queries.

    `queries` are item indices (0..num_items-1) of the items that queried; `per_query[name][i]`
    is query `queries[i]`'s value under the names of `RetrievalReport.metrics`: `recall@k` is 1
    or 0, `map` its average precision, `map@r` its AP@R. Their means are the report's metrics.
    """

    protocol: str
    num_items: int
    queries: Int64Array
    per_query: dict[str, Float64Array]

    def report(self) -> RetrievalReport:
        return RetrievalReport(
            protocol=self.protocol,
            num_queries=len(self.queries),
            metrics={name: float(values.mean()) for name, values in self.per_query.items()},
        )


# --- protocols ---------------------------------------------------------------------------------

ProtocolName = Literal["stratified", "leave-last-out", "temporal", "cold-start"]
StratifyBy = Literal["item", "user"]
NegativeSampling = Literal["uniform", "popularity"]

PROTOCOL_SETTINGS: dict[str, tuple[str, ...]] = {
    "stratified": ("ratio", "stratify_by", "valid_ratio"),
    "leave-last-out": ("negatives", "sampling"),
    "temporal": ("quantile", "cut"),
    "cold-start": ("cold_fraction",),
}
"""The settings each protocol reads, besides `name` and `seed`."""


class ProtocolSpec(BaseModel):
    """A named, seeded evaluation protocol. Print `label()` or `settings()` with every result.

    - `stratified`: per item (`stratify_by="item"`, the default) or per user, the group's
      interactions in random order and the first `ratio` of them to train, the rest to test
      (Microsoft Recommenders' `python_stratified_split(ratio=0.75, filter_by=..., seed=42)`).
    - `leave-last-out`: each user's last distinct item is the test item (pinlab_data's
      `leave_last_out`); ranked against the whole catalogue, or against `negatives` items the
      user never touched, drawn `uniform`ly or by `popularity` (the NCF / SASRec protocol).
    - `temporal`: one global cut in time, at the `quantile` of all timestamps or at the
      timestamp `cut`: train before it, test from it on.
    - `cold-start`: a seeded `cold_fraction` of the items is held out entirely: every
      interaction with them is a test target, none is trained on, and each user's ranking is
      over those cold items only (models see them through item features alone).

    Settings that belong to another protocol must stay at their defaults, so a stray option
    is an error rather than silently ignored.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: ProtocolName
    seed: int = Field(default=42, description="Seeds the random split and the negatives.")
    ratio: float = Field(default=0.75, gt=0, lt=1, description="stratified: share to train.")
    stratify_by: StratifyBy = Field(default="item", description="stratified: the groups.")
    valid_ratio: float = Field(
        default=0.9,
        gt=0,
        lt=1,
        description="stratified: share of the training part that validation trains on.",
    )
    negatives: PositiveInt | None = Field(
        default=None, description="leave-last-out: sampled negatives per user; None ranks all."
    )
    sampling: NegativeSampling = Field(
        default="uniform", description="leave-last-out: how negatives are drawn."
    )
    quantile: float = Field(
        default=0.8, gt=0, lt=1, description="temporal: share of interactions before the cut."
    )
    cut: int | None = Field(
        default=None, description="temporal: the cut as a timestamp, instead of `quantile`."
    )
    cold_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="cold-start: share of items held out entirely."
    )

    @model_validator(mode="after")
    def _settings_belong_to_the_protocol(self) -> Self:
        own = PROTOCOL_SETTINGS[self.name]
        for owner, fields in PROTOCOL_SETTINGS.items():
            for field in fields:
                default = type(self).model_fields[field].default
                if field not in own and getattr(self, field) != default:
                    raise ValueError(
                        f"`{field}` is a setting of the {owner} protocol, not of {self.name}"
                    )
        if self.sampling != "uniform" and self.negatives is None:
            raise ValueError("`sampling` chooses how negatives are drawn; set `negatives` too")
        return self

    def settings(self) -> dict[str, object]:
        """The name, the seed and this protocol's own settings, to print with every result."""
        own = {field: getattr(self, field) for field in PROTOCOL_SETTINGS[self.name]}
        return {"name": self.name, "seed": self.seed, **own}

    def label(self) -> str:
        """One line, e.g. `stratified(ratio=0.75, stratify_by=item, valid_ratio=0.9, seed=42)`.

        Unset settings are left out; leave-last-out without negatives says `full ranking`.
        """
        own = {k: v for k, v in self.settings().items() if k not in ("name", "seed")}
        if self.name == "leave-last-out" and self.negatives is None:
            own = {"ranking": "full"}
        if self.cut is not None:
            del own["quantile"]  # the timestamp decides; the quantile would mislead
        shown = [f"{k}={v}" for k, v in own.items() if v is not None]
        return f"{self.name}({', '.join([*shown, f'seed={self.seed}'])})"

    def for_validation(self) -> ProtocolSpec:
        """The same protocol applied again inside the training part, to tune without test.

        The seed moves on by one, so the validation draw differs from the test draw; a
        temporal cut given as a timestamp falls back to the same `quantile` of the training
        part, since no training interaction is at or after it. A stratified validation
        trains on `valid_ratio` of the training part (0.9): a model tuned on much sparser data
        than it is refitted on picks too much regularisation (with the test's own 0.75 inside
        0.75, DLAE chose dropout 0.8-0.95 where 0.5 ranks better after the refit).
        """
        inner: dict[str, object] = {"seed": self.seed + 1, "cut": None}
        if self.name == "stratified":
            inner["ratio"] = self.valid_ratio
        return self.model_copy(update=inner)


class HoldoutCounts(BaseModel):
    """What one holdout kept and what it had to leave out, to print beside its results."""

    train_interactions: int
    target_interactions: int
    target_users: int = Field(description="Users evaluated: held-out items and training data.")
    skipped_users: int = Field(
        description="Users with held-out items but no training interaction: not evaluated."
    )
    dropped_interactions: int = Field(
        description="Held-out interactions removed: skipped users', and (temporal) repeats and "
        "those whose item is unseen in training or already seen by the user."
    )


@dataclass(frozen=True)
class Holdout:
    """Fit on `train`; rank for every user of `target`, whose target items are the relevant ones.

    Both logs index the same `user_ids` and `item_ids` as the log that was split. Every target
    user has training data. `negatives`, for sampled protocols only, holds one row of items the
    user never interacted with per target user, in ascending user index. `candidates`, for
    cold-start only, are the items every user's ranking is restricted to (ascending).
    """

    train: InteractionLog
    target: InteractionLog
    negatives: Int64Array | None
    counts: HoldoutCounts
    candidates: Int64Array | None = None


@dataclass(frozen=True)
class ProtocolSplit:
    """A log split by a protocol: `test` for the reported numbers, `valid` for tuning.

    `valid` is the protocol applied again (`spec.for_validation()`) inside `test.train`, so a
    model chooses its hyperparameters by fitting `valid.train` and ranking for `valid.target`,
    then refits on `test.train` with them; the test interactions are never seen while tuning.
    """

    spec: ProtocolSpec
    test: Holdout
    valid: Holdout


# --- per-user results and statistics -----------------------------------------------------------


@dataclass(frozen=True)
class UserMetrics:
    """Metrics of one model under one holdout, kept per user for confidence intervals and tests.

    `per_user[name][i]` is user `users[i]`'s value; `lists` holds what only the recommendation
    lists as a whole have (`coverage@k`, `gini@k`).
    """

    users: Int64Array
    per_user: dict[str, Float64Array]
    lists: dict[str, float]

    def means(self) -> Metrics:
        """Per-user metrics averaged over users, then the list-level ones."""
        return {
            **{name: float(values.mean()) for name, values in self.per_user.items()},
            **self.lists,
        }


class PairedTest(BaseModel):
    """A paired test of mean(a) - mean(b) over the same users."""

    difference: float
    difference_ci95: tuple[float, float]
    p_value: float
    significant: bool = Field(description="p_value below the test's alpha (0.05 unless told).")
    test: str = Field(description="Which test, with its resamples and seed.")


class ModelResult(BaseModel):
    """One model's row of a bench table, over one or more repeated runs (seeds).

    `metrics` are means over runs of each run's mean over users; `std` their standard
    deviation over runs (ddof=1; 0 for one run) and `per_seed` the runs' values in order.
    `ci95` is the percentile bootstrap interval of the mean over every (run, user) pair.
    """

    model: str
    num_users: int = Field(description="Target users summed over the runs.")
    metrics: Metrics
    std: Metrics
    per_seed: dict[str, list[float]]
    ci95: dict[str, tuple[float, float]] = Field(
        description="Percentile bootstrap interval of each per-user metric's mean."
    )


class Comparison(BaseModel):
    """Model `a` (the higher mean `metric`) against model `b`, paired over runs and users.

    `difference` is mean(a - b) over every (run, user) pair; `p_value` a two-sided paired
    bootstrap over those pairs, and `p_holm` it adjusted by Holm's step-down method over all
    the comparisons of one table, which `significant` uses. `per_seed` holds each run's
    difference and `wins` how many runs `a` was ahead in.
    """

    a: str
    b: str
    metric: str
    difference: float
    difference_ci95: tuple[float, float]
    p_value: float
    p_holm: float
    significant: bool
    per_seed: list[float]
    wins: int
    test: str


class BenchSummary(BaseModel):
    """Rows in the order given, and every pair compared (empty with fewer than two models)."""

    rows: list[ModelResult]
    comparisons: list[Comparison]
    seeds: int


# --- plots -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Curve:
    """One line of a curves plot: (x, y) points in x order.

    A labelled curve is drawn in colour and named in the legend; an unlabelled one is drawn
    thin and grey, as background (the trials of a search behind the one it chose).
    """

    points: list[tuple[float, float]]
    label: str | None = None


# --- published anchors -------------------------------------------------------------------------


class Anchor(BaseModel):
    """A published number to print beside ours: same dataset, same protocol settings.

    `metrics` uses pinlab's metric names; a value of None means the source reports it but it
    could not be checked against a readable copy, so it is not quoted.
    """

    model_config = ConfigDict(frozen=True)

    dataset: str
    protocol: ProtocolSpec
    model: str
    metrics: dict[str, float | None]
    source: str
    note: str = ""


@dataclass(frozen=True)
class VisualProtocol:
    """Which images an encoder trains on and which it is measured on.

    `unseen-classes`: the classes are split in two and the test images belong to classes never
    trained on; `held-out-images`: every class on both sides, images split by a seeded hash.
    """

    name: Literal["unseen-classes", "held-out-images"]
    train: Int64Array
    """Rows of the pins table the encoders train on."""
    test: Int64Array
    """Rows measured."""
    train_classes: list[str]
    test_classes: list[str]


# --- fairness: exposure over item groups, quality over user groups ------------------------------


class GroupExposure(BaseModel):
    """One item group's share of position-weighted exposure against its share of relevance.

    An empty group (none of its items among the held-out targets) has no relevance share and no
    ratio: `empty` is true and both are None, never 0.
    """

    group: int
    num_items: int = Field(ge=0, description="Catalogue items in the group.")
    exposure_share: float = Field(ge=0, le=1)
    relevance_share: float | None = Field(default=None, ge=0, le=1)
    ratio: float | None = Field(
        default=None, ge=0, description="exposure_share / relevance_share: 1 is fair."
    )
    empty: bool

    @model_validator(mode="after")
    def _empty_means_no_relevance(self) -> Self:
        if self.empty != (self.relevance_share is None) or self.empty != (self.ratio is None):
            raise ValueError("an empty group has no relevance share or ratio, and only it")
        return self


class ExposureReport(BaseModel):
    """Fairness of exposure (Singh & Joachims, KDD 2018) of top-k lists over item groups.

    `disparity` is the total variation ½ Σ_g |exposure_share - relevance_share| (relevance share
    0 for empty groups): 0 when exposure follows relevance, 1 when they share no group.
    """

    k: PositiveInt
    num_users: int
    groups: list[GroupExposure]
    disparity: float = Field(ge=0, le=1)


class GroupQuality(BaseModel):
    """A per-user metric over one user group: mean, bootstrap interval, count (None when empty)."""

    group: int
    count: int = Field(ge=0)
    mean: float | None = None
    ci: tuple[float, float] | None = None
    empty: bool

    @model_validator(mode="after")
    def _empty_means_no_values(self) -> Self:
        if self.empty != (self.count == 0) or self.empty != (self.mean is None):
            raise ValueError("a group has a mean exactly when it has users")
        if self.empty != (self.ci is None):
            raise ValueError("a group has an interval exactly when it has users")
        return self


class GroupQualityReport(BaseModel):
    """How one per-user metric differs over user groups (higher is better).

    `worst_group`/`best_group` are the non-empty groups of lowest/highest mean; `gap` is best
    mean - worst mean.
    """

    metric: str
    level: float = Field(gt=0, lt=1)
    resamples: PositiveInt
    seed: int
    groups: list[GroupQuality]
    worst_group: int
    best_group: int
    gap: float = Field(ge=0)


OpeEstimatorName = Literal["dm", "ips", "snips", "dr", "switch-dr", "dr-os", "pseudo-inverse"]
CiMethod = Literal["normal", "bootstrap"]
SupportBasis = Literal["logger_dist", "logged-pairs", "not-needed"]


class OpeInputError(PinlabDataError):
    """Inputs an off-policy estimator cannot use (shapes, distributions); exit 2 in the CLI."""


class OpeEstimate(BaseModel):
    """One off-policy estimate of a target policy's value from logged bandit feedback.

    `value` follows obp's definitions: the mean over logged rows of each row's estimate (for a
    slate log, the value per impression), except `pseudo-inverse`, whose value is per round
    (the expected reward of a whole slate: positions summed). `value` and the interval are None
    when the estimate cannot be made: `supported` False (an IPS-family estimator, a target
    with mass where the logger never acts) or too few rounds for an interval.
    """

    # An infinite tau or lambda (switch-dr as dr) is written "Infinity" and read back.
    model_config = ConfigDict(frozen=True, ser_json_inf_nan="strings")

    name: OpeEstimatorName
    value: float | None
    ci_low: float | None
    ci_high: float | None
    n: int = Field(description="Logged rows read.")
    n_rounds: int = Field(description="Rounds (slates); the resampling unit of the interval.")
    alpha: float = Field(description="The interval covers 1 - alpha.")
    ci: CiMethod
    supported: bool = True
    unsupported_mass: float = Field(
        default=0.0,
        description="Mean over rows of the target's probability on actions the logger could "
        "not take at the row's position.",
    )
    unsupported_rows: int = Field(default=0, description="Rows with such mass.")
    support: SupportBasis = Field(
        default="not-needed",
        description="What support was checked against: the logger's distribution per row, or "
        "(without it) the (action, position) pairs the logs hold.",
    )
    params: dict[str, float] = Field(
        default_factory=dict, description="Hyperparameters used (switch-dr's tau, dr-os's lambda)."
    )
    note: str | None = None


class NearDuplicates(BaseModel):
    """Generated images that are near-duplicates of a reference (training) image.

    A pair links when its perceptual hashes, colour thumbnails and embeddings all agree within
    the thresholds (the test of `pinlab data dedupe --run`).
    """

    total: int = Field(ge=0, description="Generated images checked.")
    count: int = Field(ge=0, description="Of them, near-duplicates of at least one reference.")
    share: float = Field(ge=0, le=1)
    pairs: list[tuple[int, int]] = Field(
        default_factory=list, description="(generated row, reference row) of every linked pair."
    )
    max_distance: int = Field(ge=0, description="pHash Hamming distance (of 64 bits) to link.")
    max_color_diff: float = Field(ge=0, description="Mean 0-255 thumbnail difference to link.")
    min_cosine: float = Field(ge=-1, le=1, description="Embedding cosine a pair needs.")
