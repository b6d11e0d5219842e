"""LearnBPR: the hand-written SGD step is the gradient step of the BPR objective."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention

from pinlab_models import BPRConfig, MFConfig
from pinlab_models._recommenders import _Factors, _is_positive, _learn_bpr_step, _pair_keys


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


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_learn_bpr_step_is_sgd_on_the_bpr_objective(l2: float) -> None:
    torch.manual_seed(0)
    net = _Factors(num_users=5, num_items=7, dim=4, init_std=0.5)
    with torch.no_grad():
        net.bias.normal_()
    # Repeated users and items: their steps add up, as the gradient of a sum does.
    users = torch.tensor([0, 1, 1, 3, 4, 0])
    positives = torch.tensor([2, 2, 5, 0, 6, 1])
    negatives = torch.tensor([3, 4, 2, 6, 1, 1])
    weights = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0, 1.5])
    cfg = MFConfig(lr=0.1, l2=l2)

    reference = copy.deepcopy(net)
    objective = bpr_objective(reference, users, positives, negatives, weights, l2)
    torch.autograd.backward(objective)
    expected = {
        name: param.detach() - cfg.lr * param.grad
        for name, param in reference.named_parameters()
        if param.grad is not None
    }

    loss = _learn_bpr_step(net, users, positives, negatives, weights, cfg)

    with torch.no_grad():
        fit_only = bpr_objective(reference, users, positives, negatives, weights, 0.0)
    assert loss == pytest.approx(float(fit_only), rel=1e-5)
    for name, param in net.named_parameters():
        torch.testing.assert_close(param.detach(), expected[name], rtol=1e-5, atol=1e-6)


def test_is_positive_finds_exactly_the_training_pairs() -> None:
    users, items = torch.tensor([0, 0, 2, 1]), torch.tensor([3, 1, 0, 3])
    known = torch.unique(_pair_keys(users, items, num_items=4))
    asked_users = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    asked_items = torch.tensor([3, 2, 3, 0, 0, 3, 1])
    found = _is_positive(known, asked_users, asked_items, num_items=4)
    assert found.tolist() == [True, False, True, False, True, False, False]


def test_bpr_defaults_are_the_benchmarks_settings() -> None:
    cfg = BPRConfig()
    # Cornac's BPR in Microsoft Recommenders' MovieLens benchmark: k=200, lambda_reg=0.001.
    assert (cfg.loss, cfg.dim, cfg.l2) == ("bpr", 200, 1e-3)
    with pytest.raises(ValueError, match="loss"):
        BPRConfig.model_validate({"loss": "softmax"})
