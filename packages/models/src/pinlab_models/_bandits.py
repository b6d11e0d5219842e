"""Slate policies that act in the simulator and say with what probability they acted.

Every policy sees a context per user (B, d) and returns (B, k) slates, top first. The fixed
policies read a fitted recommender through its factors: its score of item a for a user is
context . items[a] (contexts and items are the recommender's user and item vectors), so they
are functions of the context alone and their marginals are exact:

- `random`: a uniformly random slate (every item 1/items at every position).
- `greedy`: the fitted recommender's top k (probability 1).
- `softmax`: Plackett-Luce over the scores standardised per user, / temperature (a slate is
  drawn position by position without replacement; Gumbel top-k).
- `epsilon-greedy`: the greedy slate with probability 1 - epsilon, a uniformly random slate
  otherwise.

The learners keep a disjoint ridge regression per item on [context, 1] (Li et al. 2010),
updated after every batch from the positions they count as seen (`feedback`):
`online-greedy` (the ridge's mean), `online-epsilon-greedy`, `linucb` (mean + alpha times the
bound's width) and `thompson` (linear Thompson sampling, Agrawal & Goyal 2013: one posterior
draw per user and item). Ties break at random. `neural-linear` (Riquelme et al. 2018) learns a
representation of (context, item embedding) with an MLP and samples a Bayesian linear
regression on it. `reinforce` lives in `_reinforce.py`.

Plackett-Luce marginals are exact for slates of up to 3 (closed forms, O(items^2) per user);
a softmax policy refuses larger slates rather than guess its propensities.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel
from torch import nn

from pinlab_data.contracts import Float64Array, Int64Array
from pinlab_models.contracts import (
    EpsilonGreedyConfig,
    Feedback,
    LinearBanditConfig,
    NeuralLinearConfig,
    PinlabModelError,
    SlateChoice,
    SlatePolicy,
    SoftmaxConfig,
)

MAX_EXACT_SLATE = 3
"""Plackett-Luce position marginals are computed exactly up to this slate size."""
_TIE_JITTER = 1e-9
_ROWS_PER_CHUNK = 256


# --- slate arithmetic ---------------------------------------------------------------------------


def top_slates(scores: Float64Array, k: int) -> Int64Array:
    """Each row's k best items, best first; ties go to the lower item index."""
    return np.asarray(np.argsort(-scores, axis=1, kind="stable")[:, :k], dtype=np.int64)


def uniform_slates(batch: int, num_items: int, k: int, rng: np.random.Generator) -> Int64Array:
    """Uniformly random slates of k distinct items (the first k of a random permutation)."""
    return top_slates(rng.random((batch, num_items)), k)


def uniform_slate_probability(num_items: int, k: int) -> float:
    """The probability of one given slate under `uniform_slates`: (items - k)! / items!."""
    return float(np.prod(1.0 / (num_items - np.arange(k))))


def softmax(logits: Float64Array) -> Float64Array:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def plackett_luce_sample(probs: Float64Array, k: int, rng: np.random.Generator) -> Int64Array:
    """Slates drawn from Plackett-Luce: k items without replacement in proportion to `probs`
    (the Gumbel top-k trick: the k largest log p + Gumbel noise, in order)."""
    with np.errstate(divide="ignore"):
        keys = np.log(probs) + rng.gumbel(size=probs.shape)
    return top_slates(keys, k)


def plackett_luce_slate_probability(probs: Float64Array, slates: Int64Array) -> Float64Array:
    """(B,) the probability of each slate: prod_p p(s_p) / (1 - sum_{q < p} p(s_q))."""
    chosen = np.take_along_axis(probs, slates, axis=1)
    before = np.cumsum(chosen, axis=1) - chosen
    return np.asarray(np.prod(chosen / np.clip(1.0 - before, 1e-300, None), axis=1))


