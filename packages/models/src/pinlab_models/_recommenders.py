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
    one_pass_report,
    run_epochs,
    save_checkpoint,
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

CHECKPOINT_KIND = "pinlab-recommender"


def _require_fitted(fitted: bool, name: str) -> None:
    if not fitted:
        raise PinlabModelError(f"{name} has not been fitted; call fit() or load a checkpoint")


def _check_users(users: Int64Array, num_users: int) -> None:
    if len(users) and (users.min() < 0 or users.max() >= num_users):
        raise PinlabModelError(f"user index out of range 0..{num_users - 1}")


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
        _require_fitted(self.counts is not None, self.name)
        assert self.counts is not None
        _check_users(users, self.num_users)
        return np.broadcast_to(self.counts, (len(users), len(self.counts))).copy()

    def save(self, path: Path) -> None:
        _require_fitted(self.counts is not None, self.name)
        state = {"counts": torch.from_numpy(np.asarray(self.counts))}
        _save(
            path, self.name, self.config.model_dump(), state, self.num_users, len(state["counts"])
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> Popularity:
        model = cls(PopularityConfig.model_validate(payload["config"]))
        model.counts = payload["state"]["counts"].numpy()
        model.num_users = int(payload["num_users"])
        return model


class _Factors(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Embedding(num_users, dim)
        self.items = nn.Embedding(num_items, dim)
        self.bias = nn.Parameter(torch.zeros(num_items))
        nn.init.normal_(self.users.weight, std=0.1)
        nn.init.normal_(self.items.weight, std=0.1)

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


class MatrixFactorization:
    """User and item embeddings whose dot product ranks items.

    `softmax` scores the positive against the full catalogue (or `negatives` uniform samples
    when the catalogue is larger), which optimises ranking directly; `bpr` is the pairwise
    loss of Rendle et al. (2009) with one uniform negative per positive.
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
        self.net = net = _Factors(train.num_users, train.num_items, cfg.dim).to(ctx.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        users = torch.from_numpy(train.users).to(ctx.device)
        items = torch.from_numpy(train.items).to(ctx.device)
        weights = torch.from_numpy(train.weights).to(ctx.device)
        weights = weights / weights.mean()
        steps = max(1, len(train) // cfg.batch_size)

        def train_epoch() -> float:
            net.train()
            order = torch.randperm(len(train), generator=gen).to(ctx.device)
            total = 0.0
            for step in range(steps):
                idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                loss = self._loss(users[idx], items[idx], weights[idx], train.num_items, gen)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                total += float(loss.detach())
            return total / steps

        return run_epochs(
            self, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
            validate=validate,
        )  # fmt: skip

    def _loss(
        self,
        users: torch.Tensor,
        items: torch.Tensor,
        weights: torch.Tensor,
        num_items: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        assert self.net is not None
        cfg = self.config
        if cfg.loss == "bpr":
            negatives = torch.randint(0, num_items, (len(users),), generator=gen).to(users.device)
            pos = self.net.pair_scores(users, items)
            neg = self.net.pair_scores(users, negatives)
            return -(F.logsigmoid(pos - neg) * weights).mean()
        if cfg.negatives >= num_items:
            logits = self.net.scores(users) / cfg.temperature
            return (F.cross_entropy(logits, items, reduction="none") * weights).mean()
        # Uniform negatives need no logQ correction: every item has the same sampling odds.
        sampled = torch.randint(0, num_items, (cfg.negatives,), generator=gen).to(users.device)
        candidates = torch.cat([items, sampled])
        logits = self.net.scores(users, candidates) / cfg.temperature
        target = torch.arange(len(users), device=users.device)
        return (F.cross_entropy(logits, target, reduction="none") * weights).mean()

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        _require_fitted(self.net is not None, self.name)
        assert self.net is not None
        _check_users(users, self.net.users.num_embeddings)
        self.net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return self.net.scores(u).float().cpu().numpy()

    def save(self, path: Path) -> None:
        _require_fitted(self.net is not None, self.name)
        assert self.net is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        _save(
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


def _save(
    path: Path,
    name: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    num_users: int,
    num_items: int,
) -> None:
    save_checkpoint(
        path,
        {
            "kind": CHECKPOINT_KIND,
            "name": name,
            "config": config,
            "state": state,
            "num_users": num_users,
            "num_items": num_items,
        },
    )
