"""The rule "nothing reads the test split before the refit", checked by a spy recommender.

The spy is registered only here. It records every interaction log it is fitted on, and every
validation value it is given back. It scores each user's TEST targets first (the test tells it
what they are), so a validation computed on the test targets would hand it a different value
than the one computed on the validation targets. Under every protocol, the bench must show it
no test target before its final refit and validate it only on the validation split.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from pydantic import BaseModel, ConfigDict, PositiveInt

from pinlab_data import InteractionLog, interaction_log, load_dataset, write_movielens_like
from pinlab_data.contracts import Float32Array, Int64Array
from pinlab_eval import ProtocolSplit, apply_protocol, evaluate_holdout, protocol_spec
from pinlab_models import FitReport, FloatRange, RecommenderSpec, TrainContext, Validator
from pinlab_models import registry as model_registry
from pinlab_tasks.benchmarks import bench_recsys


class SpyConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    epochs: PositiveInt = 2
    knob: float = 0.5


@dataclass
class Fit:
    seed: int
    pairs: set[tuple[int, int]]
    validation_values: list[float] = field(default_factory=list)


FITS: list[Fit] = []
TEST_TARGETS: dict[int, sp.csr_matrix] = {}
"""Per training seed, the users x items matrix of that repetition's test targets."""


class Spy:
    """Test targets first, then training popularity; validates after every epoch."""

    name = "spy"

    def __init__(self, config: SpyConfig) -> None:
        self.config = config
        self.counts: Float32Array | None = None
        self.seed = 0

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport:
        record = Fit(ctx.seed, _pairs(train))
        FITS.append(record)
        self.seed = ctx.seed
        self.counts = np.bincount(train.items, minlength=train.num_items).astype(np.float32)
        if validate is not None:
            record.validation_values += [validate(self) for _ in range(self.config.epochs)]
        values = record.validation_values
        return FitReport(
            model=self.name,
            epochs=self.config.epochs,
            best_epoch=int(np.argmax(values)) + 1 if values else self.config.epochs,
            best_valid=max(values) if values else None,
            seconds=0.0,
        )

    def score(self, users: Int64Array) -> Float32Array:
        assert self.counts is not None
        targets = TEST_TARGETS[self.seed][users].toarray().astype(np.float32)
        scores: Float32Array = targets * 1e6 + self.counts
        return scores

    def save(self, path: Path) -> None:
        raise NotImplementedError("the bench never saves")


@pytest.fixture
def spy() -> Iterator[None]:
    spec = RecommenderSpec(
        name="spy",
        summary="records what it sees (tests only)",
        config_type=SpyConfig,
        build=Spy,
        from_checkpoint=lambda payload: Spy(SpyConfig()),
        search_space={"knob": FloatRange(low=0.01, high=1.0)},
        epoch_field="epochs",
    )
    FITS.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(model_registry._REGISTRY, "spy", spec)
        yield
    FITS.clear()
    TEST_TARGETS.clear()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pinlab_data import load_movielens

    root = tmp_path_factory.mktemp("leak")
    source = write_movielens_like(root / "ml-like", rows=4000, seed=3)
    load_movielens(source, root / "ds")
    return root / "ds"


def _pairs(log: InteractionLog) -> set[tuple[int, int]]:
    return set(zip(log.users.tolist(), log.items.tolist(), strict=True))


PROTOCOLS: list[tuple[str, dict[str, Any]]] = [
    ("stratified", {}),
    ("stratified", {"stratify_by": "user"}),
    ("leave-last-out", {}),
    ("leave-last-out", {"negatives": 20}),
    ("temporal", {}),
    ("cold-start", {}),
]


def _targets(log: InteractionLog) -> sp.csr_matrix:
    ones = np.ones(len(log), dtype=np.float32)
    return sp.csr_matrix((ones, (log.users, log.items)), shape=(log.num_users, log.num_items))


def _oracle_values(split: ProtocolSplit, seed: int) -> tuple[float, float]:
    """What the spy fitted on the validation training part scores on valid and on test."""
    spy = Spy(SpyConfig())
    spy.fit(split.valid.train, TrainContext(run_dir=Path("unused"), seed=seed))
    FITS.pop()
    valid = evaluate_holdout(spy, split.valid, ks=(10,)).means()["ndcg@10"]
    test = evaluate_holdout(spy, split.test, ks=(10,)).means()["ndcg@10"]
    return valid, test


