"""Protocols for measuring image encoders: which classes train, which are measured, and how.

`unseen-classes` is the metric-learning protocol (as on CUB or SOP): encoders train on half the
classes and are measured on the other half. Settings are chosen on validation classes carved out
of the training classes (`validation_classes`), never on the measured ones.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import minimize

from pinlab_data import Float32Array, Int64Array, PinlabDataError, holdout_mask
from pinlab_eval.contracts import VisualProtocol

MIN_CLASSES_UNSEEN = 4
PROBE_L2 = 1e-3


def visual_protocol(labels: np.ndarray, pin_ids: Int64Array, seed: int) -> VisualProtocol:
    """Split classes in two when there are at least 4 of them, else images within each class."""
    classes = sorted(set(labels.tolist()))
    if len(classes) < 2:
        raise PinlabDataError(
            f"bench visual needs labelled images of at least 2 classes, found {len(classes)} "
            f"({', '.join(classes)}); load images with one folder per class or a label column"
        )
    if len(classes) >= MIN_CLASSES_UNSEEN:
        shuffled = np.random.default_rng(seed).permutation(classes).tolist()
        seen = set(shuffled[: len(classes) // 2])
        in_train = np.array([label in seen for label in labels.tolist()])
        return VisualProtocol(
            "unseen-classes",
            np.flatnonzero(in_train),
            np.flatnonzero(~in_train),
            sorted(seen),
            sorted(set(classes) - seen),
        )
    held_out = holdout_mask(pin_ids, 0.5, seed)
    return VisualProtocol(
        "held-out-images", np.flatnonzero(~held_out), np.flatnonzero(held_out), classes, classes
    )


def validation_classes(
    protocol: VisualProtocol, labels: np.ndarray, pin_ids: Int64Array, seed: int
) -> VisualProtocol:
    """The protocol applied again inside `protocol.train`: settings are chosen on its test part.

    Rows index the same pins table; nothing of `protocol.test` appears on either side.
    """
    inner = visual_protocol(labels[protocol.train], pin_ids[protocol.train], seed)
    return VisualProtocol(
        inner.name,
        protocol.train[inner.train],
        protocol.train[inner.test],
        inner.train_classes,
        inner.test_classes,
    )


def linear_probe(embeddings: Float32Array, labels: np.ndarray, fit: np.ndarray) -> float:
    """Accuracy of multinomial logistic regression on frozen embeddings.

    Fitted (L-BFGS, light L2 on the weights) on standardised rows where `fit` is True; scored
    on the others.
    """
    names, y = np.unique(labels, return_inverse=True)
    if not fit.any() or fit.all():
        raise PinlabDataError("the linear probe needs images on both sides of its split")
    x = np.asarray(embeddings, dtype=np.float64)
    mean, std = x[fit].mean(0), np.maximum(x[fit].std(0, ddof=1), 1e-6)
    x = (x - mean) / std
    x_fit, y_fit = x[fit], y[fit]
    dim, num_classes = x.shape[1], len(names)
    onehot = np.eye(num_classes)[y_fit]

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = theta[:-num_classes].reshape(dim, num_classes), theta[-num_classes:]
        logits = x_fit @ weight + bias
        logits -= logits.max(axis=1, keepdims=True)
        log_prob = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        error = (np.exp(log_prob) - onehot) / len(x_fit)
        loss = -(onehot * log_prob).sum() / len(x_fit) + PROBE_L2 * (weight**2).sum()
        grad = np.concatenate([(x_fit.T @ error + 2 * PROBE_L2 * weight).ravel(), error.sum(0)])
        return float(loss), grad

    # Converged to 1e-5 of the gradient: further digits do not move the accuracy.
    theta = minimize(
        loss_and_grad,
        np.zeros(dim * num_classes + num_classes),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 200, "gtol": 1e-5},
    ).x
    weight, bias = theta[:-num_classes].reshape(dim, num_classes), theta[-num_classes:]
    predicted = (x[~fit] @ weight + bias).argmax(1)
    return float((predicted == y[~fit]).mean())
