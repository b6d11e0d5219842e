"""SASRec: a causal transformer reads a user's items in time order and predicts what is next.

Items are shifted by one so that index 0 is padding; sequences are left-padded to `max_len`.
A user is scored by the hidden state after their most recent training item.

Most users are far shorter than `max_len`, so training groups users of similar length into a
batch and crops it to its longest sequence (`length_batches`), and the loss reads the hidden
states of real positions only before scoring them against the catalogue. Positions are
counted from the right, so a cropped sequence sees the same position embeddings as a full one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._parallel import LossFn, Steps
from pinlab_models._runtime import (
    check_candidates,
    check_catalogue,
    check_histories,
    check_users,
    gathered_dot,
    padded_histories,
    require_fitted,
    run_epochs,
    save_recommender,
    seed_everything,
)
from pinlab_models.contracts import (
    BERT4RecConfig,
    FitReport,
    GSASRecConfig,
    PinlabModelError,
    SASRecConfig,
    Scorer,
    TrainContext,
    Validator,
)


def user_sequences(train: InteractionLog, max_len: int) -> torch.Tensor:
    """(num_users, max_len) item indexes + 1, each user's most recent items, left-padded with 0.

    Interactions are ordered by timestamp within a user (ties keep log order).
    """
    return recent_per_user(train, max_len, train.items + 1)


def recent_per_user(train: InteractionLog, max_len: int, values: Int64Array) -> torch.Tensor:
    """(num_users, max_len): `values` (one per interaction) of each user's most recent
    `max_len` interactions, oldest first, left-padded with 0 (`user_sequences`'s layout)."""
    order = np.lexsort((np.arange(len(train)), train.timestamps, train.users))
    users, picked = train.users[order], np.asarray(values, dtype=np.int64)[order]
    counts = np.bincount(users, minlength=train.num_users)
    ends = np.cumsum(counts)
    # Position of each interaction counted from its user's last one (0 = most recent).
    from_end = ends[users] - 1 - np.arange(len(users))
    keep = from_end < max_len
    rows = np.zeros((train.num_users, max_len), dtype=np.int64)
    rows[users[keep], max_len - 1 - from_end[keep]] = picked[keep]
    return torch.from_numpy(rows)


def require_pairs(lengths: torch.Tensor, name: str) -> None:
    """Refuse training where no user's window holds an item and the next one to predict."""
    if len(lengths) == 0:
        raise PinlabModelError(
            f"{name} learns from users with at least 2 training interactions (an item and the "
            "next); this split leaves none: load more of each user's history, or train a model "
            "that reads no order (popularity, ease, mf)"
        )


def length_batches(
    lengths: torch.Tensor, batch_size: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """Row indexes in batches of similar length, in a seeded random order.

    Users are shuffled, stably sorted by length (so ties fall in a new order every epoch) and
    cut into batches; the batches are then shuffled so lengths do not arrive in order.
    """
    shuffled = torch.randperm(len(lengths), generator=gen)
    by_length = shuffled[torch.sort(lengths[shuffled], stable=True).indices]
    batches = list(torch.split(by_length, batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


class EpochSchedule(Protocol):
    """What `fit_sequences` reads of a sequential recommender's config."""

    @property
    def batch_size(self) -> int: ...
    @property
    def epochs(self) -> int: ...
    @property
    def patience(self) -> int: ...
    @property
    def eval_every(self) -> int: ...


def fit_sequences(
    model: Scorer,
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss: LossFn,
    lengths: torch.Tensor,
    cfg: EpochSchedule,
    ctx: TrainContext,
    validate: Validator | None,
    gen: torch.Generator,
) -> FitReport:
    """Train `net` one optimiser step per `length_batches` batch of users' rows (`loss` of
    those rows), through `run_epochs`: the loop SASRec, BERT4Rec and HSTU share."""
    step = Steps(net, optimizer, gen, loss)

    def train_epoch() -> float:
        net.train()
        losses = [step(rows) for rows in length_batches(lengths, cfg.batch_size, gen)]
        return sum(losses) / len(losses)

    return run_epochs(
        model, net, train_epoch, epochs=cfg.epochs, patience=cfg.patience, ctx=ctx,
        validate=validate, eval_every=cfg.eval_every, steps=step,
    )  # fmt: skip


def crop(sequences: torch.Tensor) -> torch.Tensor:
    """Left-padded rows cut to the longest real sequence among them (at least one column)."""
    longest = max(int((sequences > 0).sum(dim=1).max()), 1) if len(sequences) else 1
    return sequences[:, -longest:]


def sampled_scores(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    real: torch.Tensor,
    item_vecs: torch.Tensor,
    negatives: int,
    num_items: int,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of each real position's next item, and of `negatives` uniform draws per sequence
    shared by its positions (as gSASRec samples them): (positions,) and (positions, draws).

    `hidden` (b, n, d) and `targets` (b, n) (item indexes + 1) are masked by `real`. A draw
    that is the position's own next item scores -inf: it is no negative.
    """
    drawn = torch.randint(1, num_items + 1, (len(targets), negatives), generator=gen)
    drawn = drawn.to(targets.device)
    pos = (hidden * item_vecs[targets]).sum(-1)[real]
    neg = torch.einsum("bld,bkd->blk", hidden, item_vecs[drawn])
    neg = neg.masked_fill(drawn[:, None, :] == targets[:, :, None], -torch.inf)[real]
    return pos, neg


def sampled_softmax(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of each positive against its draws."""
    logits = torch.cat([pos[:, None], neg], dim=1)
    first = torch.zeros(len(pos), dtype=torch.long, device=pos.device)
    return F.cross_entropy(logits, first)


class _Transformer(nn.Module):
    causal: torch.Tensor

    def __init__(
        self, num_items: int, cfg: SASRecConfig | BERT4RecConfig, causal: bool = True
    ) -> None:
        """`causal=False` lets every position see the whole sequence (BERT4Rec), whose item
        table then also holds a mask token after the real items."""
        super().__init__()
        self.num_items = num_items
        self.is_causal = causal
        self.items = nn.Embedding(num_items + 1 + (not causal), cfg.dim, padding_idx=0)
        self.positions = nn.Embedding(cfg.max_len, cfg.dim)
        layer = nn.TransformerEncoderLayer(
            cfg.dim, cfg.heads, 4 * cfg.dim, cfg.dropout, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.dropout = nn.Dropout(cfg.dropout)
        self.heads = cfg.heads
        future = torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), diagonal=1)
        self.register_buffer("causal", future, persistent=False)
        nn.init.normal_(self.items.weight, std=0.02)
        nn.init.normal_(self.positions.weight, std=0.02)

    def forward(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch, length <= max_len) item indexes + 1 -> (batch, length, dim) hidden states.

        Rows are left-padded and right-aligned: the last column is position `max_len - 1`.
        """
        hidden = self.encoder(self._embed(sequences), mask=self._attention_mask(sequences))
        out: torch.Tensor = self.norm(hidden)
        return out

    def last_hidden(self, sequences: torch.Tensor) -> torch.Tensor:
        """`forward(sequences)[:, -1]`, the state every score is read from, at less cost: the
        last layer runs its attention query and feed-forward for the last position only
        (every position still serves as a key), which is a third of the work at inference."""
        *lower, top = self.encoder.layers
        mask = self._attention_mask(sequences)
        x = self._embed(sequences)
        for layer in lower:
            x = layer(x, src_mask=mask)
        keys = top.norm1(x)
        attended = top.self_attn(
            keys[:, -1:], keys, keys, attn_mask=mask[:, -1:], need_weights=False
        )[0]
        last = x[:, -1:] + top.dropout1(attended)
        last = last + top._ff_block(top.norm2(last))
        out: torch.Tensor = self.norm(last[:, 0])
        return out

    def _embed(self, sequences: torch.Tensor) -> torch.Tensor:
        length = sequences.shape[1]
        max_len = self.positions.num_embeddings
        x = self.items(sequences) * self.items.embedding_dim**0.5
        real = (sequences > 0).unsqueeze(-1)
        out: torch.Tensor = self.dropout(x + self.positions.weight[max_len - length :]) * real
        return out

    def _attention_mask(self, sequences: torch.Tensor) -> torch.Tensor:
        """(batch * heads, length, length) additive mask: no future, no padding keys.

        Every position may still attend to itself, so a padding query is not left with
        nothing to attend to (NaN); with padding keys hidden, a row's states do not depend
        on how much padding it carries, which is what makes cropping exact.
        """
        length = sequences.shape[1]
        diagonal = torch.eye(length, dtype=torch.bool, device=sequences.device)
        padding = (sequences == 0)[:, None, :]
        blocked = (
            self.causal[:length, :length] | padding if self.is_causal else padding
        ) & ~diagonal
        mask = torch.zeros(blocked.shape, device=sequences.device).masked_fill(blocked, -torch.inf)
        return mask.repeat_interleave(self.heads, dim=0)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over real items (padding and the mask token excluded) per hidden state."""
        out: torch.Tensor = hidden @ self.items.weight[1 : self.num_items + 1].T
        return out


class SASRec:
    def __init__(self, config: SASRecConfig | None = None, name: str = "sasrec") -> None:
        self.name = name
        self.config = config or SASRecConfig()
        self.net: _Transformer | None = None
        self.sequences: torch.Tensor | None = None
        self.device = "cpu"

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        gen = seed_everything(ctx.seed)
        self.device = ctx.device
        # One extra step so the last input position still has a next item to predict.
        windows = user_sequences(train, cfg.max_len + 1)
        lengths = (windows > 0).sum(dim=1)
        windows, lengths = windows[lengths >= 2], lengths[lengths >= 2]
        require_pairs(lengths, self.name)
        self.sequences = user_sequences(train, cfg.max_len)
        self.net = net = _Transformer(train.num_items, cfg).to(ctx.device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

        def loss(rows: torch.Tensor, _: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
            batch = crop(windows[rows]).to(ctx.device)
            return self._loss(batch[:, :-1], batch[:, 1:], train.num_items, draws)

        return fit_sequences(self, net, optimizer, loss, lengths, cfg, ctx, validate, gen)

    def _loss(
        self, inputs: torch.Tensor, targets: torch.Tensor, num_items: int, gen: torch.Generator
    ) -> torch.Tensor:
        assert self.net is not None
        cfg = self.config
        hidden = self.net(inputs)
        # Only positions with a real input and a real next item are trained; padding never
        # reaches the catalogue-wide product, which dominates the cost.
        real = (targets > 0) & (inputs > 0)
        if cfg.loss == "bce":
            item_vecs = self.net.items.weight
            states, positives = hidden[real], targets[real]
            negatives = torch.randint(1, num_items + 1, positives.shape, generator=gen)
            pos = (states * item_vecs[positives]).sum(-1)
            neg = (states * item_vecs[negatives.to(targets.device)]).sum(-1)
            return (F.softplus(-pos) + F.softplus(neg)).mean()
        if cfg.loss in ("sampled-softmax", "gbce"):
            return self._sampled_loss(hidden, targets, real, num_items, gen)
        rows, cols = real.nonzero(as_tuple=True)
        logits = self.net.logits(hidden[rows, cols])
        if cfg.dense_window == 1:
            return F.cross_entropy(logits, targets[rows, cols] - 1)
        # Dense all-action: position t also predicts the items at t+2 .. t+window.
        log_probs = F.log_softmax(logits, dim=-1)
        picked = []
        for offset in range(min(cfg.dense_window, targets.shape[1])):
            ahead = cols + offset
            inside = ahead < targets.shape[1]
            item = targets[rows[inside], ahead[inside]]
            hit = item > 0
            picked.append(log_probs[inside.nonzero(as_tuple=True)[0][hit], item[hit] - 1])
        return -torch.cat(picked).mean()

    def _sampled_loss(
        self,
        hidden: torch.Tensor,
        targets: torch.Tensor,
        real: torch.Tensor,
        num_items: int,
        gen: torch.Generator,
    ) -> torch.Tensor:
        """Each real position's next item against `negatives` draws per sequence: softmax over
        them, or gSASRec's gBCE."""
        assert self.net is not None
        cfg = self.config
        pos, neg = sampled_scores(
            hidden, targets, real, self.net.items.weight, cfg.negatives, num_items, gen
        )
        if cfg.loss == "sampled-softmax":
            return sampled_softmax(pos, neg)
        alpha = cfg.negatives / max(num_items - 1, 1)
        beta = alpha * (cfg.gbce_t * (1 - 1 / alpha) + 1 / alpha)
        # -log(sigmoid(pos) ** beta) - sum(log(1 - sigmoid(neg))); masked draws add 0.
        return (beta * F.softplus(-pos) + F.softplus(neg).sum(-1)).mean()

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.sequences is not None
        check_users(users, len(self.sequences))
        net = self.net
        hidden = self._last_hidden(users)
        chunks = [net.logits(hidden[i : i + 512]).float().cpu() for i in range(0, len(hidden), 512)]
        if not chunks:
            return np.zeros((0, net.items.num_embeddings - 1), dtype=np.float32)
        return torch.cat(chunks).numpy()

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.sequences is not None
        check_users(users, len(self.sequences))
        check_candidates(users, items, self.net.items.num_embeddings - 1)
        real_items = self.net.items.weight[1:]
        hidden = self._last_hidden(users)
        chunks = [
            gathered_dot(hidden[i : i + 512], real_items, items[i : i + 512]).float().cpu()
            for i in range(0, len(hidden), 512)
        ]
        if not chunks:
            return np.zeros(items.shape, dtype=np.float32)
        return torch.cat(chunks).numpy()

    def update_histories(self, train: InteractionLog) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_catalogue(train, self.net.num_items, self.name)
        self.sequences = user_sequences(train, self.config.max_len)

    @property
    def history_window(self) -> int:
        return self.config.max_len

    @torch.no_grad()
    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array:
        """The next item's scores after each history, as for a user whose last items they are."""
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        num_items = self.net.items.num_embeddings - 1
        check_histories(histories, num_items)
        if not histories:
            return np.zeros((0, num_items), dtype=np.float32)
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        rows = crop(padded_histories(histories, self.config.max_len)).to(self.device)
        return self.net.logits(self.net.last_hidden(rows)).float().cpu().numpy()

    def _last_hidden(self, users: Int64Array) -> torch.Tensor:
        """The hidden state after each user's last item, (len(users), dim). Users go through
        the transformer in chunks of similar length, so a short history is not padded to the
        longest one in its chunk (most are short: Beauty's median is 6 items)."""
        assert self.net is not None and self.sequences is not None
        if self.net.training:  # eval() walks every module: not on each request
            self.net.eval()
        sequences = self.sequences[torch.from_numpy(np.asarray(users, dtype=np.int64))]
        order = torch.argsort((sequences > 0).sum(dim=1), stable=True)
        out = torch.empty(len(users), self.net.items.embedding_dim, device=self.device)
        for start in range(0, len(users), 512):
            rows = order[start : start + 512]
            out[rows.to(self.device)] = self.net.last_hidden(crop(sequences[rows]).to(self.device))
        return out

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None and self.sequences is not None
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        state["sequences"] = self.sequences
        num_items = self.net.items.num_embeddings - 1
        save_recommender(
            path, self.name, self.config.model_dump(), state, len(self.sequences), num_items
        )

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> SASRec:
        name = str(payload["name"])
        config_type = GSASRecConfig if name == "gsasrec" else SASRecConfig
        model = cls(config_type.model_validate(payload["config"]), name=name)
        state = dict(payload["state"])
        model.sequences = state.pop("sequences")
        net = _Transformer(int(payload["num_items"]), model.config)
        net.load_state_dict(state)
        model.net = net
        return model
