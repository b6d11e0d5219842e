"""HSTU (Zhai et al., ICML 2024): a generative recommender's layers over a user's actions.

Each layer projects the normalised input once into U, V, Q, K (SiLU), replaces softmax
attention with pointwise aggregated attention, SiLU(Q K^T / sqrt(d) + rab) V divided by the
sequence length, and gates its normalised output by U before the output projection and the
residual. `rab` is a relative attention bias: one learned value per relative position and one
per log-bucket of the time gap between the two actions. A user is scored by the last state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._runtime import (
    check_catalogue,
    check_histories,
    check_users,
    padded_histories,
    require_fitted,
    save_recommender,
    seed_everything,
)
from pinlab_models._sequential import (
    crop,
    fit_sequences,
    recent_per_user,
    require_pairs,
    sampled_scores,
    sampled_softmax,
    user_sequences,
)
from pinlab_models.contracts import (
    FitReport,
    HSTUConfig,
    PinlabModelError,
    TrainContext,
    Validator,
)


def user_windows(train: InteractionLog, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_users, max_len) item indexes + 1 and their timestamps, each user's most recent
    actions left-padded with 0 (`user_sequences`'s layout, with the times beside it)."""
    return user_sequences(train, max_len), recent_per_user(train, max_len, train.timestamps)


