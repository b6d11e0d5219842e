"""Implicit ALS (Hu, Koren and Volinsky, 2008) in PyTorch.

Every observed pair has confidence `1 + alpha` and target 1; every other pair confidence 1
and target 0. Each half-step solves all users' (then all items') ridge problems at once:
either a few conjugate-gradient steps warm-started from the current factors (Takacs et
al., 2011; what the `implicit` library does) or an exact batched solve.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._linear import interaction_matrix
from pinlab_models._runtime import (
    check_candidates,
    check_users,
    gathered_dot,
    require_fitted,
    run_epochs,
    save_recommender,
    seed_everything,
)
from pinlab_models.contracts import (
    FitReport,
    IALSConfig,
    PinlabModelError,
    TrainContext,
    Validator,
)

_EXACT_CHUNK = 4096
"""Observed pairs whose (dim x dim) outer products are built at once in an exact solve."""


class _Factors(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.users = nn.Parameter(torch.zeros(num_users, dim), requires_grad=False)
        self.items = nn.Parameter(torch.zeros(num_items, dim), requires_grad=False)


def _csr(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> torch.Tensor:
    """The binary pattern of observed pairs as a sparse CSR tensor."""
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=shape)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)),
            torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data),
            size=shape,
            check_invariants=True,
        )


def _solve(
    pattern: torch.Tensor, fixed: torch.Tensor, current: torch.Tensor, cfg: IALSConfig
) -> torch.Tensor:
    """New factors for the rows of `pattern` (observed pairs), given the other side's `fixed`.

    Solves (F'F + l2 I + alpha F_u'F_u) x_u = (1 + alpha) sum of F over u's pairs, for all u.
    """
    n, dim = current.shape
    gram = fixed.T @ fixed + cfg.l2 * torch.eye(dim, dtype=fixed.dtype, device=fixed.device)
    rhs = (1.0 + cfg.alpha) * (pattern @ fixed)
    if cfg.cg_steps == 0:
        counts = pattern.crow_indices().diff()
        rows = torch.repeat_interleave(torch.arange(n), counts)
        cols = pattern.col_indices()
        systems = gram.expand(n, dim, dim).clone()
        for start in range(0, len(rows), _EXACT_CHUNK):
            part = slice(start, start + _EXACT_CHUNK)
            gathered = fixed[cols[part]]
            outer = gathered[:, :, None] * gathered[:, None, :]
            systems.index_add_(0, rows[part], cfg.alpha * outer)
        solved: torch.Tensor = torch.linalg.solve(systems, rhs)
        return solved

    def apply(x: torch.Tensor) -> torch.Tensor:
        # alpha * F_u'F_u x_u for every u at once: x F' only where pairs were observed.
        observed = torch.sparse.sampled_addmm(pattern, x, fixed.T, beta=0.0)
        result: torch.Tensor = x @ gram + cfg.alpha * (observed @ fixed)
        return result

    x = current.clone()
    residual = rhs - apply(x)
    direction = residual.clone()
    norm = (residual * residual).sum(dim=1, keepdim=True)
    for _ in range(cfg.cg_steps):
        step_dir = apply(direction)
        step = norm / (direction * step_dir).sum(dim=1, keepdim=True).clamp_min(1e-20)
        x += step * direction
        residual -= step * step_dir
        new_norm = (residual * residual).sum(dim=1, keepdim=True)
        direction = residual + new_norm / norm.clamp_min(1e-20) * direction
        norm = new_norm
    return x


class ImplicitALS:
    """User and item factors fitted by alternating weighted least squares."""

    name = "ials"

    def __init__(self, config: IALSConfig | None = None) -> None:
        self.config = config or IALSConfig()
        self.net: _Factors | None = None

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if len(train) == 0:
            raise PinlabModelError("no training interactions; check the dataset and the split")
        cfg = self.config
        gen = seed_everything(ctx.seed)
        pairs = interaction_matrix(train).tocoo()
        by_user = _csr(pairs.row, pairs.col, (train.num_users, train.num_items))
        by_item = _csr(pairs.col, pairs.row, (train.num_items, train.num_users))
        self.net = net = _Factors(train.num_users, train.num_items, cfg.dim)
        # Small random starts: CG needs a non-zero item side to begin with.
        net.items.data.normal_(0.0, 0.01, generator=gen)
        net.users.data.normal_(0.0, 0.01, generator=gen)

        def train_epoch() -> float:
            net.users.data = _solve(by_user, net.items.data, net.users.data, cfg)
            net.items.data = _solve(by_item, net.users.data, net.items.data, cfg)
            return 0.0  # the weighted loss is never formed; CG works on the normal equations

        return run_epochs(
            self, net, train_epoch, epochs=cfg.iterations, patience=cfg.patience, ctx=ctx,
            validate=validate,
        )  # fmt: skip

    @torch.no_grad()
    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_users(users, self.net.users.shape[0])
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        return (self.net.users[u] @ self.net.items.T).numpy()

    @torch.no_grad()
    def score_candidates(self, users: Int64Array, items: Int64Array) -> Float32Array:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        check_users(users, self.net.users.shape[0])
        check_candidates(users, items, self.net.items.shape[0])
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        return gathered_dot(self.net.users[u], self.net.items, items).numpy()

    def save(self, path: Path) -> None:
        require_fitted(self.net is not None, self.name)
        assert self.net is not None
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        num_users, num_items = self.net.users.shape[0], self.net.items.shape[0]
        save_recommender(path, self.name, self.config.model_dump(), state, num_users, num_items)

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any]) -> ImplicitALS:
        model = cls(IALSConfig.model_validate(payload["config"]))
        net = _Factors(int(payload["num_users"]), int(payload["num_items"]), model.config.dim)
        net.load_state_dict(payload["state"])
        model.net = net
        return model
