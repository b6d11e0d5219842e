"""An ensemble: registered recommenders fitted side by side, their scores blended per user."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinlab_data.contracts import Float32Array, Int64Array, InteractionLog
from pinlab_models._runtime import (
    RECOMMENDER_CHECKPOINT,
    Stopwatch,
    one_pass_report,
    require_fitted,
    save_checkpoint,
)
from pinlab_models.contracts import (
    EnsembleConfig,
    FitReport,
    PinlabModelError,
    Recommender,
    TrainContext,
    Validator,
)

BuildMember = Callable[[str, Mapping[str, Any] | None], Recommender]
"""Builds a registered recommender by name from its settings (the registry's builder)."""


def standardise(scores: Float32Array) -> Float32Array:
    """Each row to zero mean and unit variance, so members on different scales add up."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    result: Float32Array = centred / (centred.std(axis=1, keepdims=True) + 1e-8)
    return result


class Ensemble:
    name = "ensemble"

    def __init__(
        self, config: EnsembleConfig | None = None, *, build_member: BuildMember | None = None
    ) -> None:
        self.config = config or EnsembleConfig()
        self.members: list[Recommender] = []
        self._build_member = build_member

    def _weights(self) -> list[float]:
        n = len(self.config.members)
        return list(self.config.weights) if self.config.weights else [1.0 / n] * n

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        if self._build_member is None:
            raise PinlabModelError(
                "an ensemble builds its members by name; make it with "
                "pinlab_models.build_recommender('ensemble', ...)"
            )
        clock = Stopwatch()
        self.members = []
        for name in self.config.members:
            member = self._build_member(name, self.config.member_settings.get(name))
            member.fit(train, replace(ctx, run_dir=ctx.run_dir / name))
            self.members.append(member)
        return one_pass_report(self, ctx, validate, clock)

    def score(self, users: Int64Array) -> Float32Array:
        require_fitted(bool(self.members), self.name)
        parts = [
            weight * standardise(member.score(users))
            for weight, member in zip(self._weights(), self.members, strict=True)
        ]
        total: Float32Array = np.sum(parts, axis=0, dtype=np.float32)
        return total

    def save(self, path: Path) -> None:
        require_fitted(bool(self.members), self.name)
        payloads = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, member in enumerate(self.members):
                member.save(Path(tmp) / f"{i}.pt")
                payloads.append(torch.load(Path(tmp) / f"{i}.pt", weights_only=True))
        save_checkpoint(
            path,
            {
                "kind": RECOMMENDER_CHECKPOINT,
                "name": self.name,
                "config": self.config.model_dump(mode="json"),
                "members": payloads,
            },
        )

    @classmethod
    def of_fitted(cls, config: EnsembleConfig, members: Sequence[Recommender]) -> Ensemble:
        """The blend of members already fitted (in `config.members` order): a search over
        weights scores each trial without fitting the members again."""
        if len(members) != len(config.members):
            raise PinlabModelError(
                f"the ensemble has {len(config.members)} members, got {len(members)} fitted"
            )
        model = cls(config)
        model.members = list(members)
        return model

    @classmethod
    def from_checkpoint(
        cls, payload: dict[str, Any], load_member: Callable[[dict[str, Any]], Recommender]
    ) -> Ensemble:
        """`load_member` turns each member's checkpoint payload back into its model."""
        model = cls(EnsembleConfig.model_validate(payload["config"]))
        model.members = [load_member(p) for p in payload["members"]]
        return model
