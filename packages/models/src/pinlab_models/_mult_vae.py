"""`mult-vae`: Mult-VAE (Liang, Krishnan, Hoffman and Jebara, "Variational Autoencoders for
Collaborative Filtering", WWW 2018).

Each user is their binary row of the training matrix. In training the row is L2-normalised,
dropped out, and encoded by an MLP (items -> `hidden_dim`, tanh -> 2 x `latent_dim`) into the
mean and log-variance of a Gaussian; a reparameterised sample is decoded by a second MLP
(`latent_dim` -> `hidden_dim`, tanh -> items) into logits. The loss is the multinomial
negative log-likelihood of the row (minus the log-softmax of the logits over the row's items,
summed) plus beta times the KL divergence to N(0, I), beta annealed linearly from 0 and capped
at `anneal_cap`, plus `l2` times the squared weight matrices (the paper's code). Adam steps
over shuffled batches of users; `run_epochs` validates, logs, stops early and keeps the best
epoch. Scoring encodes the user's training row to its mean (no dropout, no sampling) and
decodes it: the scores read the history, so the model keeps the training matrix, saves it, and
scores a visitor's history the same way. The decoder's last layer is a hidden vector per user
against a weight vector (and bias) per item, so `score_candidates` touches only the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._linear import interaction_matrix
from pinlab_models._parallel import Steps
from pinlab_models._runtime import (
    check_candidates,
    check_catalogue,
    check_histories,
    check_users,
    gathered_dot,
    require_fitted,
    run_epochs,
    save_recommender,
    seed_everything,
)
from pinlab_models.contracts import (
    FitReport,
    MultVaeConfig,
    PinlabModelError,
    TrainContext,
    Validator,
)

SCORE_CHUNK = 1024
"""Users scored at once: bounds the dense rows and logits held in memory."""


class _VAE(nn.Module):
    def __init__(self, num_items: int, hidden_dim: int, latent_dim: int, dropout: float) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.dropout = nn.Dropout(dropout)
        self.encoder = nn.Linear(num_items, hidden_dim)
        self.to_gaussian = nn.Linear(hidden_dim, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, hidden_dim)
        self.to_items = nn.Linear(hidden_dim, num_items)
        for layer in (self.encoder, self.to_gaussian, self.decoder, self.to_items):
            # The paper's code: Xavier-uniform weights, biases drawn from N(0, 0.001^2).
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=1e-3)

    def weight_matrices(self) -> list[torch.Tensor]:
        return [self.encoder.weight, self.to_gaussian.weight, self.decoder.weight,
                self.to_items.weight]  # fmt: skip

    def encode(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of each row's latent (dropout only in training mode)."""
        h = self.dropout(F.normalize(rows, dim=1))
        gaussian = self.to_gaussian(torch.tanh(self.encoder(h)))
        return gaussian[:, : self.latent_dim], gaussian[:, self.latent_dim :]

    def hidden(self, z: torch.Tensor) -> torch.Tensor:
        """The decoder's tanh layer: a user's vector against `to_items`' item vectors."""
        return torch.tanh(self.decoder(z))

    def user_vectors(self, rows: torch.Tensor) -> torch.Tensor:
        """The decoder's hidden layer at the latent mean: what scoring reads."""
        mu, _ = self.encode(rows)
        return self.hidden(mu)