def plackett_luce_marginals(probs: Float64Array, k: int) -> Float64Array:
    """(B, items, k): the exact probability that Plackett-Luce puts each item at each position.

    With p the item probabilities: position 0 is p_a; position 1 is
    p_a sum_{b != a} p_b / (1 - p_b); position 2 is p_a sum over ordered pairs (b, c) of
    distinct items other than a of p_b p_c / ((1 - p_b)(1 - p_b - p_c)), the sum over all
    pairs minus those holding a.
    """
    if k > MAX_EXACT_SLATE:
        raise PinlabModelError(
            f"exact Plackett-Luce position marginals are computed for slates of up to "
            f"{MAX_EXACT_SLATE}, not {k}; use a smaller slate size or the epsilon-greedy policy"
        )
    p = np.asarray(probs, dtype=np.float64)
    if len(p) > _ROWS_PER_CHUNK:  # position 2 holds (rows, items, items) temporaries
        return np.concatenate(
            [
                plackett_luce_marginals(p[start : start + _ROWS_PER_CHUNK], k)
                for start in range(0, len(p), _ROWS_PER_CHUNK)
            ]
        )
    out = np.empty((*p.shape, k))
    out[:, :, 0] = p
    if k > 1:
        odds = p / np.clip(1.0 - p, 1e-300, None)
        out[:, :, 1] = p * (odds.sum(axis=1, keepdims=True) - odds)
    if k > 2:
        rest = np.clip(1.0 - p[:, :, None] - p[:, None, :], 1e-300, None)
        pair = odds[:, :, None] * p[:, None, :] / rest  # (B, b, c): b first, then c
        idx = np.arange(p.shape[1])
        pair[:, idx, idx] = 0.0
        holding = pair.sum(axis=2) + pair.sum(axis=1)
        out[:, :, 2] = p * (pair.sum(axis=(1, 2))[:, None] - holding)
    return out


def one_hot_marginals(slates: Int64Array, num_items: int) -> Float64Array:
    """(B, items, k): 1 where the slate puts the item."""
    b, k = slates.shape
    out = np.zeros((b, num_items, k))
    out[np.arange(b)[:, None], slates, np.arange(k)[None, :]] = 1.0
    return out


def seen_positions(clicks: Float64Array, feedback: Feedback) -> np.ndarray:
    """(B, k) bool: the positions a learner learns from (see `Feedback`)."""
    if feedback == "all":
        return np.ones(clicks.shape, dtype=bool)
    clicked = clicks > 0
    first = np.where(clicked.any(axis=1), clicked.argmax(axis=1), clicks.shape[1] - 1)
    return np.asarray(np.arange(clicks.shape[1])[None, :] <= first[:, None])


def _standardised(scores: Float64Array) -> Float64Array:
    std = scores.std(axis=1, keepdims=True)
    centred = scores - scores.mean(axis=1, keepdims=True)
    return np.asarray(centred / np.where(std > 0, std, 1.0))


