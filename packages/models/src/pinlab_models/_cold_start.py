"""A hybrid recommender for cold start: item vectors from item features, plus ids when warm.

Each item's vector is a learned map of its features (text or image embeddings) plus, for items
with training interactions, a free id embedding. Training drops the id embedding of a random
share of items in every batch (DropoutNet, Volkovs et al. 2017), so the feature path alone
must rank well: an item nobody has engaged with yet is scored from its features only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._parallel import Steps
from pinlab_models._runtime import (
    RECOMMENDER_CHECKPOINT,
    check_candidates,
    check_users,
    gathered_dot,
    require_fitted,
    run_epochs,
    save_checkpoint,
    seed_everything,
)
from pinlab_models.contracts import (
    FitReport,
    HybridConfig,
    PinlabModelError,
    TrainContext,
    Validator,
)


class _HybridNet(nn.Module):
    features: torch.Tensor
    warm: torch.Tensor

    def __init__(
        self, num_users: int, features: torch.Tensor, warm: torch.Tensor, config: HybridConfig
    ) -> None:
        super().__init__()
        num_items, feature_dim = features.shape
        self.register_buffer("features", features)
        self.register_buffer("warm", warm)
        self.users = nn.Embedding(num_users, config.dim)
        nn.init.normal_(self.users.weight, std=0.1)
        # Zero for every item, and only warm items ever get a gradient: cold ones stay zero.
        self.items = nn.Embedding(num_items, config.dim)
        nn.init.zeros_(self.items.weight)
        self.content = nn.Sequential(
            nn.Linear(feature_dim, config.hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(config.hidden_dim, config.dim + 1),  # the last unit is the item's bias
        )

    def item_vectors(
        self, items: torch.Tensor | None = None, keep_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(len(items), dim + 1), all items when None: the content vector, plus the id vector
        of warm items whose id is kept (`keep_ids`, one flag per item of `items`)."""
        if items is None:
            items = torch.arange(len(self.warm), device=self.warm.device)
        keep = self.warm[items] if keep_ids is None else self.warm[items] & keep_ids
        ids = self.items(items) * keep[:, None].to(self.items.weight.dtype)
        content: torch.Tensor = self.content(self.features[items])
        return content + F.pad(ids, (0, 1))

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """(len(users), dim + 1): the user's factors and a 1 that picks up the item's bias."""
        return F.pad(self.users.weight[users], (0, 1), value=1.0)

    def scores(self, users: torch.Tensor, item_vectors: torch.Tensor) -> torch.Tensor:
        result: torch.Tensor = self.user_vectors(users) @ item_vectors.T
        return result


class HybridRecommender:
    """Content-aware matrix factorisation: cold items are scored from their features alone.

    Needs `TrainContext.item_features`, one row per item of the log (its index order). The
    loss is a softmax over the items seen in training (sampled uniformly among them past
    `negatives` of them), so items held out entirely are never trained as negatives either.
    """

    name = "hybrid"

    def __init__(self, config: HybridConfig | None = None) -> None:
        self.config = config or HybridConfig()
        self.net: _HybridNet | None = None
        self.device = "cpu"

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        features = _checked_features(ctx.item_features, train.num_items)
        cfg = self.config
        gen = seed_everything(ctx.seed)
        self.device = ctx.device
        warm = np.bincount(train.items, minlength=train.num_items) > 0
        self.net = net = _HybridNet(
            train.num_users, torch.from_numpy(features), torch.from_numpy(warm), cfg
        ).to(ctx.device)
        optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        users = torch.from_numpy(train.users).to(ctx.device)
        # Softmax targets are positions among the warm items, the only candidates in training.
        position = np.cumsum(warm) - 1
        targets = torch.from_numpy(position[train.items]).to(ctx.device)
        warm_items = torch.from_numpy(np.flatnonzero(warm)).to(ctx.device)
        train_items = torch.from_numpy(train.items).to(ctx.device)
        weights = torch.from_numpy(train.weights).to(ctx.device)
        weights = weights / weights.mean()
        steps = max(1, len(train) // cfg.batch_size)

        def kept(items: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            """Vectors of `items`, each dropping its id part with probability item_dropout."""
            keep = torch.rand(len(items), generator=draws) >= cfg.item_dropout
            return net.item_vectors(items, keep.to(ctx.device))

        def logits_and_targets(
            idx: torch.Tensor, draws: torch.Generator
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if len(warm_items) <= cfg.negatives:
                return net.scores(users[idx], kept(warm_items, draws)), targets[idx]
            # Sampled softmax: the positive against uniform draws among the warm items. A
            # uniform proposal shifts every logit by the same log-probability, so no logQ term.
            drawn = torch.randint(0, len(warm_items), (cfg.negatives,), generator=draws)
            user_vecs = net.user_vectors(users[idx])
            positive = (user_vecs * kept(train_items[idx], draws)).sum(dim=1, keepdim=True)
            negative = user_vecs @ kept(warm_items[drawn.to(ctx.device)], draws).T
            zero = torch.zeros(len(idx), dtype=torch.long, device=ctx.device)
            return torch.cat([positive, negative], dim=1), zero

        def loss(idx: torch.Tensor, _: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            logits, target = logits_and_targets(idx, draws)
            losses = F.cross_entropy(logits / cfg.temperature, target, reduction="none")
            return (losses * weights[idx]).mean()

        step = Steps(net, optimizer, gen, loss)

        def train_epoch() -> float:
            net.train()
            order = torch.randperm(len(train), generator=gen).to(ctx.device)
            size = cfg.batch_size
            return sum(step(order[i * size : (i + 1) * size]) for i in range(steps)) / steps

        return run_epochs(
            self, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
            validate=validate, steps=step,
        )  # fmt: skip

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        net = self.net
        check_users(users, net.users.num_embeddings)
        net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        return net.scores(u, net.item_vectors()).float().cpu().numpy()

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        net = self.net
        check_users(users, net.users.num_embeddings)
        check_candidates(users, items, len(net.warm))
        net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64)).to(self.device)
        scores = gathered_dot(net.user_vectors(u), net.item_vectors(), items)
        return scores.float().cpu().numpy()

    def save(self, path: Path) -> None:
        if self.net is None:
            raise PinlabModelError(f"{self.name} has not been fitted; call fit() or load it")
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        save_checkpoint(
            path,
            {
                "kind": RECOMMENDER_CHECKPOINT,
                "name": self.name,
                "config": self.config.model_dump(),
                "state": state,
                "num_users": self.net.users.num_embeddings,
                "num_items": self.net.items.num_embeddings,
            },
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> HybridRecommender:
        model = cls(HybridConfig.model_validate(payload["config"]))
        state = payload["state"]
        model.net = _HybridNet(
            int(payload["num_users"]), state["features"], state["warm"], model.config
        )
        model.net.load_state_dict(state)
        return model


def _checked_features(features: Float32Array | None, num_items: int) -> Float32Array:
    if features is None:
        raise PinlabModelError(
            "the hybrid recommender needs item features (TrainContext.item_features): text "
            "or image embeddings, one row per item"
        )
    if features.ndim != 2 or len(features) != num_items:
        raise PinlabModelError(
            f"item features have shape {features.shape}; expected ({num_items}, d), one row "
            "per item in the log's index order"
        )
    if not np.isfinite(features).all():
        raise PinlabModelError("item features contain NaN or infinity")
    return np.ascontiguousarray(features, dtype=np.float32)