@pytest.mark.parametrize(("name", "settings"), PROTOCOLS)
def test_no_test_target_reaches_a_model_before_its_refit(
    spy: None, dataset: Path, tmp_path: Path, name: str, settings: dict[str, Any]
) -> None:
    protocol = protocol_spec(name, settings)
    log = interaction_log(load_dataset(dataset))
    splits = {
        seed: apply_protocol(log, protocol.model_copy(update={"seed": protocol.seed + seed}))
        for seed in (0, 1)
    }
    TEST_TARGETS.update({seed: _targets(s.test.target) for seed, s in splits.items()})
    bench_recsys(dataset, protocol, ["spy"], tmp_path / "run", seeds=2, trials=3, progress=False)
    for seed, split in splits.items():
        *tuning, refit = [f for f in FITS if f.seed == seed]
        assert len(tuning) == 3, "one fit per trial, then the refit"
        assert refit.pairs == _pairs(split.test.train)
        hidden = _pairs(split.test.target) - _pairs(split.test.train)
        assert hidden, "the protocol holds something out"
        on_valid, on_test = _oracle_values(split, seed)
        assert on_test > on_valid, "the spy can tell which targets it is validated on"
        for fit in tuning:
            assert not fit.pairs & hidden, f"{name}: a test target reached a tuning fit"
            assert fit.validation_values == pytest.approx([on_valid] * 2), (
                f"{name}: validated on something other than the validation targets"
            )


def test_a_blend_fits_its_members_once_for_its_weight_search_and_never_on_test(
    spy: None, dataset: Path, tmp_path: Path
) -> None:
    from pinlab_tasks.recsys import tune_and_refit

    split = apply_protocol(interaction_log(load_dataset(dataset)), protocol_spec("stratified"))
    TEST_TARGETS[0] = _targets(split.test.target)
    blend = {"members": ("spy", "popularity"), "weights": None}
    ctx = TrainContext(run_dir=tmp_path / "run", seed=0, progress=False)
    _, record = tune_and_refit("ensemble", split, ctx, overrides=blend, trials=3)
    assert len(record["search"]["trials"]) == 3
    # Three trials of the spy's own search, one fit for all three weight trials, the refit.
    *tuning, refit = FITS
    assert len(tuning) == 4
    assert refit.pairs == _pairs(split.test.train)
    hidden = _pairs(split.test.target) - _pairs(split.test.train)
    assert all(not fit.pairs & hidden for fit in tuning)
    assert all(fit.pairs == _pairs(split.valid.train) for fit in tuning)


UPDATES: list[tuple[int, set[tuple[int, int]]]] = []
"""(id of the spy, pairs) for every `update_histories` call."""


class HistorySpy(Spy):
    """A spy whose per-user state could be swapped: `bench recsys --no-refit` keeps it."""

    def update_histories(self, train: InteractionLog) -> None:
        UPDATES.append((id(self), _pairs(train)))


def test_no_refit_measures_the_validation_fit_given_the_test_histories(
    spy: None, dataset: Path, tmp_path: Path
) -> None:
    spec = model_registry._REGISTRY["spy"]
    protocol = protocol_spec("leave-last-out")
    split = apply_protocol(interaction_log(load_dataset(dataset)), protocol)
    TEST_TARGETS[0] = _targets(split.test.target)
    built: list[Spy] = []

    def build(config: SpyConfig) -> Spy:
        built.append(HistorySpy(config))
        return built[-1]

    UPDATES.clear()
    with pytest.MonkeyPatch.context() as patch:
        history_spy = replace(spec, name="history-spy", build=build)
        patch.setitem(model_registry._REGISTRY, "history-spy", history_spy)
        result = bench_recsys(
            dataset, protocol, ["history-spy", "spy"], tmp_path / "run", trials=3,
            progress=False, refit=False,
        )  # fmt: skip
    rows = {row["model"]: row for row in result["results"]}
    assert result["refit"] is False
    assert rows["history-spy"]["refitted"] is False and rows["spy"]["refitted"] is True
    history_fits, spy_fits = FITS[:3], FITS[3:]
    # Three trials, no refit: every fit saw the validation's training part only.
    assert all(fit.pairs == _pairs(split.valid.train) for fit in history_fits)
    # Equal validation values: the first trial is the one kept, and it got the test's histories.
    trials = [spy for spy in built if spy.counts is not None]
    assert len(trials) == 3
    assert [(id(trials[0]), _pairs(split.test.train))] == UPDATES
    # A model that cannot take new histories is refitted, as without --no-refit.
    assert len(spy_fits) == 4 and spy_fits[-1].pairs == _pairs(split.test.train)
