"""Recommenders: a popularity baseline and matrix factorisation (BPR or softmax)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._learn_bpr import learn_bpr_epoch
from pinlab_models._parallel import Steps, positions_in
from pinlab_models._runtime import (
    Stopwatch,
    check_candidates,
    check_users,
    gathered_dot,
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

    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.counts is not None, self.name)
        assert self.counts is not None
        check_users(users, self.num_users)
        check_candidates(users, items, len(self.counts))
        return self.counts[items]

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


class MatrixFactorization:
    """User and item factors (and an item bias) whose dot product ranks items.

    `bpr` is LearnBPR (Rendle et al., 2009): SGD on the pairwise loss of each positive against
    one item drawn uniformly among those the user has not interacted with (a draw that hits a
    positive is skipped, as Cornac does), with per-sample L2, one sample at a time
    (`_learn_bpr`, on the CPU; the fitted model scores on `ctx.device`). `softmax` scores the
    positive against the full catalogue (or `negatives` uniform samples when the catalogue is
    larger), trained by Adam in batches.
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
        # LearnBPR is sequential: it trains on the CPU whatever the device.
        self.device = "cpu" if cfg.loss == "bpr" else ctx.device
        self.net = net = _Factors(train.num_users, train.num_items, cfg.dim, cfg.init_std)
        net.to(self.device)
        if cfg.loss == "bpr":  # sequential per-sample SGD: one process, no Steps
            report = run_epochs(
                self, net, self._learn_bpr_epochs(train, gen), epochs=cfg.epochs,
                patience=cfg.patience, ctx=ctx, validate=validate, gen=gen,
            )  # fmt: skip
        else:
            train_epoch, steps = self._softmax_epochs(train, gen)
            report = run_epochs(
                self, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
                validate=validate, steps=steps,
            )  # fmt: skip
        net.to(ctx.device)
        self.device = ctx.device
        return report

    def _learn_bpr_epochs(self, train: InteractionLog, gen: torch.Generator) -> Callable[[], float]:
        assert self.net is not None
        cfg, net = self.config, self.net
        users, items = train.users.astype(np.int64), train.items.astype(np.int64)
        weights = (train.weights / train.weights.mean()).astype(np.float32)
        known = np.unique(users * train.num_items + items)
        # Views of the parameters: the compiled loop updates them in place.
        user_factors = net.users.weight.detach().numpy()
        item_factors = net.items.weight.detach().numpy()
        item_bias = net.bias.detach().numpy()

        def train_epoch() -> float:
            order = torch.randperm(len(train), generator=gen).numpy()
            negatives = torch.randint(0, train.num_items, (len(train),), generator=gen).numpy()
            total = learn_bpr_epoch(
                users[order], items[order], negatives, weights[order], known,
                user_factors, item_factors, item_bias, cfg.lr, cfg.l2,
            )  # fmt: skip
            return total / len(train)

        return train_epoch

    def _softmax_epochs(
        self, train: InteractionLog, gen: torch.Generator
    ) -> tuple[Callable[[], float], Steps]:
        assert self.net is not None
        cfg, net = self.config, self.net
        users = torch.from_numpy(train.users).to(self.device)
        items = torch.from_numpy(train.items).to(self.device)
        weights = torch.from_numpy(train.weights).to(self.device)
        weights = weights / weights.mean()
        batches = max(1, -(-len(train) // cfg.batch_size))

        def loss(share: torch.Tensor, batch: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            mine = positions_in(batch, share)
            losses = self._softmax_losses(users[share], items[batch], mine, train.num_items, draws)
            return (losses * weights[share]).mean()

        step = Steps(net, torch.optim.Adam(net.parameters(), lr=cfg.lr), gen, loss)

        def train_epoch() -> float:
            net.train()
            order = torch.randperm(len(train), generator=gen).to(self.device)
            total = 0.0
            for i in range(batches):
                batch = order[i * cfg.batch_size : (i + 1) * cfg.batch_size]
                total += step(batch) * len(batch)
            return total / len(train)

        return train_epoch, step

    def _softmax_losses(
        self,
        users: torch.Tensor,
        batch_items: torch.Tensor,
        mine: torch.Tensor,
        num_items: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """Cross-entropy of each positive among the catalogue, or among the whole batch's
        items and sampled ones, plus its L2. `users` are the batch's rows at `mine` (all of
        them in one process, this rank's share under torchrun)."""
        assert self.net is not None
        cfg, net = self.config, self.net
        items = batch_items[mine]
        norms = net.squared_norms(users, items)
        if cfg.negatives >= num_items:
            logits = net.scores(users) / cfg.temperature
            return F.cross_entropy(logits, items, reduction="none") + cfg.l2 / 2 * norms
        # Uniform negatives need no logQ correction: every item has the same sampling odds.
        sampled = torch.randint(0, num_items, (cfg.negatives,), generator=gen).to(users.device)
        logits = net.scores(users, torch.cat([batch_items, sampled])) / cfg.temperature
        return F.cross_entropy(logits, mine, reduction="none") + cfg.l2 / 2 * norms

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_users(users, self.net.users.num_embeddings)
        net = self.net
        if net.training:  # eval() walks the module tree: too slow for every request
            net.eval()
        if net.items.weight.device.type == "cpu":
            # NumPy over views of the weights (current however they are trained): one user's
            # scores over 4,000 items at dim 200 took 38 us against PyTorch's 158 us.
            factors = net.users.weight.detach().numpy()
            items = net.items.weight.detach().numpy()
            bias = net.bias.detach().numpy()
            scores: Float32Array = factors[np.asarray(users, dtype=np.int64)] @ items.T + bias
            return scores
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return self.net.scores(u).float().cpu().numpy()

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_users(users, self.net.users.num_embeddings)
        check_candidates(users, items, self.net.items.num_embeddings)
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        bias = self.net.bias[torch.from_numpy(np.asarray(items, dtype=np.int64)).to(self.device)]
        scores = gathered_dot(self.net.users.weight[u], self.net.items.weight, items) + bias
        return scores.float().cpu().numpy()

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
