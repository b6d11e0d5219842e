"""REINFORCE with top-K off-policy correction (Chen et al., "Top-K Off-Policy Correction for a
REINFORCE Recommender System", WSDM 2019), trained from another policy's logs.

The policy is a softmax over the catalogue: pi(a | s) proportional to
exp(user_tower(s) . W item_a + bias_a), with item_a a fixed item embedding (the fitted
recommender's item vector) and the user state from the logged context. It shows a slate by
drawing K items without replacement (Plackett-Luce), so its propensities are exact for the
slate sizes `plackett_luce_marginals` covers.

Per logged impression (s, a, r), the paper's corrected gradient is
  min(pi(a|s) / beta(a|s), cap) * lambda_K(s, a) * r * grad log pi(a|s),
  lambda_K(s, a) = K (1 - pi(a|s))^(K - 1),
the derivative of the chance 1 - (1 - pi)^K that a K-draw slate holds a, over the logger's
chance beta of showing it. Both factors are held constant (no gradient through them), and the
cap trades bias for variance, as in the paper.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pinlab_data.contracts import BanditFeedback, Float64Array, Int64Array
from pinlab_models._bandits import plackett_luce_choice, plackett_luce_marginals
from pinlab_models.contracts import PinlabModelError, ReinforceConfig, SlateChoice


class _PolicyNet(nn.Module):
    def __init__(self, context_dim: int, items: torch.Tensor, config: ReinforceConfig) -> None:
        super().__init__()
        self.user = nn.Sequential(
            nn.Linear(context_dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.dim)
        )
        self.item_map = nn.Linear(items.shape[1], config.dim, bias=False)
        self.item_bias = nn.Parameter(torch.zeros(len(items)))
        # The learned beta: a second head on the same (stopped) user state.
        self.beta_map = nn.Linear(items.shape[1], config.dim, bias=False)
        self.beta_bias = nn.Parameter(torch.zeros(len(items)))
        self.register_buffer("items", items)

    def state(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.user(x)
        return out

    def logits(self, state: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = state @ self.item_map(self._items()).T + self.item_bias
        return out

    def beta_logits(self, state: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = state.detach() @ self.beta_map(self._items()).T + self.beta_bias
        return out

    def _items(self) -> torch.Tensor:
        return self.get_buffer("items")


@dataclass
class ReinforcePolicy:
    """The trained softmax policy; shows Plackett-Luce slates of `slate_size`."""

    net: _PolicyNet
    slate_size: int
    name: str = "reinforce"
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def num_items(self) -> int:
        return int(self.net.item_bias.shape[0])

    @torch.no_grad()
    def probabilities(self, context: Float64Array) -> Float64Array:
        x = torch.as_tensor(np.asarray(context), dtype=torch.float32)
        if x.ndim != 2 or x.shape[1] != self.net.user[0].in_features:
            raise PinlabModelError(
                f"reinforce takes contexts of shape (users, {self.net.user[0].in_features}), "
                f"got {tuple(x.shape)}"
            )
        logits = self.net.logits(self.net.state(x)).double()
        return np.asarray(torch.softmax(logits, dim=1).numpy(), dtype=np.float64)

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        probs = self.probabilities(context)
        return plackett_luce_choice(probs, self.slate_size, rng, propensities)

    def marginals(self, context: Float64Array) -> Float64Array:
        return plackett_luce_marginals(self.probabilities(context), self.slate_size)

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None:
        return None  # trained offline from logs


def known_beta(feedback: BanditFeedback, k: int) -> Float64Array:
    """The logger's per-draw probability of each logged item: its marginals over the slate's
    positions summed (the chance the slate holds it) over K, from `logger_dist`; without it,
    the logged marginal at the item's own position."""
    if feedback.logger_dist is None:
        return np.asarray(feedback.pscore, dtype=np.float64)
    rows = np.arange(len(feedback))
    held = feedback.logger_dist[rows, feedback.action, :].sum(axis=1)
    return np.asarray(held / k, dtype=np.float64)


def train_reinforce(
    feedback: BanditFeedback,
    items: Float64Array,
    config: ReinforceConfig | None = None,
    *,
    seed: int = 0,
    slate_size: int | None = None,
) -> ReinforcePolicy:
    """Fit the corrected REINFORCE policy on `feedback` (contexts (n, d) and the item vectors
    `items` (n_actions, d_item)); the returned policy shows slates of `slate_size` (default the
    logs' slate size). Its `report` holds the loss per epoch and the weights' summary."""
    cfg = config or ReinforceConfig()
    items = np.asarray(items, dtype=np.float64)
    if items.ndim != 2 or len(items) != feedback.n_actions:
        raise PinlabModelError(
            f"items must be (n_actions={feedback.n_actions}, d), got {items.shape}"
        )
    if len(feedback) == 0:
        raise PinlabModelError("no logged rows to train REINFORCE on")
    k = cfg.top_k or feedback.len_list
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):  # seeded weights, the global stream untouched
        torch.manual_seed(seed)
        net = _PolicyNet(feedback.context_dim, torch.tensor(items, dtype=torch.float32), cfg)
    # Copies: loaded logs are read-only arrays, which torch will not wrap.
    x = torch.tensor(feedback.context, dtype=torch.float32)
    a = torch.tensor(feedback.action)
    r = torch.tensor(feedback.reward, dtype=torch.float32)
    beta_known = torch.as_tensor(known_beta(feedback, k), dtype=torch.float32)
    optimiser = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = torch.randperm(len(r), generator=gen)
        total = 0.0
        for start in range(0, len(r), cfg.batch_size):
            batch = order[start : start + cfg.batch_size]
            state = net.state(x[batch])
            log_pi = torch.log_softmax(net.logits(state), dim=1)
            log_pi_a = log_pi.gather(1, a[batch, None]).squeeze(1)
            pi_a = log_pi_a.exp().detach()
            loss = torch.zeros(())
            if cfg.beta == "learned":
                log_beta = torch.log_softmax(net.beta_logits(state), dim=1)
                beta_a = log_beta.gather(1, a[batch, None]).squeeze(1)
                loss = loss - beta_a.mean()  # the behaviour head's cross-entropy
                beta = beta_a.exp().detach()
            else:
                beta = beta_known[batch]
            weight = torch.clamp(pi_a / beta, max=cfg.weight_cap)
            top_k = k * (1 - pi_a) ** (k - 1)
            loss = loss - (weight * top_k * r[batch] * log_pi_a).mean()
            if cfg.entropy > 0:
                loss = loss - cfg.entropy * -(log_pi.exp() * log_pi).sum(dim=1).mean()
            optimiser.zero_grad()
            torch.autograd.backward(loss)
            optimiser.step()
            total += float(loss.detach()) * len(batch)
        losses.append(total / len(r))
    net.eval()
    with torch.no_grad():
        state = net.state(x)
        pi_a = torch.softmax(net.logits(state), dim=1).gather(1, a[:, None]).squeeze(1)
        beta = (
            torch.softmax(net.beta_logits(state), dim=1).gather(1, a[:, None]).squeeze(1)
            if cfg.beta == "learned"
            else beta_known
        )
        ratio = pi_a / beta
    report = {
        "rows": len(r),
        "top_k": k,
        "beta": cfg.beta,
        "loss_per_epoch": [round(v, 6) for v in losses],
        "mean_weight": float(torch.clamp(ratio, max=cfg.weight_cap).mean()),
        "capped_share": float((ratio > cfg.weight_cap).float().mean()),
    }
    return ReinforcePolicy(net=net, slate_size=slate_size or feedback.len_list, report=report)
