"""LearnBPR: the compiled loop is sequential SGD on the BPR objective, sample by sample."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from pinlab_models import BPRConfig
from pinlab_models._learn_bpr import learn_bpr_epoch
from pinlab_models._recommenders import _Factors


def bpr_objective(
    net: _Factors,
    users: torch.Tensor,
    positives: torch.Tensor,
    negatives: torch.Tensor,
    weights: torch.Tensor,
    l2: float,
) -> torch.Tensor:
    """Sum over samples of w * (-log sigmoid(x_ui - x_uj) + l2 / 2 * |rows the sample uses|^2)."""
    u = net.users.weight[users]
    vi, vj = net.items.weight[positives], net.items.weight[negatives]
    bi, bj = net.bias[positives], net.bias[negatives]
    fit = -F.logsigmoid((u * (vi - vj)).sum(dim=1) + bi - bj)
    norms = u.square().sum(1) + vi.square().sum(1) + vj.square().sum(1) + bi**2 + bj**2
    return (weights * (fit + l2 / 2 * norms)).sum()


def _arrays(net: _Factors) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return (
        net.users.weight.detach().numpy(),
        net.items.weight.detach().numpy(),
        net.bias.detach().numpy(),
    )


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_learn_bpr_is_one_sgd_step_per_sample_in_order(l2: float) -> None:
    torch.manual_seed(0)
    net = _Factors(num_users=5, num_items=7, dim=4, init_std=0.5)
    with torch.no_grad():
        net.bias.normal_()
    # Repeated users and items: each sample sees the rows its predecessors updated.
    users = np.array([0, 1, 1, 3, 4, 0])
    positives = np.array([2, 2, 5, 0, 6, 1])
    negatives = np.array([3, 4, 3, 6, 1, 4])  # none a positive of its user
    weights = np.array([1.0, 0.5, 2.0, 1.0, 0.0, 1.5], dtype=np.float32)
    known = np.unique(users * 7 + positives)
    lr = 0.1

    reference = copy.deepcopy(net)
    expected_loss = 0.0
    for s in range(len(users)):
        u, i, j = (torch.tensor([int(a[s])]) for a in (users, positives, negatives))
        weight = torch.tensor([float(weights[s])])
        reference.zero_grad()
        objective = bpr_objective(reference, u, i, j, weight, l2)
        with torch.no_grad():
            expected_loss += float(bpr_objective(reference, u, i, j, weight, 0.0))
        torch.autograd.backward(objective)
        with torch.no_grad():
            for param in reference.parameters():
                if param.grad is not None:
                    param.sub_(lr * param.grad)

    loss = learn_bpr_epoch(users, positives, negatives, weights, known, *_arrays(net), lr, l2)

    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for (name, param), (_, want) in zip(
        net.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(param.detach(), want.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_learn_bpr_skips_a_negative_that_is_a_positive_of_its_user() -> None:
    torch.manual_seed(0)
    net = _Factors(num_users=3, num_items=4, dim=2, init_std=0.5)
    before = [a.copy() for a in _arrays(net)]
    users, positives = np.array([0, 2]), np.array([3, 0])
    known = np.unique(users * 4 + positives)
    # Each negative drawn is its own user's positive (user 0 draws 3, user 2 draws 0).
    loss = learn_bpr_epoch(
        users, positives, np.array([3, 0]), np.ones(2, np.float32), known, *_arrays(net), 0.5, 0.1
    )
    assert loss == 0.0
    for now, then in zip(_arrays(net), before, strict=True):
        np.testing.assert_array_equal(now, then)


def test_learn_bpr_refuses_arrays_it_cannot_update_in_place() -> None:
    net = _Factors(num_users=2, num_items=2, dim=2)
    users: Any = _arrays(net)[0].astype(np.float64)  # what the loop cannot update in place
    items = _arrays(net)[1]
    one = np.array([0])
    with pytest.raises(ValueError, match="float32"):
        learn_bpr_epoch(one, one, one + 1, np.ones(1, np.float32), one, users, items,
                        _arrays(net)[2], 0.1, 0.0)  # fmt: skip


def test_bpr_defaults_are_the_benchmarks_settings() -> None:
    cfg = BPRConfig()
    # Cornac's BPR in Microsoft Recommenders' benchmark: k=200, lr 0.01, lambda_reg=0.001.
    assert (cfg.loss, cfg.dim, cfg.lr, cfg.l2, cfg.epochs) == ("bpr", 200, 0.01, 1e-3, 200)
    with pytest.raises(ValueError, match="loss"):
        BPRConfig.model_validate({"loss": "softmax"})
