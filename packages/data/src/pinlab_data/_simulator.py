"""A recommendation simulator: users see slates, click through a click model driven by their
true attraction to each item, drift in taste and tire of what they keep seeing.

Per step, a batch of distinct users (drawn uniformly) is each shown a slate of k items; the
simulator draws their clicks and returns the expected clicks of that slate and of the best
slate at that moment, both from the true attraction (so regret is computed from expectations,
not from the sampled clicks). Two click models:

- `pbm` (position-based, Richardson et al. 2007; Craswell et al. 2008): position p is examined
  with probability (p + 1)^-position_bias and an examined item is clicked with its attraction;
  expected clicks sum over positions, the best slate is the k most attractive, best first.
- `cascade` (Craswell et al. 2008): the user scans from the top and clicks the first item that
  attracts them, then stops; expected clicks 1 - prod(1 - attraction), the best slate holds the
  k most attractive items (in any order).

Dynamics, both per user and only while the user is served:
- drift: each served round moves a user a share `drift` of the remaining way from their
  starting preference to their end preference (the synthetic world's own drifted taste, or
  another user's preference when none is given);
- fatigue: every item keeps an exposure count per user, which decays by `recovery` each round
  the user is served and grows by 1 each time the item is shown; attraction is multiplied by
  exp(-fatigue * exposure), so what a user keeps seeing attracts them less.

Everything random comes from one generator seeded by `SimConfig.seed`, so the same seed and
the same slates give the same clicks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pinlab_data.contracts import (
    Float64Array,
    Int64Array,
    PinlabDataError,
    SlateOutcome,
    SynthTruth,
    TruePreference,
)

ClickModel = Literal["pbm", "cascade"]
MAX_STATE_CELLS = 200_000_000
"""Fatigue keeps one float32 per user and item; past this many cells, say so instead of
exhausting memory."""


class SimConfig(BaseModel):
    """Settings of a simulated stream of users; the same settings and seed give the same clicks."""

    model_config = ConfigDict(extra="forbid")

    slate_size: Annotated[int, Field(ge=1, le=50, description="Items shown per round (k).")] = 3
    click_model: ClickModel = "pbm"
    position_bias: Annotated[
        float, Field(ge=0, description="pbm: position p is examined with (p + 1)^-this.")
    ] = 1.0
    fatigue: Annotated[
        float, Field(ge=0, description="Attraction is multiplied by exp(-this * exposure).")
    ] = 0.1
    recovery: Annotated[
        float, Field(ge=0, lt=1, description="Exposure kept from one served round to the next.")
    ] = 0.8
    drift: Annotated[
        float,
        Field(ge=0, le=1, description="Share of the way to the end preference moved per round."),
    ] = 0.002
    users_per_step: Annotated[int, Field(ge=1, description="Distinct users served per step.")] = 256
    seed: int = 0

    def stationary(self) -> SimConfig:
        """The same settings without drift or fatigue: a contextual bandit whose reward depends
        only on the user and the slate (what off-policy estimators assume)."""
        return self.model_copy(update={"fatigue": 0.0, "drift": 0.0})

    @property
    def is_stationary(self) -> bool:
        return self.fatigue == 0 and self.drift == 0


@dataclass(frozen=True)
class MatrixPreference:
    """Attraction given as a dense (users, items) matrix in [0, 1]."""

    matrix: Float64Array

    def __post_init__(self) -> None:
        m = np.asarray(self.matrix, dtype=np.float64)
        if m.ndim != 2 or m.size == 0:
            raise PinlabDataError(
                f"attraction must be a non-empty (users, items) matrix, got {m.shape}"
            )
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise PinlabDataError("attraction must be finite and within [0, 1]")
        object.__setattr__(self, "matrix", m)

    @classmethod
    def from_scores(
        cls, scores: Float64Array, base_rate: float = 0.05, spread: float = 1.5
    ) -> MatrixPreference:
        """A fitted model's scores as attraction: each user's scores standardised over the
        items, then sigmoid(logit(base_rate) + spread * z), so an item of average score for the
        user attracts them with `base_rate` and one a standard deviation up e^spread times the
        odds. The scale of a model's scores means nothing; their order and spread per user do."""
        s = np.asarray(scores, dtype=np.float64)
        if s.ndim != 2 or s.shape[1] < 2:
            raise PinlabDataError(f"scores must be (users, items) with 2+ items, got {s.shape}")
        if not 0 < base_rate < 1:
            raise PinlabDataError(f"base_rate must be in (0, 1), got {base_rate}")
        std = s.std(axis=1, keepdims=True)
        z = (s - s.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
        logit = np.log(base_rate / (1 - base_rate)) + spread * z
        return cls(1.0 / (1.0 + np.exp(-logit)))

    @property
    def num_users(self) -> int:
        return int(self.matrix.shape[0])

    @property
    def num_items(self) -> int:
        return int(self.matrix.shape[1])

    def attraction(self, users: Int64Array) -> Float64Array:
        return np.asarray(self.matrix[users], dtype=np.float64)


@dataclass(frozen=True)
class SynthPreference:
    """Attraction from the synthetic world's generating tastes.

    s(u, i) = (C taste[u, cat i]) (P palette_taste[u, palette i])^1.5 appeal_i, with C
    categories and P palettes (so a uniform taste gives 1), the same factors the world's users
    chose pins by; attraction = s / (s + half_saturation).
    """

    taste: Float64Array  # (users, categories)
    palette_taste: Float64Array  # (users, palettes)
    category: Int64Array  # (items,)
    palette: Int64Array  # (items,)
    appeal: Float64Array  # (items,)
    half_saturation: float = 30.0

    @property
    def num_users(self) -> int:
        return int(self.taste.shape[0])

    @property
    def num_items(self) -> int:
        return len(self.category)

    def attraction(self, users: Int64Array) -> Float64Array:
        cats, pals = self.taste.shape[1], self.palette_taste.shape[1]
        s = (
            (cats * self.taste[users][:, self.category])
            * (pals * self.palette_taste[users][:, self.palette]) ** 1.5
            * self.appeal
        )
        return np.asarray(s / (s + self.half_saturation), dtype=np.float64)


def synth_preferences(
    truth: SynthTruth,
    users: Int64Array,
    pins: Int64Array,
    half_saturation: float = 30.0,
) -> tuple[SynthPreference, SynthPreference]:
    """The starting and the drifted (`taste_end`) preference of a synthetic world's users
    `users` over its pins `pins` (rows of the truth, in the simulator's own index order)."""
    users, pins = np.asarray(users, dtype=np.int64), np.asarray(pins, dtype=np.int64)
    for name, idx, size in (("user", users, len(truth.taste_start)),
                            ("pin", pins, len(truth.pin_category))):  # fmt: skip
        if len(idx) == 0 or idx.min() < 0 or idx.max() >= size:
            raise PinlabDataError(f"{name} rows must be within the world's 0..{size - 1}")
    palette_taste = truth.palette_taste[users].astype(np.float64)
    category = truth.pin_category[pins].astype(np.int64)
    palette = truth.pin_palette[pins].astype(np.int64)
    appeal = truth.pin_appeal[pins].astype(np.float64)
    start, end = (
        SynthPreference(
            taste[users].astype(np.float64), palette_taste, category, palette, appeal,
            half_saturation,
        )
        for taste in (truth.taste_start, truth.taste_end)
    )  # fmt: skip
    return start, end


class Simulator:
    """Serves batches of users, draws their clicks on the slates it is given, keeps their state.

    `drift_to` is where tastes drift (the same users and items as `preference`); without it,
    each user drifts towards another user's preference (a seeded permutation).
    """

    def __init__(
        self,
        preference: TruePreference,
        config: SimConfig,
        drift_to: TruePreference | None = None,
    ) -> None:
        self.preference = preference
        self.config = config
        users, items = preference.num_users, preference.num_items
        if items < config.slate_size:
            raise PinlabDataError(
                f"the catalogue has {items} items, fewer than a slate of {config.slate_size}; "
                "use a smaller slate size or more items"
            )
        if drift_to is not None and (drift_to.num_users, drift_to.num_items) != (users, items):
            raise PinlabDataError(
                f"drift_to covers {drift_to.num_users} users x {drift_to.num_items} items, "
                f"the preference {users} x {items}; give both over the same users and items"
            )
        if config.fatigue > 0 and users * items > MAX_STATE_CELLS:
            raise PinlabDataError(
                f"fatigue keeps {users:,} users x {items:,} items of state, over "
                f"{MAX_STATE_CELLS:,}; simulate fewer users or items, or set fatigue to 0"
            )
        self._rng = np.random.default_rng(config.seed)
        self._drift_to = drift_to
        self._drift_users = self._rng.permutation(users) if drift_to is None else None
        self.progress = np.zeros(users)
        """Each user's share of the way to their end preference."""
        self.exposure = np.zeros((users, items), dtype=np.float32) if config.fatigue > 0 else None
        """Each user's decayed count of showings per item (None without fatigue)."""
        self.rounds = 0
        """Rounds served so far (one user shown one slate is one round)."""

    @property
    def num_users(self) -> int:
        return self.preference.num_users

    @property
    def num_items(self) -> int:
        return self.preference.num_items

    def examination(self) -> Float64Array:
        """pbm's examination probability per position."""
        k = self.config.slate_size
        return np.asarray((np.arange(k) + 1.0) ** -self.config.position_bias, dtype=np.float64)

    def draw_users(self, n: int | None = None) -> Int64Array:
        """Up to `n` (default `users_per_step`) distinct users, uniformly at random."""
        n = min(self.config.users_per_step if n is None else n, self.num_users)
        return np.asarray(self._rng.choice(self.num_users, n, replace=False), dtype=np.int64)

    def attraction(self, users: Int64Array) -> Float64Array:
        """(len(users), items): each user's attraction now, after drift and fatigue."""
        base = self.preference.attraction(users)
        if self.config.drift > 0:
            w = self.progress[users][:, None]
            if self._drift_to is not None:
                end = self._drift_to.attraction(users)
            else:
                assert self._drift_users is not None
                end = self.preference.attraction(self._drift_users[users])
            base = (1 - w) * base + w * end
        if self.exposure is not None:
            base = base * np.exp(-self.config.fatigue * self.exposure[users])
        return np.asarray(base, dtype=np.float64)

    def expected_clicks(self, shown: Float64Array) -> Float64Array:
        """(B,) expected clicks of slates whose items attract with `shown` (B, k), top first."""
        if self.config.click_model == "pbm":
            return np.asarray(shown @ self.examination()[: shown.shape[1]], dtype=np.float64)
        return np.asarray(1.0 - np.prod(1.0 - shown, axis=1), dtype=np.float64)

    def best_expected(self, attraction: Float64Array) -> Float64Array:
        """(B,) expected clicks of each user's best slate, given their attraction (B, items)."""
        k = self.config.slate_size
        top = -np.sort(np.partition(-attraction, k - 1, axis=1)[:, :k], axis=1)
        return self.expected_clicks(top)  # the k most attractive, best first

    def step(self, users: Int64Array, slates: Int64Array) -> SlateOutcome:
        """Show each user their slate (top first); draw clicks; then update drift and fatigue."""
        users = np.asarray(users, dtype=np.int64)
        slates = np.asarray(slates, dtype=np.int64)
        self._check(users, slates)
        now = self.attraction(users)
        rows = np.arange(len(users))[:, None]
        shown = now[rows, slates]
        draws = self._rng.random(shown.shape)
        if self.config.click_model == "pbm":
            clicks = (draws < shown * self.examination()).astype(np.float64)
        else:
            hit = draws < shown
            first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
            clicks = (np.arange(slates.shape[1])[None, :] == first[:, None]).astype(np.float64)
        outcome = SlateOutcome(
            users=users,
            slates=slates,
            clicks=clicks,
            attraction=shown,
            expected=self.expected_clicks(shown),
            best=self.best_expected(now),
        )
        if self.config.drift > 0:
            self.progress[users] += self.config.drift * (1 - self.progress[users])
        if self.exposure is not None:
            self.exposure[users] *= self.config.recovery
            self.exposure[rows, slates] += 1.0
        self.rounds += len(users)
        return outcome

    def on_policy_value(self, marginals: Float64Array) -> float:
        """A stationary policy's exact expected clicks per impression over all users, from its
        marginals (users, items, k): the probability it puts each item at each position.

        Exact only where rewards add up over positions and nothing changes with time: the pbm
        click model without drift or fatigue. (1/k) mean_u sum_p theta_p sum_a pi(a, p | u)
        attraction(u, a); times k, the expected clicks per slate.
        """
        if self.config.click_model != "pbm" or not self.config.is_stationary:
            raise PinlabDataError(
                "an exact on-policy value needs the pbm click model without drift or fatigue "
                "(SimConfig.stationary()); measure other settings by running the policy"
            )
        m = np.asarray(marginals, dtype=np.float64)
        k = self.config.slate_size
        if m.shape != (self.num_users, self.num_items, k):
            raise PinlabDataError(
                f"marginals must be (users, items, k) = {(self.num_users, self.num_items, k)}, "
                f"got {m.shape}"
            )
        total = 0.0
        for start in range(0, self.num_users, 1024):
            users = np.arange(start, min(start + 1024, self.num_users))
            a = self.preference.attraction(users)
            total += float(np.einsum("ui,uip,p->", a, m[users], self.examination()))
        return total / (self.num_users * k)

    def _check(self, users: Int64Array, slates: Int64Array) -> None:
        k = self.config.slate_size
        if users.ndim != 1 or slates.shape != (len(users), k):
            raise PinlabDataError(
                f"slates must be (users, {k}) for {len(users)} users, got {slates.shape}"
            )
        if len(users) and (users.min() < 0 or users.max() >= self.num_users):
            raise PinlabDataError(f"users must be within 0..{self.num_users - 1}")
        if len(np.unique(users)) != len(users):
            raise PinlabDataError("a step serves each user at most once; draw distinct users")
        bad = (slates < 0) | (slates >= self.num_items)
        if bad.any():
            row = int(np.flatnonzero(bad.any(axis=1))[0])
            raise PinlabDataError(
                f"slate row {row} shows items outside the catalogue 0..{self.num_items - 1}: "
                f"{slates[row].tolist()}"
            )
        ordered = np.sort(slates, axis=1)
        repeats = (np.diff(ordered, axis=1) == 0).any(axis=1)
        if repeats.any():
            row = int(np.flatnonzero(repeats)[0])
            raise PinlabDataError(
                f"slate row {row} shows an item twice: {slates[row].tolist()}; slates hold "
                "distinct items"
            )