class MultVae:
    """A user's scores are the decoder's logits at the mean of their training row's latent."""

    name = "mult-vae"
    history_window = None  # a history is a set of items here: all of it counts

    def __init__(self, config: MultVaeConfig | None = None) -> None:
        self.config = config or MultVaeConfig()
        self.net: _VAE | None = None
        self.history: sp.csr_matrix | None = None
        self.device = "cpu"
        self.updates = 0

    def _build(self, num_items: int) -> _VAE:
        cfg = self.config
        return _VAE(num_items, cfg.hidden_dim, cfg.latent_dim, cfg.dropout)

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        generator = seed_everything(ctx.seed)
        self.device = ctx.device
        self.history = interaction_matrix(train).astype(np.float32)
        self.net = net = self._build(train.num_items).to(ctx.device)
        self.updates = 0
        train_epoch, steps = self._epochs(generator)
        return run_epochs(
            self,
            net,
            train_epoch,
            epochs=cfg.epochs,
            patience=cfg.patience,
            ctx=ctx,
            validate=validate,
            steps=steps,
        )

    def beta(self) -> float:
        """The KL weight of the next update: linear from 0, capped at `anneal_cap`."""
        cfg = self.config
        return min(cfg.anneal_cap, self.updates / cfg.total_anneal_steps)

    def _epochs(self, generator: torch.Generator) -> tuple[Callable[[], float], Steps]:
        """One pass over the shuffled users who have training items, a step per batch."""
        net, history = self._fitted()
        cfg = self.config
        active = torch.from_numpy(np.flatnonzero(np.diff(history.indptr) > 0))

        def loss(users: torch.Tensor, _: torch.Tensor, __: torch.Generator) -> torch.Tensor:
            rows = self._rows(history[users.numpy()])
            mu, logvar = net.encode(rows)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
            logits = net.to_items(net.hidden(z))
            nll = -(F.log_softmax(logits, dim=1) * rows).sum(dim=1).mean()
            kl = (0.5 * (logvar.exp() + mu.square() - 1.0 - logvar)).sum(dim=1).mean()
            loss = nll + self.beta() * kl
            if cfg.l2 > 0:
                loss = loss + cfg.l2 * sum(w.square().sum() for w in net.weight_matrices())
            return loss

        steps = Steps(net, torch.optim.Adam(net.parameters(), lr=cfg.lr), generator, loss)

        def train_epoch() -> float:
            net.train()
            order = active[torch.randperm(len(active), generator=generator)]
            total = 0.0
            for start in range(0, len(order), cfg.batch_size):
                batch = order[start : start + cfg.batch_size]
                self.updates = steps.count  # the KL weight anneals with the steps taken
                total += steps(batch) * len(batch)
            self.updates = steps.count
            return total / max(len(order), 1)

        return train_epoch, steps

    def _rows(self, matrix: sp.csr_matrix) -> torch.Tensor:
        return torch.from_numpy(matrix.toarray()).to(self.device)

    def _fitted(self) -> tuple[_VAE, sp.csr_matrix]:
        require_fitted(self.net is not None and self.history is not None, self.name)
        assert self.net is not None and self.history is not None
        return self.net, self.history

    @torch.no_grad()
    def _user_vectors(self, matrix: sp.csr_matrix) -> torch.Tensor:
        """The decoder's hidden layer for each row, at the latent mean, in chunks."""
        net, _ = self._fitted()
        if net.training:  # eval() walks the module tree: once, not on every request
            net.eval()
        parts = [
            net.user_vectors(self._rows(matrix[start : start + SCORE_CHUNK]))
            for start in range(0, matrix.shape[0], SCORE_CHUNK)
        ]
        if not parts:
            return torch.zeros((0, self.config.hidden_dim), device=self.device)
        return torch.cat(parts)

    @torch.no_grad()
    def _logits(self, matrix: sp.csr_matrix) -> Float32Array:
        net, _ = self._fitted()
        scores: torch.Tensor = net.to_items(self._user_vectors(matrix))
        return scores.float().cpu().numpy()

    def score(self, users: Int64Array) -> Float32Array:
        _, history = self._fitted()
        check_users(users, history.shape[0])
        return self._logits(history[np.asarray(users, dtype=np.int64)])

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        """Scores of each user's own candidates (one row per user): what sampled evaluation
        needs, at the cost of the candidates rather than of the catalogue."""
        net, history = self._fitted()
        check_users(users, history.shape[0])
        check_candidates(users, items, history.shape[1])
        vectors = self._user_vectors(history[np.asarray(users, dtype=np.int64)])
        index = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(self.device)
        scores = gathered_dot(vectors, net.to_items.weight, items) + net.to_items.bias[index]
        return scores.float().cpu().numpy()

    def update_histories(self, train: InteractionLog) -> None:
        _, history = self._fitted()
        check_catalogue(train, history.shape[1], self.name)
        self.history = interaction_matrix(train).astype(np.float32)

    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array:
        """A visitor's binary row (their history's items) encoded and decoded like a user's."""
        _, history = self._fitted()
        num_items = history.shape[1]
        check_histories(histories, num_items)
        rows = np.zeros((len(histories), num_items), dtype=np.float32)
        for row, items in enumerate(histories):
            rows[row, items] = 1.0
        return self._logits(sp.csr_matrix(rows))

    def save(self, path: Path) -> None:
        net, history = self._fitted()
        state = {key: value.cpu() for key, value in net.state_dict().items()}
        state["indptr"] = torch.from_numpy(history.indptr.astype(np.int64))
        state["indices"] = torch.from_numpy(history.indices.astype(np.int64))
        num_users, num_items = history.shape
        save_recommender(path, self.name, self.config.model_dump(), state, num_users, num_items)

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> MultVae:
        model = cls(MultVaeConfig.model_validate(payload["config"]))
        state = dict(payload["state"])
        indptr, indices = state.pop("indptr").numpy(), state.pop("indices").numpy()
        shape = (int(payload["num_users"]), int(payload["num_items"]))
        ones = np.ones(len(indices), dtype=np.float32)
        model.history = sp.csr_matrix((ones, indices, indptr), shape=shape)
        net = model._build(shape[1])
        net.load_state_dict(state)
        model.net = net
        return model