def _check_context(context: Float64Array, dim: int, name: str) -> Float64Array:
    x = np.asarray(context, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != dim:
        raise PinlabModelError(f"{name} takes contexts of shape (users, {dim}), got {x.shape}")
    return x


# --- fixed policies over a fitted recommender ----------------------------------------------------


@dataclass
class RandomPolicy:
    """A uniformly random slate for everyone."""

    num_items: int
    slate_size: int
    name: str = "random"

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        b = len(context)
        slates = uniform_slates(b, self.num_items, self.slate_size, rng)
        return SlateChoice(
            slates=slates,
            pscore=np.full((b, self.slate_size), 1.0 / self.num_items),
            pscore_slate=np.full(b, uniform_slate_probability(self.num_items, self.slate_size)),
        )

    def marginals(self, context: Float64Array) -> Float64Array:
        return np.full((len(context), self.num_items, self.slate_size), 1.0 / self.num_items)

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None:
        return None


@dataclass
class FittedPolicy:
    """A fitted recommender's scores (context . items) turned into slates: `greedy` (top k),
    `softmax` (Plackett-Luce at a temperature) or `epsilon-greedy` (see the module doc)."""

    items: Float64Array
    slate_size: int
    kind: Literal["greedy", "softmax", "epsilon-greedy"]
    temperature: float = 1.0
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        self.items = np.asarray(self.items, dtype=np.float64)
        if self.kind == "softmax" and self.slate_size > MAX_EXACT_SLATE:
            plackett_luce_marginals(np.ones((1, 1)), self.slate_size)  # raises with the reason

    @property
    def name(self) -> str:
        return self.kind

    @property
    def num_items(self) -> int:
        return len(self.items)

    def scores(self, context: Float64Array) -> Float64Array:
        x = _check_context(context, self.items.shape[1], self.name)
        return np.asarray(x @ self.items.T)

    def probabilities(self, context: Float64Array) -> Float64Array:
        """softmax: the per-draw item probabilities."""
        return softmax(_standardised(self.scores(context)) / self.temperature)

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        k = self.slate_size
        if self.kind == "softmax":
            probs = self.probabilities(context)
            return plackett_luce_choice(probs, k, rng, propensities)
        greedy = top_slates(self.scores(context), k)
        if self.kind == "greedy":
            ones = np.ones(len(greedy))
            return SlateChoice(slates=greedy, pscore=np.ones(greedy.shape), pscore_slate=ones)
        return _epsilon_mix(greedy, self.num_items, self.epsilon, rng)

    def marginals(self, context: Float64Array) -> Float64Array:
        if self.kind == "softmax":
            return plackett_luce_marginals(self.probabilities(context), self.slate_size)
        greedy = one_hot_marginals(
            top_slates(self.scores(context), self.slate_size), self.num_items
        )
        if self.kind == "greedy":
            return greedy
        return np.asarray((1 - self.epsilon) * greedy + self.epsilon / self.num_items)

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None:
        return None


def plackett_luce_choice(
    probs: Float64Array, k: int, rng: np.random.Generator, propensities: bool = True
) -> SlateChoice:
    """A Plackett-Luce slate per row with, when asked, its exact marginal pscores."""
    slates = plackett_luce_sample(probs, k, rng)
    if not propensities:  # the marginals cost O(items^2) per user
        return SlateChoice(slates=slates, pscore=None)
    return SlateChoice(
        slates=slates,
        pscore=_gather(plackett_luce_marginals(probs, k), slates),
        pscore_slate=plackett_luce_slate_probability(probs, slates),
    )


def _gather(marginals: Float64Array, slates: Int64Array) -> Float64Array:
    b, k = slates.shape
    return np.asarray(marginals[np.arange(b)[:, None], slates, np.arange(k)[None, :]])


def _epsilon_mix(
    greedy: Int64Array, num_items: int, epsilon: float, rng: np.random.Generator
) -> SlateChoice:
    """The greedy slate with probability 1 - epsilon, a uniform one otherwise, with the exact
    marginal of each shown item ((1 - eps) [greedy there] + eps / items) and slate probability."""
    b, k = greedy.shape
    explore = np.asarray(rng.random(b) < epsilon)
    slates = greedy.copy()
    slates[explore] = uniform_slates(int(explore.sum()), num_items, k, rng)
    same = slates == greedy
    pscore = (1 - epsilon) * same + epsilon / num_items
    whole = same.all(axis=1)
    pscore_slate = (1 - epsilon) * whole + epsilon * uniform_slate_probability(num_items, k)
    return SlateChoice(slates=slates, pscore=pscore, pscore_slate=pscore_slate)


# --- learners ------------------------------------------------------------------------------------

Exploration = Literal["greedy", "epsilon", "ucb", "thompson"]


class LinearBandit:
    """Disjoint ridge regression per item on [context, 1], explored per `exploration`."""

    def __init__(
        self,
        name: str,
        num_items: int,
        context_dim: int,
        slate_size: int,
        config: LinearBanditConfig,
        exploration: Exploration,
    ) -> None:
        self.name, self.num_items, self.slate_size = name, num_items, slate_size
        self.context_dim = context_dim
        self.config, self.exploration = config, exploration
        d = context_dim + 1
        self.a = np.repeat(np.eye(d)[None] * config.l2, num_items, axis=0)
        self.b = np.zeros((num_items, d))
        self.a_inv = np.repeat(np.eye(d)[None] / config.l2, num_items, axis=0)
        self.theta = np.zeros((num_items, d))
        self.chol = np.linalg.cholesky(self.a_inv) if exploration == "thompson" else None

    def _features(self, context: Float64Array) -> Float64Array:
        x = _check_context(context, self.context_dim, self.name)
        return np.hstack([x, np.ones((len(x), 1))])

    def _scores(self, x: Float64Array, rng: np.random.Generator) -> Float64Array:
        mean = x @ self.theta.T
        if self.exploration == "ucb":
            width = np.sqrt(np.einsum("bd,ide,be->bi", x, self.a_inv, x, optimize=True))
            return np.asarray(mean + self.config.alpha * width)
        if self.exploration == "thompson":
            return self._draw(x, rng)
        return np.asarray(mean)

    def _draw(self, x: Float64Array, rng: np.random.Generator) -> Float64Array:
        """One posterior draw per user and item: x . (theta + noise L z)."""
        assert self.chol is not None
        z = rng.standard_normal((len(x), self.num_items, x.shape[1]))
        xl = np.einsum("bd,ide->bie", x, self.chol, optimize=True)  # x^T L per item
        return np.asarray(x @ self.theta.T + self.config.noise * np.einsum("bie,bie->bi", xl, z))

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        x = self._features(context)
        k = self.slate_size
        jitter = _TIE_JITTER * rng.random((len(x), self.num_items))
        slates = top_slates(self._scores(x, rng) + jitter, k)
        if self.exploration == "epsilon":
            return _epsilon_mix(slates, self.num_items, self.config.epsilon, rng)
        if self.exploration == "thompson":
            pscore = self._sampled_pscore(x, slates, rng) if propensities else None
            return SlateChoice(slates=slates, pscore=pscore)
        # Deterministic but for exact ties, which the jitter breaks with probability ~0.
        return SlateChoice(slates=slates, pscore=np.ones(slates.shape), pscore_slate=None)

    def _sampled_pscore(
        self, x: Float64Array, slates: Int64Array, rng: np.random.Generator
    ) -> Float64Array | None:
        """Thompson sampling's propensities have no closed form: the share of
        `propensity_samples` further posterior draws (plus the one acted on) that put each
        shown item at its position (as obp estimates them)."""
        n = self.config.propensity_samples
        if n == 0:
            return None
        hits = np.ones(slates.shape)
        for _ in range(n):
            hits += top_slates(self._draw(x, rng), self.slate_size) == slates
        return np.asarray(hits / (n + 1))

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None:
        x = self._features(context)
        seen = seen_positions(clicks, self.config.feedback)
        rows, _ = np.nonzero(seen)
        items, rewards, feats = slates[seen], clicks[seen], x[rows]
        np.add.at(self.a, items, feats[:, :, None] * feats[:, None, :])
        np.add.at(self.b, items, rewards[:, None] * feats)
        touched = np.unique(items)
        self.a_inv[touched] = np.linalg.inv(self.a[touched])
        self.theta[touched] = np.einsum("ide,ie->id", self.a_inv[touched], self.b[touched])
        if self.chol is not None:
            self.chol[touched] = np.linalg.cholesky(self.a_inv[touched])


class _PairNet(nn.Module):
    """(context, item embedding) -> a hidden representation -> a click logit."""

    def __init__(self, context_dim: int, item_dim: int, hidden: int) -> None:
        super().__init__()
        self.user = nn.Linear(context_dim, hidden)
        self.item = nn.Linear(item_dim, hidden)
        self.body = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.ReLU())
        self.head = nn.Linear(hidden, 1)

    def represent(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u, v = self.user(x), self.item(y)
        out: torch.Tensor = self.body(torch.cat([u, v, u * v], dim=-1))
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.head(self.represent(x, y)).squeeze(-1)
        return out


class NeuralLinear:
    """Neural-linear Thompson sampling over (context, item embedding) pairs (see the config)."""

    name = "neural-linear"

    def __init__(
        self,
        items: Float64Array,
        context_dim: int,
        slate_size: int,
        config: NeuralLinearConfig,
        seed: int,
    ) -> None:
        self.items_t = torch.tensor(np.asarray(items), dtype=torch.float32)
        self.num_items, self.slate_size, self.context_dim = len(items), slate_size, context_dim
        self.config = config
        self._gen = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):  # seeded weights, the global stream untouched
            torch.manual_seed(seed)
            self.net = _PairNet(context_dim, self.items_t.shape[1], config.hidden)
        self._x: list[np.ndarray] = []
        self._items: list[np.ndarray] = []
        self._r: list[np.ndarray] = []
        self._rounds = 0
        self._gap = min(config.first_refit, config.retrain_every)
        self._next_refit = self._gap
        self._reset_posterior()

    def _reset_posterior(self) -> None:
        d = self.config.hidden + 1
        self.a = np.eye(d) * self.config.l2
        self.b = np.zeros(d)
        self._solve()

    def _solve(self) -> None:
        self.a_inv = np.linalg.inv(self.a)
        self.mean = self.a_inv @ self.b
        self.chol = np.linalg.cholesky(self.a_inv)

    @torch.no_grad()
    def _phi(self, x: np.ndarray, items: np.ndarray) -> Float64Array:
        """(n, hidden + 1) the representation of each (context, item) pair, with a 1."""
        rep = self.net.represent(
            torch.as_tensor(x, dtype=torch.float32), self.items_t[torch.as_tensor(items)]
        ).double()
        return np.hstack([rep.numpy(), np.ones((len(items), 1))])

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        x = _check_context(context, self.context_dim, self.name)
        b, n = len(x), self.num_items
        phi = self._phi(np.repeat(x, n, axis=0), np.tile(np.arange(n), b)).reshape(b, n, -1)
        theta = self.mean + self.config.noise * rng.standard_normal((b, len(self.mean))) @ (
            self.chol.T
        )
        scores = np.einsum("bih,bh->bi", phi, theta) + _TIE_JITTER * rng.random((b, n))
        return SlateChoice(slates=top_slates(scores, self.slate_size), pscore=None)

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None:
        x = _check_context(context, self.context_dim, self.name)
        seen = seen_positions(clicks, self.config.feedback)
        rows, _ = np.nonzero(seen)
        self._x.append(x[rows].astype(np.float32))
        self._items.append(slates[seen])
        self._r.append(clicks[seen])
        phi = self._phi(x[rows], slates[seen])
        self.a += phi.T @ phi
        self.b += phi.T @ clicks[seen]
        self._rounds += len(x)
        if self._rounds >= self._next_refit:
            self._refit()
            self._gap = min(2 * self._gap, self.config.retrain_every)
            self._next_refit = self._rounds + self._gap
        else:
            self._solve()

    def _refit(self) -> None:
        """Train the network on everything seen, then recompute the regression on its new
        representation (the posterior is over the new features, so it starts again)."""
        x = torch.as_tensor(np.concatenate(self._x))
        items = torch.as_tensor(np.concatenate(self._items))
        r = torch.as_tensor(np.concatenate(self._r), dtype=torch.float32)
        self.net.train()
        optimiser = torch.optim.Adam(self.net.parameters(), lr=self.config.lr)
        loss_fn = nn.BCEWithLogitsLoss()
        for _ in range(self.config.epochs):
            order = torch.randperm(len(r), generator=self._gen)
            for start in range(0, len(r), self.config.batch_size):
                batch = order[start : start + self.config.batch_size]
                optimiser.zero_grad()
                loss = loss_fn(self.net(x[batch], self.items_t[items[batch]]), r[batch])
                torch.autograd.backward(loss)
                optimiser.step()
        self.net.eval()
        d = self.config.hidden + 1
        self.a, self.b = np.eye(d) * self.config.l2, np.zeros(d)
        for start in range(0, len(r), 65_536):
            end = start + 65_536
            phi = self._phi(x[start:end].numpy(), items[start:end].numpy())
            self.a += phi.T @ phi
            self.b += phi.T @ r[start:end].double().numpy()
        self._solve()


