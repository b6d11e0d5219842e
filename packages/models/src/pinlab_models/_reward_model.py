"""A click model fitted on logged bandit feedback: the reward model of the direct method and
the doubly robust estimators, which must learn from the logs alone (never the true appeal).

logit q(x, a, p) = x' M y_a + w_a . x + b_a + u . x + c_p

with x the logged context, y_a a fixed item vector (the fitted recommender's): the bilinear
term shares what is learned across items through their vectors, w_a and b_a let each item
depart from it, c_p is the position's offset (c_0 = 0). L2-penalised logistic regression,
solved exactly by L-BFGS (scipy). Cross-fitted over rounds: each fold's predictions come from
a model fitted on the other folds, so a row's own reward never enters its prediction.
"""

from __future__ import annotations

import numpy as np
from scipy import optimize, sparse

from pinlab_data.contracts import BanditFeedback, Float64Array
from pinlab_models.contracts import PinlabModelError


class _Logistic:
    def __init__(self, d: int, e: int, n_actions: int, k: int) -> None:
        self.shapes = {"m": (d, e), "w": (n_actions, d), "b": (n_actions,), "u": (d,), "c": (k,)}
        self.sizes = {name: int(np.prod(s)) for name, s in self.shapes.items()}

    def unpack(self, theta: Float64Array) -> dict[str, Float64Array]:
        out, at = {}, 0
        for name, shape in self.shapes.items():
            out[name] = theta[at : at + self.sizes[name]].reshape(shape)
            at += self.sizes[name]
        out["c"] = out["c"].copy()
        out["c"][0] = 0.0  # position 0 is the reference
        return out

    def size(self) -> int:
        return sum(self.sizes.values())


def _fit(
    x: Float64Array,
    action: np.ndarray,
    position: np.ndarray,
    reward: Float64Array,
    items: Float64Array,
    k: int,
    l2: float,
) -> dict[str, Float64Array]:
    n_actions = len(items)
    model = _Logistic(x.shape[1], items.shape[1], n_actions, k)
    ya = items[action]
    onehot = sparse.csr_matrix(
        (np.ones(len(action)), (action, np.arange(len(action)))), shape=(n_actions, len(action))
    )

    def loss(theta: Float64Array) -> tuple[float, Float64Array]:
        p = model.unpack(theta)
        z = (
            ((x @ p["m"]) * ya).sum(axis=1)
            + (p["w"][action] * x).sum(axis=1)
            + p["b"][action]
            + x @ p["u"]
            + p["c"][position]
        )
        # log(1 + e^z) - r z, stable for either sign of z
        nll = float(np.sum(np.logaddexp(0.0, z) - reward * z))
        g = 1.0 / (1.0 + np.exp(-z)) - reward
        grads = {
            "m": (x * g[:, None]).T @ ya,
            "w": np.asarray(onehot @ (x * g[:, None])),
            "b": np.asarray(onehot @ g).ravel(),
            "u": x.T @ g,
            "c": np.bincount(position, weights=g, minlength=k),
        }
        grads["c"][0] = 0.0
        penalty = 0.0
        for name in ("m", "w", "b", "u"):
            penalty += 0.5 * l2 * float(np.sum(p[name] ** 2))
            grads[name] = grads[name] + l2 * p[name]
        flat = np.concatenate([grads[name].ravel() for name in model.shapes])
        return nll + penalty, flat

    result = optimize.minimize(
        loss, np.zeros(model.size()), jac=True, method="L-BFGS-B", options={"maxiter": 500}
    )
    return model.unpack(result.x)


def _predict(p: dict[str, Float64Array], x: Float64Array, items: Float64Array) -> Float64Array:
    """(n, n_actions, k) click probabilities for every item at every position."""
    base = x @ p["m"] @ items.T + x @ p["w"].T + p["b"][None, :] + (x @ p["u"])[:, None]
    out = np.empty((*base.shape, len(p["c"])))
    for position, offset in enumerate(p["c"]):
        out[:, :, position] = 1.0 / (1.0 + np.exp(-(base + offset)))
    return out


def fit_reward_model(
    feedback: BanditFeedback,
    items: Float64Array,
    *,
    folds: int = 2,
    l2: float = 1.0,
    seed: int = 0,
) -> Float64Array:
    """Cross-fitted predictions (rows, n_actions, len_list) of the click probability of every
    item at every position for each logged row, from the logs' contexts, items and rewards."""
    items = np.asarray(items, dtype=np.float64)
    if items.ndim != 2 or len(items) != feedback.n_actions:
        raise PinlabModelError(
            f"items must be (n_actions={feedback.n_actions}, d), got {items.shape}"
        )
    if len(feedback) and (feedback.reward.min() < 0 or feedback.reward.max() > 1):
        raise PinlabModelError(
            "the reward model is a logistic regression of click rewards in [0, 1]; these logs "
            f"hold rewards from {feedback.reward.min()} to {feedback.reward.max()}"
        )
    if folds < 2:
        raise PinlabModelError(f"cross-fitting needs at least 2 folds, got {folds}")
    rounds = feedback.round_index()
    n_rounds = int(rounds.max()) + 1 if len(rounds) else 0
    if n_rounds < folds:
        raise PinlabModelError(f"{n_rounds} rounds cannot be split into {folds} folds")
    fold_of_round = np.random.default_rng(seed).permutation(n_rounds) % folds
    fold = fold_of_round[rounds]
    out = np.empty((len(feedback), feedback.n_actions, feedback.len_list))
    # A round's rows share its context: predict once per round, then copy to its rows.
    first_row = np.unique(rounds, return_index=True)[1]
    for f in range(folds):
        train = fold != f
        params = _fit(
            feedback.context[train],
            feedback.action[train],
            feedback.position[train],
            feedback.reward[train],
            items,
            feedback.len_list,
            l2,
        )
        held_rounds = np.flatnonzero(fold_of_round == f)
        per_round = _predict(params, feedback.context[first_row[held_rounds]], items)
        out[fold == f] = per_round[np.searchsorted(held_rounds, rounds[fold == f])]
    return out
