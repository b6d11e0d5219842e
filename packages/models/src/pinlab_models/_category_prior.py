"""Which category a caption names, so a generator prompted by text alone can condition on it.

The generator is trained on caption and category together (each dropped at random), but a user,
and `eval generator`, give it a caption alone. The prior closes that gap the way DALL-E 2's
prior maps a caption to what the decoder is conditioned on (Ramesh et al. 2022), here over
labels: a multinomial logistic regression of the category on the caption's MiniLM sentence
vector, fitted on the training captions. Sampling conditions on its category only where it is
at least `threshold` sure, and on the caption alone elsewhere (a prompt that names no shape).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention


class CategoryPrior:
    """Category probabilities of MiniLM sentence vectors: softmax(x W + b)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        self.weight = weight.detach().float().cpu()  # (384, K)
        self.bias = bias.detach().float().cpu()  # (K,)

    @classmethod
    def fit(
        cls, sentences: torch.Tensor, labels: torch.Tensor, num_categories: int, l2: float = 1e-5
    ) -> CategoryPrior:
        """The L2-penalised maximum-likelihood fit (convex, so one answer whatever the seed).

        `l2` weighs the squared weights against the mean cross-entropy. 1e-5 was chosen on the
        default world's validation captions (the share named right at the 0.5 threshold): 1e-3
        0.44, 1e-4 0.986, 1e-5 and 1e-6 1.0; the stronger of the two tied is kept.
        """
        x, y = sentences.detach().float().cpu(), labels.detach().long().cpu()
        weight = torch.zeros(x.shape[1], num_categories, requires_grad=True)
        bias = torch.zeros(num_categories, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias], max_iter=500, tolerance_grad=1e-6, line_search_fn="strong_wolfe"
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + l2 * weight.square().sum()
            torch.autograd.backward(loss)
            return loss

        with torch.enable_grad():  # callers may sit under no_grad
            optimizer.step(closure)  # type: ignore[no-untyped-call]
        return cls(weight, bias)

    def probabilities(self, sentences: torch.Tensor) -> torch.Tensor:
        """(N, K) probabilities of each category for (N, 384) sentence vectors."""
        logits = sentences.detach().float().cpu() @ self.weight + self.bias
        return torch.softmax(logits, dim=1)

    def infer(
        self, sentences: torch.Tensor, names: Sequence[str], threshold: float
    ) -> list[str | None]:
        """Each vector's most probable category name where its probability is at least
        `threshold`, else None (condition on the caption alone)."""
        best, index = self.probabilities(sentences).max(dim=1)
        return [
            names[int(i)] if float(p) >= threshold else None
            for p, i in zip(best, index, strict=True)
        ]

    def state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight, "bias": self.bias}

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> CategoryPrior:
        return cls(state["weight"], state["bias"])
