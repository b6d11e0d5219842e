"""Recommenders: a popularity baseline and matrix factorisation (BPR or softmax)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._runtime import (
    Stopwatch,
    check_users,
    one_pass_report,
    require_fitted,
    run_epochs,
    save_recommender,
    seed_everything,
)
from pinlab_models.contracts import (
    FitReport,
    MFConfig,
    PinlabModelError,
    PopularityConfig,
    TrainContext,
    Validator,
)


class Popularity:
    """Ranks every item by how many distinct users engaged with it in training."""

    name = "popularity"

    def __init__(self, config: PopularityConfig | None = None) -> None:
        self.config = config or PopularityConfig()
        self.counts: Float32Array | None = None
        self.num_users = 0

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        clock = Stopwatch()
        pairs = np.unique(np.stack([train.users, train.items]), axis=1)
        self.counts = np.bincount(pairs[1], minlength=train.num_items).astype(np.float32)
        self.num_users = train.num_users
        return one_pass_report(self, ctx, validate, clock)

    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.counts is not None, self.name)
        assert self.counts is not None
        check_users(users, self.num_users)
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()

    def save(self, path: Path) -> None:
        require_fitted(self.counts is not None, self.name)
        state = {"counts": torch.from_numpy(np.asarray(self.counts))}
        save_recommender(
            path, self.name, self.config.model_dump(), state, self.num_users, len(state["counts"])
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> Popularity:
        model = cls(PopularityConfig.model_validate(payload["config"]))
        model.counts = payload["state"]["counts"].numpy()
        model.num_users = int(payload["num_users"])
        return model


class _Factors(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int, init_std: float = 0.1) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.bias = nn.Parameter(torch.zeros(num_items))
        nn.init.normal_(self.users.weight, std=init_std)
        nn.init.normal_(self.items.weight, std=init_std)

    def scores(self, users: torch.Tensor, items: torch.Tensor | None = None) -> torch.Tensor:
        """(len(users), len(items)) scores; all items when `items` is None."""
        item_vecs = self.items.weight if items is None else self.items.weight[items]
        item_bias = self.bias if items is None else self.bias[items]
        result: torch.Tensor = self.users.weight[users] @ item_vecs.T + item_bias
        return result

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Score of users[i] for items[i], without the full (users x items) product."""
        product = self.users.weight[users] * self.items.weight[items]
        result: torch.Tensor = product.sum(dim=1) + self.bias[items]
        return result

    def squared_norms(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Per row i: |user|^2 + |item|^2 + bias^2, what per-sample L2 penalises."""
        user_part = self.users.weight[users].square().sum(dim=1)
        item_part = self.items.weight[items].square().sum(dim=1) + self.bias[items].square()
        result: torch.Tensor = user_part + item_part
        return result


def _pair_keys(users: torch.Tensor, items: torch.Tensor, num_items: int) -> torch.Tensor:
    return users * num_items + items


def _is_positive(
    known: torch.Tensor, users: torch.Tensor, items: torch.Tensor, num_items: int
) -> torch.Tensor:
    """Whether each (user, item) is among `known`, the sorted keys of the training pairs."""
    keys = _pair_keys(users, items, num_items)
    where = torch.searchsorted(known, keys).clamp(max=len(known) - 1)
    return known[where] == keys


class MatrixFactorization:
    """User and item factors (and an item bias) whose dot product ranks items.

    `bpr` is LearnBPR (Rendle et al., 2009): SGD on the pairwise loss of each positive against
    one item drawn uniformly among those the user has not interacted with (a draw that hits a
    positive is skipped, as Cornac does), with per-sample L2. A batch applies its samples'
    steps together, each of size `lr`. `softmax` scores the positive against the full
    catalogue (or `negatives` uniform samples when the catalogue is larger), trained by Adam.
    """

    def __init__(self, config: MFConfig | None = None, name: str = "mf") -> None:
        self.name = name
        self.config = config or MFConfig()
        self.net: _Factors | None = None
        self.device = "cpu"

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        gen = seed_everything(ctx.seed)
        self.device = ctx.device
        self.net = net = _Factors(train.num_users, train.num_items, cfg.dim, cfg.init_std)
        net.to(ctx.device)
        users = torch.from_numpy(train.users).to(ctx.device)
        items = torch.from_numpy(train.items).to(ctx.device)
        weights = torch.from_numpy(train.weights).to(ctx.device)
        weights = weights / weights.mean()
        known = torch.unique(_pair_keys(users, items, train.num_items))
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
        steps = max(1, -(-len(train) // cfg.batch_size))

        def step(batch: torch.Tensor) -> float:
            if cfg.loss == "bpr":
                negatives = torch.randint(0, train.num_items, (len(batch),), generator=gen)
                negatives = negatives.to(ctx.device)
                fresh = ~_is_positive(known, users[batch], negatives, train.num_items)
                return _learn_bpr_step(
                    net, users[batch], items[batch], negatives, weights[batch] * fresh, cfg
                )
            losses = self._softmax_losses(users[batch], items[batch], train.num_items, gen)
            loss = (losses * weights[batch]).mean()
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            return float(loss.detach()) * len(batch)

        def train_epoch() -> float:
            net.train()
            order = torch.randperm(len(train), generator=gen).to(ctx.device)
            total = sum(
                step(order[i * cfg.batch_size : (i + 1) * cfg.batch_size]) for i in range(steps)
            )
            return total / len(train)

        return run_epochs(
            self, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
            validate=validate,
        )  # fmt: skip

    def _softmax_losses(
        self, users: torch.Tensor, items: torch.Tensor, num_items: int, gen: torch.Generator
    ) -> torch.Tensor:
        """Cross-entropy of each positive among the catalogue or sampled items, plus its L2."""
        assert self.net is not None
        cfg, net = self.config, self.net
        norms = net.squared_norms(users, items)
        if cfg.negatives >= num_items:
            logits = net.scores(users) / cfg.temperature
            return F.cross_entropy(logits, items, reduction="none") + cfg.l2 / 2 * norms
        # Uniform negatives need no logQ correction: every item has the same sampling odds.
        sampled = torch.randint(0, num_items, (cfg.negatives,), generator=gen).to(users.device)
        logits = net.scores(users, torch.cat([items, sampled])) / cfg.temperature
        target = torch.arange(len(users), device=users.device)
        return F.cross_entropy(logits, target, reduction="none") + cfg.l2 / 2 * norms

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_users(users, self.net.users.num_embeddings)
        self.net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return self.net.scores(u).float().cpu().numpy()

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        save_recommender(
            path,
            self.name,
            self.config.model_dump(),
            state,
            self.net.users.num_embeddings,
            self.net.items.num_embeddings,
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> MatrixFactorization:
        model = cls(MFConfig.model_validate(payload["config"]), name=str(payload["name"]))
        net = _Factors(int(payload["num_users"]), int(payload["num_items"]), model.config.dim)
        net.load_state_dict(payload["state"])
        model.net = net
        return model


def _learn_bpr_step(
    net: _Factors,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    weights: torch.Tensor,
    cfg: MFConfig,
) -> float:
    """One SGD step per (user, positive, negative) on -log sigmoid(x_ui - x_uj) + L2 / 2.

    The gradient is written out (it is three lines) rather than left to autograd, which on
    CPU spends most of its time building dense gradients of whole embedding tables.
    Returns the summed BPR loss of the batch before the step (weighted, without the L2).
    """
    with torch.no_grad():
        u, vi, vj = (
            net.users.weight[users],
            net.items.weight[positives],
            net.items.weight[negatives],
        )
        bi, bj = net.bias[positives], net.bias[negatives]
        margin = (u * (vi - vj)).sum(dim=1) + bi - bj
        # d/dx of -log sigmoid(x) is -sigmoid(-x); `pull` is the step along +x, per sample.
        pull = torch.sigmoid(-margin) * weights
        lr, shrink = cfg.lr, cfg.l2 * weights
        net.users.weight.index_add_(
            0, users, lr * (pull[:, None] * (vi - vj) - shrink[:, None] * u)
        )
        net.items.weight.index_add_(0, positives, lr * (pull[:, None] * u - shrink[:, None] * vi))
        net.items.weight.index_add_(0, negatives, lr * (-pull[:, None] * u - shrink[:, None] * vj))
        net.bias.index_add_(0, positives, lr * (pull - shrink * bi))
        net.bias.index_add_(0, negatives, lr * (-pull - shrink * bj))
        return float((-F.logsigmoid(margin) * weights).sum())