class _Layer(nn.Module):
    def __init__(self, cfg: HSTUConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        # Pointwise attention is normalised by the window, a constant (HSTU's 1/N): dividing by
        # a batch's cropped width would make a row's scores depend on its batch-mates.
        self.window = cfg.max_len
        self.norm_in = nn.LayerNorm(cfg.dim)
        self.uvqk = nn.Linear(cfg.dim, 4 * cfg.dim)
        self.norm_out = nn.LayerNorm(cfg.dim)
        self.out = nn.Linear(cfg.dim, cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, bias: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x (b, n, d); bias (b, heads, n, n); allowed (b, 1, n, n): causal, real keys."""
        b, n, d = x.shape
        u, v, q, k = F.silu(self.uvqk(self.norm_in(x))).chunk(4, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        scores = split(q) @ split(k).transpose(-1, -2) / (d // self.heads) ** 0.5
        weights = F.silu(scores + bias) * allowed / self.window
        attended = (weights @ split(v)).transpose(1, 2).reshape(b, n, d)
        out: torch.Tensor = x + self.dropout(self.out(self.norm_out(attended) * u))
        return out


class _HSTU(nn.Module):
    causal: torch.Tensor

    def __init__(self, num_items: int, cfg: HSTUConfig) -> None:
        super().__init__()
        if cfg.dim % cfg.heads:
            raise PinlabModelError(f"hstu dim {cfg.dim} is not a multiple of heads {cfg.heads}")
        self.num_items = num_items
        self.heads = cfg.heads
        self.items = nn.Embedding(num_items + 1, cfg.dim, padding_idx=0)
        self.position_bias = nn.Embedding(cfg.max_len, cfg.heads)
        self.time_bias = nn.Embedding(cfg.time_buckets, cfg.heads)
        self.layers = nn.ModuleList(_Layer(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.buckets = cfg.time_buckets
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.zeros_(self.position_bias.weight)
        nn.init.zeros_(self.time_bias.weight)

    def forward(self, sequences: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        """(b, n) item indexes + 1 and their times -> (b, n, d) states (left-padded rows)."""
        n = sequences.shape[1]
        real = sequences > 0
        x = self.dropout(self.items(sequences) * self.items.embedding_dim**0.5) * real[..., None]
        steps = torch.arange(n, device=sequences.device)
        distance = (steps[:, None] - steps[None, :]).clamp(0, self.position_bias.num_embeddings - 1)
        gap = (times[:, :, None] - times[:, None, :]).clamp_min(0).float()
        bucket = torch.log1p(gap).floor().long().clamp(0, self.buckets - 1)
        bias = self.position_bias(distance).permute(2, 0, 1)[None] + self.time_bias(bucket).permute(
            0, 3, 1, 2
        )
        causal = steps[:, None] >= steps[None, :]
        allowed = (causal[None] & real[:, None, :])[:, None].float()
        for layer in self.layers:
            x = layer(x, bias, allowed)
        out: torch.Tensor = self.norm(x)
        return out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = hidden @ self.items.weight[1:].T
        return out


class HSTU:
    name = "hstu"

    def __init__(self, config: HSTUConfig | None = None) -> None:
        self.config = config or HSTUConfig()
        self.net: _HSTU | None = None
        self.sequences: torch.Tensor | None = None
        self.times: torch.Tensor | None = None
        self.device = "cpu"

    @property
    def history_window(self) -> int:
        return self.config.max_len

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        gen = seed_everything(ctx.seed)
        self.device = ctx.device
        windows, stamps = user_windows(train, cfg.max_len + 1)
        lengths = (windows > 0).sum(dim=1)
        keep = lengths >= 2
        windows, stamps, lengths = windows[keep], stamps[keep], lengths[keep]
        require_pairs(lengths, self.name)
        self.sequences, self.times = user_windows(train, cfg.max_len)
        self.net = net = _HSTU(train.num_items, cfg).to(ctx.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        num_items = train.num_items

        def loss(rows: torch.Tensor, _: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            longest = int(lengths[rows].max())
            batch = windows[rows][:, -longest:].to(ctx.device)
            times = stamps[rows][:, -longest:].to(ctx.device)
            inputs, targets = batch[:, :-1], batch[:, 1:]
            hidden = net(inputs, times[:, :-1])
            real = (inputs > 0) & (targets > 0)
            return self._loss(hidden, targets, real, num_items, draws)

        return fit_sequences(self, net, optimizer, loss, lengths, cfg, ctx, validate, gen)

    def _loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        real: torch.Tensor,
        num_items: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        assert self.net is not None
        cfg = self.config
        if cfg.loss == "softmax":
            return F.cross_entropy(self.net.logits(hidden[real]), targets[real] - 1)
        pos, neg = sampled_scores(
            hidden, targets, real, self.net.items.weight, cfg.negatives, num_items, gen
        )
        return sampled_softmax(pos, neg)

    @torch.no_grad()
    def _last(self, sequences: torch.Tensor, times: torch.Tensor) -> Iterator[torch.Tensor]:
        assert self.net is not None
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        for start in range(0, len(sequences), 512):
            rows = crop(sequences[start : start + 512])
            width = rows.shape[1]
            stamp = times[start : start + 512, -width:]
            yield self.net.logits(self.net(rows.to(self.device), stamp.to(self.device))[:, -1])

    def _scores(self, sequences: torch.Tensor, times: torch.Tensor) -> Float32Array:
        assert self.net is not None
        chunks = [c.float().cpu() for c in self._last(sequences, times)]
        if not chunks:
            return np.zeros((0, self.net.num_items), dtype=np.float32)
        return torch.cat(chunks).numpy()

    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.sequences is not None and self.times is not None
        check_users(users, len(self.sequences))
        rows = torch.from_numpy(np.asarray(users, dtype=np.int64))
        return self._scores(self.sequences[rows], self.times[rows])

    def update_histories(self, train: InteractionLog) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_catalogue(train, self.net.num_items, self.name)
        self.sequences, self.times = user_windows(train, self.config.max_len)

    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array:
        """A session has no times: its actions count as one moment (the zero-gap bucket)."""
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_histories(histories, self.net.num_items)
        rows = padded_histories(histories, self.config.max_len)
        return self._scores(rows, torch.zeros_like(rows))

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.sequences is not None and self.times is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        state["sequences"], state["times"] = self.sequences, self.times
        save_recommender(
            path, self.name, self.config.model_dump(), state, len(self.sequences),
            self.net.num_items,
        )  # fmt: skip

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> HSTU:
        model = cls(HSTUConfig.model_validate(payload["config"]))
        state = dict(payload["state"])
        model.sequences, model.times = state.pop("sequences"), state.pop("times")
        net = _HSTU(int(payload["num_items"]), model.config)
        net.load_state_dict(state)
        model.net = net
        return model
