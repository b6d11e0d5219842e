"""Two-tower retrieval with in-batch sampled softmax and logQ correction."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._parallel import Steps, positions_in
from pinlab_models._runtime import (
    check_candidates,
    check_histories,
    check_users,
    gathered_dot,
    padded_histories,
    require_fitted,
    run_epochs,
    save_recommender,
    seed_everything,
)
from pinlab_models._sequential import user_sequences
from pinlab_models.contracts import (
    FitReport,
    PinlabModelError,
    TrainContext,
    TwoTowerConfig,
    Validator,
)


class _Towers(nn.Module):
    features: torch.Tensor

    def __init__(self, num_users: int, features: torch.Tensor, cfg: TwoTowerConfig) -> None:
        super().__init__()
        num_items = len(features)
        self.register_buffer("features", features)
        self.item_ids = nn.Embedding(num_items + 1, cfg.dim, padding_idx=0)
        self.item_text = nn.Linear(features.shape[1], cfg.dim) if features.shape[1] else None
        self.user_ids = nn.Embedding(num_users, cfg.dim)
        self.user_mlp = nn.Sequential(
            nn.Linear(2 * cfg.dim, 2 * cfg.dim), nn.GELU(), nn.Linear(2 * cfg.dim, cfg.dim)
        )
        for table in (self.item_ids, self.user_ids):
            nn.init.normal_(table.weight, std=0.05)

    def items(self, index: torch.Tensor | None = None) -> torch.Tensor:
        """Unit item vectors (all items when `index` is None); `index` is 0-based."""
        ids = self.item_ids.weight[1:] if index is None else self.item_ids(index + 1)
        if self.item_text is not None:
            feats = self.features if index is None else self.features[index]
            ids = ids + self.item_text(feats)
        return F.normalize(ids, dim=-1)

    def users(
        self, users: torch.Tensor, history: torch.Tensor, all_items: torch.Tensor
    ) -> torch.Tensor:
        """Unit user vectors from the id and the mean of the history's item vectors.

        `all_items` is `items()`: projecting the catalogue once is far cheaper than projecting
        every history slot of a batch.
        """
        mask = (history > 0).unsqueeze(-1).float()
        items = all_items[(history - 1).clamp_min(0)] * mask
        pooled = items.sum(1) / mask.sum(1).clamp_min(1.0)
        both = torch.cat([self.user_ids(users), pooled], dim=-1)
        return F.normalize(self.user_mlp(both), dim=-1)


class TwoTower:
    name = "two-tower"

    def __init__(self, config: TwoTowerConfig | None = None) -> None:
        self.config = config or TwoTowerConfig()
        self.net: _Towers | None = None
        self.history: torch.Tensor | None = None

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        features = ctx.item_features
        if features is not None and len(features) != train.num_items:
            raise PinlabModelError(
                f"item_features has {len(features)} rows for {train.num_items} items"
            )
        gen = seed_everything(ctx.seed)
        feats = (
            torch.zeros(train.num_items, 0)
            if features is None
            else torch.from_numpy(np.ascontiguousarray(features, dtype=np.float32))
        )
        self.history = history = user_sequences(train, cfg.history_len)
        self.net = net = _Towers(train.num_users, feats, cfg)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        users = torch.from_numpy(train.users)
        items = torch.from_numpy(train.items)
        counts = torch.bincount(items, minlength=train.num_items).float()
        log_q = torch.log(counts / counts.sum()).clamp_min(-30.0)

        def loss(share: torch.Tensor, batch: torch.Tensor, _: torch.Generator) -> torch.Tensor:
            """The share's rows against every item of the whole batch: in-batch negatives are
            the global batch's under DDP too (each rank embeds the whole catalogue anyway)."""
            mine = positions_in(batch, share)
            u, i = users[batch[mine]], items[batch]
            all_items = net.items()
            logits = net.users(u, history[u], all_items) @ all_items[i].T / cfg.temperature
            if cfg.logq:
                logits = logits - log_q[i][None, :]
            # Another row's item that this user also has in the batch is no negative.
            same = (i[None, :] == i[mine][:, None]) & (mine[:, None] != torch.arange(len(i)))
            return F.cross_entropy(logits.masked_fill(same, float("-inf")), mine)

        step = Steps(net, optimizer, gen, loss)

        def train_epoch() -> float:
            net.train()
            order = torch.randperm(len(users), generator=gen)
            losses = [
                step(order[start : start + cfg.batch_size])
                for start in range(0, len(order), cfg.batch_size)
            ]
            return sum(losses) / len(losses)

        return run_epochs(
            self, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
            validate=validate, steps=step,
        )  # fmt: skip

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.history is not None
        check_users(users, len(self.history))
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        all_items = self.net.items()
        return (self.net.users(u, self.history[u], all_items) @ all_items.T).numpy()

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.history is not None
        check_users(users, len(self.history))
        check_candidates(users, items, self.net.item_ids.num_embeddings - 1)
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        all_items = self.net.items()
        return gathered_dot(self.net.users(u, self.history[u], all_items), all_items, items).numpy()

    @property
    def history_window(self) -> int:
        return self.config.history_len

    @torch.no_grad()
    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array:
        """A visitor has no id vector of their own: the user tower gets the mean of the
        trained users' id vectors, the "average user", beside the history's items."""
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        num_items = self.net.item_ids.num_embeddings - 1
        check_histories(histories, num_items)
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        rows = padded_histories(histories, self.config.history_len)
        all_items = self.net.items()
        mask = (rows > 0).unsqueeze(-1).float()
        pooled = (all_items[(rows - 1).clamp_min(0)] * mask).sum(1) / mask.sum(1).clamp_min(1.0)
        average = self.net.user_ids.weight.mean(0).expand(len(rows), -1)
        users = F.normalize(self.net.user_mlp(torch.cat([average, pooled], dim=-1)), dim=-1)
        return (users @ all_items.T).numpy()

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.history is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        state["history"] = self.history
        num_items = self.net.item_ids.num_embeddings - 1
        save_recommender(
            path, self.name, self.config.model_dump(), state, len(self.history), num_items
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> TwoTower:
        model = cls(TwoTowerConfig.model_validate(payload["config"]))
        state = dict(payload["state"])
        model.history = state.pop("history")
        net = _Towers(int(payload["num_users"]), state["features"], model.config)
        net.load_state_dict(state)
        model.net = net
        return model