# --- the registry --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PolicyInputs:
    """What a policy may read: the fitted recommender's item vectors (whose dot product with a
    context is its score), the slate size, and a seed for anything it initialises."""

    items: Float64Array
    slate_size: int
    seed: int = 0

    @property
    def num_items(self) -> int:
        return len(self.items)

    @property
    def context_dim(self) -> int:
        return int(self.items.shape[1])


@dataclass(frozen=True)
class PolicySpec:
    name: str
    config: type[BaseModel] | None
    build: Callable[[PolicyInputs, Any], SlatePolicy]
    learns: bool
    """Learns online from the clicks of its own slates."""
    summary: str


def _linear(name: str, exploration: Exploration) -> Callable[[PolicyInputs, Any], SlatePolicy]:
    def build(inputs: PolicyInputs, config: LinearBanditConfig) -> SlatePolicy:
        return LinearBandit(
            name, inputs.num_items, inputs.context_dim, inputs.slate_size, config, exploration
        )

    return build


POLICIES: dict[str, PolicySpec] = {
    spec.name: spec
    for spec in (
        PolicySpec("random", None, lambda i, c: RandomPolicy(i.num_items, i.slate_size), False,
                   "a uniformly random slate"),
        PolicySpec("greedy", None, lambda i, c: FittedPolicy(i.items, i.slate_size, "greedy"),
                   False, "the fitted recommender's top k"),
        PolicySpec(
            "softmax", SoftmaxConfig,
            lambda i, c: FittedPolicy(i.items, i.slate_size, "softmax", temperature=c.temperature),
            False, "Plackett-Luce over the fitted scores at a temperature",
        ),
        PolicySpec(
            "epsilon-greedy", EpsilonGreedyConfig,
            lambda i, c: FittedPolicy(i.items, i.slate_size, "epsilon-greedy", epsilon=c.epsilon),
            False, "the fitted top k, or a uniform slate with probability epsilon",
        ),
        PolicySpec("online-greedy", LinearBanditConfig, _linear("online-greedy", "greedy"), True,
                   "per-item ridge on the context, no exploration"),
        PolicySpec("online-epsilon-greedy", LinearBanditConfig,
                   _linear("online-epsilon-greedy", "epsilon"), True,
                   "per-item ridge, a uniform slate with probability epsilon"),
        PolicySpec("linucb", LinearBanditConfig, _linear("linucb", "ucb"), True,
                   "per-item ridge, upper confidence bound (Li et al. 2010)"),
        PolicySpec("thompson", LinearBanditConfig, _linear("thompson", "thompson"), True,
                   "per-item ridge, linear Thompson sampling (Agrawal & Goyal 2013)"),
        PolicySpec(
            "neural-linear", NeuralLinearConfig,
            lambda i, c: NeuralLinear(i.items, i.context_dim, i.slate_size, c, i.seed), True,
            "MLP representation, Bayesian linear regression on top (Riquelme et al. 2018)",
        ),
    )
}  # fmt: skip
"""Policies built from a recommender's factors alone; `reinforce` is trained from logs
(`train_reinforce`)."""


def policy_names() -> list[str]:
    return [*POLICIES, "reinforce"]


def build_policy(
    name: str, inputs: PolicyInputs, settings: dict[str, Any] | None = None
) -> SlatePolicy:
    """A policy by name with its config built from `settings` (unknown fields refused)."""
    if name not in POLICIES:
        hint = " (train it from logs with train_reinforce)" if name == "reinforce" else ""
        raise PinlabModelError(f"unknown policy {name!r}{hint}; choose from {', '.join(POLICIES)}")
    spec = POLICIES[name]
    if spec.config is None:
        if settings:
            raise PinlabModelError(f"policy {name!r} takes no settings, got {sorted(settings)}")
        return spec.build(inputs, None)
    return spec.build(inputs, spec.config.model_validate(settings or {}))
