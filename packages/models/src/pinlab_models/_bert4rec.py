"""BERT4Rec: a bidirectional transformer fills in masked items of a user's sequence.

Training masks each real item with probability `mask_prob` (a sequence with none masked gets
its last item masked, so every row teaches something) and scores the masked positions against
the whole catalogue. Scoring appends the mask token after the user's most recent items: what
fills it is the next item.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

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
from pinlab_models._sequential import _Transformer, crop, fit_sequences, user_sequences
from pinlab_models.contracts import (
    BERT4RecConfig,
    FitReport,
    PinlabModelError,
    TrainContext,
    Validator,
)


class BERT4Rec:
    name = "bert4rec"

    def __init__(self, config: BERT4RecConfig | None = None) -> None:
        self.config = config or BERT4RecConfig()
        self.net: _Transformer | None = None
        self.sequences: torch.Tensor | None = None
        """(num_users, max_len - 1): each user's most recent items, left-padded."""
        self.device = "cpu"

    @property
    def history_window(self) -> int:
        return self.config.max_len - 1

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        gen = seed_everything(ctx.seed)
        self.device = ctx.device
        windows = user_sequences(train, cfg.max_len)
        lengths = (windows > 0).sum(dim=1)
        self.sequences = user_sequences(train, cfg.max_len - 1)
        self.net = net = _Transformer(train.num_items, cfg, causal=False).to(ctx.device)
        mask_token = train.num_items + 1
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def loss(rows: torch.Tensor, _: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            batch = crop(windows[rows])
            real = batch > 0
            masked = real & (torch.rand(batch.shape, generator=draws) < cfg.mask_prob)
            masked[:, -1] |= ~masked.any(dim=1)  # the last column is each row's last item
            inputs = batch.masked_fill(masked, mask_token).to(ctx.device)
            hidden = net(inputs)[masked.to(ctx.device)]
            return F.cross_entropy(net.logits(hidden), batch[masked].to(ctx.device) - 1)

        return fit_sequences(self, net, optimizer, loss, lengths, cfg, ctx, validate, gen)

    @torch.no_grad()
    def _next(self, recent: torch.Tensor) -> Float32Array:
        """Scores of the item after each row of `recent` (left-padded, max_len - 1 wide)."""
        assert self.net is not None
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        mask = torch.full((len(recent), 1), self.net.num_items + 1, dtype=torch.int64)
        rows = torch.cat([recent, mask], dim=1)
        net = self.net
        chunks = [
            net.logits(net.last_hidden(crop(rows[i : i + 512]).to(self.device))).float().cpu()
            for i in range(0, len(rows), 512)
        ]
        if not chunks:
            return np.zeros((0, self.net.num_items), dtype=np.float32)
        return torch.cat(chunks).numpy()

    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.sequences is not None
        check_users(users, len(self.sequences))
        return self._next(self.sequences[torch.from_numpy(np.asarray(users, dtype=np.int64))])

    def update_histories(self, train: InteractionLog) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_catalogue(train, self.net.num_items, self.name)
        self.sequences = user_sequences(train, self.history_window)

    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_histories(histories, self.net.num_items)
        return self._next(padded_histories(histories, self.history_window))

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.sequences is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        state["sequences"] = self.sequences
        save_recommender(
            path, self.name, self.config.model_dump(), state, len(self.sequences),
            self.net.num_items,
        )  # fmt: skip

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> BERT4Rec:
        model = cls(BERT4RecConfig.model_validate(payload["config"]))
        state = dict(payload["state"])
        model.sequences = state.pop("sequences")
        net = _Transformer(int(payload["num_items"]), model.config, causal=False)
        net.load_state_dict(state)
        model.net = net
        return model
