"""Policies in the simulator: the world they act in, the loop that runs them, their logs.

A world is a dataset, a fitted recommender on its interactions and a "true" preference:
- the synthetic world (`truth.npz`): the users' generating tastes (`SynthPreference`), drifting
  from `taste_start` to `taste_end`;
- any other dataset: a second fitted model's scores, calibrated to click probabilities
  (`MatrixPreference.from_scores`), drifting towards another user's.
Policies see only the fitted recommender: each user's context and each item's vector are the
rank-`dim` factors of its score matrix (its own factors for `ials`), so its score of an item
for a user is their dot product. Nothing a policy or a reward model reads comes from the truth.
"""

from __future__ import annotations

import filecmp
import io
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from pinlab_data import (
    FEEDBACK_FILE,
    BanditFeedback,
    MatrixPreference,
    PinlabDataError,
    SimConfig,
    Simulator,
    SynthConfig,
    TruePreference,
    interaction_log,
    load_dataset,
    load_feedback,
    load_truth,
    open_npz,
    read_json_object,
    save_feedback,
    synth_preferences,
    write_synth,
)
from pinlab_data._synth import TRUTH_FILE
from pinlab_data.contracts import Float64Array, Int64Array, InteractionLog
from pinlab_models import (
    PinlabModelError,
    PolicyInputs,
    SlatePolicy,
    StationaryPolicy,
    TrainContext,
    build_policy,
    build_recommender,
)

WORLD_FILE = "world.npz"
SIM_FILE = "sim.json"
LOGS_DIR = "logs"
MAX_LOGGER_DIST_CELLS = 30_000_000
"""logger_dist holds rows x items x k floats; past this, logs go without it (its support
check then falls back to the logged pairs)."""
Say = Callable[[str], None]


@dataclass(frozen=True)
class World:
    """What the simulator and the policies need: the truth on one side, the fitted
    recommender's factors on the other."""

    start: TruePreference
    end: TruePreference | None
    contexts: Float64Array  # (users, dim): what policies see of each user
    items: Float64Array  # (items, dim): the fitted recommender's item vectors
    about: dict[str, Any] = field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.contexts)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def inputs(self, slate_size: int, seed: int) -> PolicyInputs:
        return PolicyInputs(items=self.items, slate_size=slate_size, seed=seed)

    def simulator(self, config: SimConfig) -> Simulator:
        return Simulator(self.start, config, self.end)

    def to_bytes(self) -> bytes:
        """The world as `world.npz`: factors and both attraction matrices, so `eval ope` and
        later runs can rebuild it without the dataset."""
        users = np.arange(self.num_users)
        buf = io.BytesIO()
        end = self.end.attraction(users) if self.end is not None else np.zeros((0, 0))
        np.savez_compressed(
            buf,
            contexts=self.contexts,
            items=self.items,
            start=self.start.attraction(users).astype(np.float32),
            end=end.astype(np.float32),
            about=np.array(json.dumps(self.about)),
        )
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> World:
        if not path.is_file():
            raise PinlabDataError(
                f"{path} does not exist: logs from `pinlab sim run` carry the world they came "
                "from; pass the logs directory that run wrote (RUN/logs)"
            )
        with open_npz(path, "write the logs again with `pinlab sim run`") as z:
            end = z["end"]
            return cls(
                start=MatrixPreference(np.clip(z["start"].astype(np.float64), 0, 1)),
                end=MatrixPreference(np.clip(end.astype(np.float64), 0, 1)) if end.size else None,
                contexts=z["contexts"],
                items=z["items"],
                about=json.loads(str(z["about"])),
            )


def factors(scores: Float64Array, dim: int) -> tuple[Float64Array, Float64Array]:
    """Contexts (users, dim) and item vectors (items, dim) whose products are the best rank-dim
    approximation of `scores` (truncated SVD, singular values split evenly between them)."""
    u, s, vt = np.linalg.svd(np.asarray(scores, dtype=np.float64), full_matrices=False)
    dim = min(dim, len(s))
    root = np.sqrt(s[:dim])
    return np.asarray(u[:, :dim] * root), np.asarray(vt[:dim].T * root)


def _fitted_scores(name: str, log: InteractionLog, run_dir: Path, seed: int) -> Float64Array:
    settings: dict[str, Any] = {"dim": 16} if name == "ials" else {}
    model = build_recommender(name, settings)
    model.fit(log, TrainContext(run_dir=run_dir, seed=seed, progress=False), None)
    users = np.arange(log.num_users)
    return np.asarray(model.score(users), dtype=np.float64)


def synthetic_world_dir(root: Path, users: int, items: int, seed: int) -> Path:
    """A small synthetic world written once under `root` (reused when already there)."""
    try:
        config = SynthConfig(
            num_pins=items,
            num_users=users,
            num_creators=max(2, items // 4),
            image_size=16,
            seed=seed,
        )
    except ValidationError as exc:  # in the options' words, not SynthConfig's
        first = exc.errors()[0]
        flag = {"num_pins": "--items", "num_users": "--users"}.get(str(first["loc"][0]), "")
        raise PinlabDataError(
            f"{flag} {first['input']} does not fit a synthetic world: {first['msg']}; change it, "
            "or pass --data DIR"
        ) from None
    path = root / f"synth-{users}u-{items}p-seed{seed}"
    if not (path / "dataset.json").is_file():
        write_synth(path, config)
    return path


def build_world(
    data: Path,
    work_dir: Path,
    *,
    users: int | None = None,
    items: int | None = None,
    recommender: str = "ials",
    truth_model: str = "ease",
    dim: int = 16,
    seed: int = 0,
) -> World:
    """The world of a dataset directory (see the module doc).

    `users`/`items` keep the most active users and most popular items (all by default); the
    recommender (and, off the synthetic world, the truth model) is fitted on all interactions.
    """
    dataset = load_dataset(data)
    log = interaction_log(dataset)
    counts_u = np.bincount(log.users, minlength=log.num_users)
    counts_i = np.bincount(log.items, minlength=log.num_items)
    keep_u = _most(counts_u, users)
    keep_i = _most(counts_i, items)
    scores = _fitted_scores(recommender, log, work_dir / "fitted" / recommender, seed)[
        np.ix_(keep_u, keep_i)
    ]
    contexts, vectors = factors(scores, dim)
    about: dict[str, Any] = {
        "data": str(data),
        "users": len(keep_u),
        "items": len(keep_i),
        "recommender": recommender,
        "dim": int(contexts.shape[1]),
        "seed": seed,
    }
    if (data / TRUTH_FILE).is_file():
        truth = load_truth(data)
        # The world's ids are 1..n; its truth rows 0..n-1.
        start, end = synth_preferences(truth, log.user_ids[keep_u] - 1, log.item_ids[keep_i] - 1)
        about["truth"] = "synthetic tastes (truth.npz), drifting from taste_start to taste_end"
        return World(start, end, contexts, vectors, about)
    truth_scores = _fitted_scores(truth_model, log, work_dir / "fitted" / truth_model, seed + 1)[
        np.ix_(keep_u, keep_i)
    ]
    about["truth"] = (
        f"{truth_model}'s scores, per user sigmoid(logit(0.05) + 1.5 z), drifting towards "
        "another user's"
    )
    return World(MatrixPreference.from_scores(truth_scores), None, contexts, vectors, about)


def _most(counts: Int64Array, n: int | None) -> Int64Array:
    if n is None or n >= len(counts):
        return np.arange(len(counts), dtype=np.int64)
    if n < 2:
        raise PinlabDataError(f"keep at least 2 users and items, not {n}")
    return np.sort(np.argsort(-counts, kind="stable")[:n]).astype(np.int64)


# --- the loop --------------------------------------------------------------------------------


@dataclass
class Trace:
    """One policy's run: totals, and cumulative curves sampled every `every` rounds."""

    policy: str
    rounds: int = 0
    clicks: float = 0.0
    expected: float = 0.0
    best: float = 0.0
    seconds: float = 0.0
    every: int = 1
    curve_rounds: list[int] = field(default_factory=list)
    curve_reward: list[float] = field(default_factory=list)
    curve_regret: list[float] = field(default_factory=list)

    @property
    def regret(self) -> float:
        return self.best - self.expected

    def summary(self) -> dict[str, Any]:
        n = max(self.rounds, 1)
        return {
            "policy": self.policy,
            "rounds": self.rounds,
            "clicks": self.clicks,
            "expected_reward": round(self.expected, 4),
            "reward_per_round": self.expected / n,
            "clicks_per_round": self.clicks / n,
            "regret": round(self.regret, 4),
            "regret_per_round": self.regret / n,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True)
class Logged:
    """A run's logs and, for the simulator's bookkeeping, the user of each round (round r is
    feedback rows r * k ... r * k + k - 1); estimators see only the feedback."""

    feedback: BanditFeedback
    users: Int64Array


@dataclass
class _Log:
    users: list[np.ndarray] = field(default_factory=list)
    round_id: list[np.ndarray] = field(default_factory=list)
    action: list[np.ndarray] = field(default_factory=list)
    reward: list[np.ndarray] = field(default_factory=list)
    pscore: list[np.ndarray] = field(default_factory=list)
    pscore_slate: list[np.ndarray] = field(default_factory=list)
    context: list[np.ndarray] = field(default_factory=list)


def run_policy(
    world: World,
    policy: SlatePolicy,
    config: SimConfig,
    rounds: int,
    *,
    seed: int,
    log: bool = False,
    logger_dist: bool | None = None,
    points: int = 100,
) -> tuple[Trace, Logged | None]:
    """Serve `rounds` rounds (one user, one slate) in batches of `config.users_per_step`.

    The simulator draws users and clicks from `config.seed`; the policy draws from `seed`. With
    `log`, every impression becomes a row of a `BanditFeedback` (logged marginal pscores; the
    slate probability when the policy knows it; the policy's full marginals when it is
    stationary and they fit in `MAX_LOGGER_DIST_CELLS`, or as `logger_dist` says).
    """
    if rounds < 1:
        raise PinlabDataError(f"rounds must be positive, got {rounds}")
    sim = world.simulator(config)
    rng = np.random.default_rng(seed)
    k = config.slate_size
    trace = Trace(policy=policy.name, every=max(1, rounds // points))
    record = _Log() if log else None
    cells = rounds * k * world.num_items * k
    with_dist = (
        log
        and isinstance(policy, StationaryPolicy)
        and (cells <= MAX_LOGGER_DIST_CELLS if logger_dist is None else logger_dist)
    )
    # A stationary policy's marginals depend on the user alone: computed once for everyone.
    per_user = (
        policy.marginals(world.contexts)
        if with_dist and isinstance(policy, StationaryPolicy)
        else None
    )
    next_point = trace.every
    start = time.perf_counter()
    while trace.rounds < rounds:
        users = sim.draw_users(min(config.users_per_step, rounds - trace.rounds))
        context = world.contexts[users]
        choice = policy.act(context, rng, propensities=log)
        outcome = sim.step(users, choice.slates)
        policy.update(context, choice.slates, outcome.clicks)
        if record is not None:
            _record(record, trace.rounds, users, context, choice, outcome.clicks, policy)
        trace.rounds += len(users)
        trace.clicks += float(outcome.clicks.sum())
        trace.expected += float(outcome.expected.sum())
        trace.best += float(outcome.best.sum())
        if trace.rounds >= next_point or trace.rounds == rounds:
            trace.curve_rounds.append(trace.rounds)
            trace.curve_reward.append(trace.expected)
            trace.curve_regret.append(trace.regret)
            next_point += trace.every
    trace.seconds = time.perf_counter() - start
    if record is None:
        return trace, None
    users_logged = np.concatenate(record.users)
    dist = None if per_user is None else np.repeat(per_user[users_logged], k, axis=0)
    return trace, Logged(_feedback(record, world.num_items, k, dist), users_logged)


def _record(
    record: _Log,
    first_round: int,
    users: Int64Array,
    context: Float64Array,
    choice: Any,
    clicks: Float64Array,
    policy: SlatePolicy,
) -> None:
    if choice.pscore is None:
        raise PinlabModelError(
            f"policy {policy.name!r} does not know the probabilities of its slates, so its "
            "logs would be useless to off-policy estimators; pass --no-log, or log a policy "
            "that knows them (thompson estimates them with --set propensity_samples=100)"
        )
    b, k = choice.slates.shape
    record.users.append(users)
    record.round_id.append(np.repeat(first_round + np.arange(b), k))
    record.action.append(choice.slates.ravel())
    record.reward.append(clicks.ravel())
    record.pscore.append(np.clip(choice.pscore, 1e-12, 1.0).ravel())
    if choice.pscore_slate is not None:
        record.pscore_slate.append(np.repeat(choice.pscore_slate, k))
    record.context.append(np.repeat(context, k, axis=0))


def _feedback(record: _Log, n_actions: int, k: int, dist: Float64Array | None) -> BanditFeedback:
    rows = len(record.action)
    return BanditFeedback(
        n_actions=n_actions,
        len_list=k,
        round_id=np.concatenate(record.round_id),
        action=np.concatenate(record.action),
        position=np.tile(np.arange(k), sum(len(a) for a in record.action) // k),
        reward=np.concatenate(record.reward),
        pscore=np.concatenate(record.pscore),
        context=np.concatenate(record.context),
        pscore_slate=(
            np.concatenate(record.pscore_slate) if len(record.pscore_slate) == rows else None
        ),
        logger_dist=dist,
    )


# --- `pinlab sim run` and its logs ----------------------------------------------------------


def sim_run(
    world: World,
    policy_name: str,
    config: SimConfig,
    rounds: int,
    out: Path,
    *,
    seed: int,
    settings: dict[str, Any] | None = None,
    log: bool = True,
    policy: SlatePolicy | None = None,
) -> dict[str, Any]:
    """Run one policy (`policy`, or built by name); write its logs (with the world and the
    settings) under `out/logs`."""
    if policy is None:
        policy = build_policy(policy_name, world.inputs(config.slate_size, seed), settings)
    trace, logged = run_policy(world, policy, config, rounds, seed=seed, log=log)
    feedback = logged.feedback if logged is not None else None
    result: dict[str, Any] = {
        **trace.summary(),
        "impressions": trace.rounds * config.slate_size,
        "impressions_per_s": round(trace.rounds * config.slate_size / max(trace.seconds, 1e-9)),
        "sim": config.model_dump(),
        "world": world.about,
        "settings": settings or {},
        "curve": {
            "rounds": trace.curve_rounds,
            "reward": trace.curve_reward,
            "regret": trace.curve_regret,
        },
    }
    if feedback is not None:
        meta = {"policy": policy_name, "settings": settings or {}, "seed": seed,
                "sim": config.model_dump(), "world": world.about}  # fmt: skip
        path = save_feedback(
            feedback,
            out / LOGS_DIR,
            source=f"pinlab sim run --policy {policy_name}",
            extra={WORLD_FILE: world.to_bytes(), SIM_FILE: json.dumps(meta, indent=2).encode()},
            overwrite=True,
        )
        result["logs"] = str(path)
        result["logged_rows"] = len(feedback)
        result["logger_dist"] = feedback.logger_dist is not None
    return result


def read_logs(root: Path) -> tuple[BanditFeedback, World, dict[str, Any]]:
    """Logs written by `sim_run`: the feedback (validated: bad rows are named), its world and
    the run's settings."""
    feedback = load_feedback(root)
    meta_path = root / SIM_FILE
    if not meta_path.is_file():
        raise PinlabDataError(
            f"{root} has no {SIM_FILE}: eval ope values a policy over the simulated world the "
            "logs came from; write logs with `pinlab sim run`"
        )
    meta = read_json_object(meta_path, "write the logs again with `pinlab sim run`")
    world = World.from_file(root / WORLD_FILE)
    if (feedback.n_actions, feedback.context_dim) != (world.num_items, world.contexts.shape[1]):
        raise PinlabDataError(
            f"{root}'s logs cover {feedback.n_actions} actions with {feedback.context_dim}-d "
            f"contexts but its world has {world.num_items} items and "
            f"{world.contexts.shape[1]}-d contexts; the files come from different runs"
        )
    return feedback, world, meta


def world_for(
    data: Path | None,
    root: Path,
    *,
    users: int,
    items: int,
    recommender: str,
    dim: int,
    seed: int,
) -> World:
    """The world of `data`, or of a synthetic world of `users` x `items` written under
    `root/world` (the same seed writes the same world)."""
    if data is None:
        data = synthetic_world_dir(root / "world", users, items, seed)
        return build_world(data, root, recommender=recommender, dim=dim, seed=seed)
    return build_world(
        data, root, users=users, items=items, recommender=recommender, dim=dim, seed=seed
    )


def target_policy(
    world: World,
    name: str,
    settings: dict[str, Any],
    slate_size: int,
    *,
    seed: int,
    train_logs: Path | None = None,
) -> StationaryPolicy:
    """A fixed policy to value off-policy: one of the stationary policies, or `reinforce`
    trained on `train_logs` (logs of the same world; never the logs being evaluated)."""
    from pinlab_models import ReinforceConfig, train_reinforce

    if name == "reinforce":
        if train_logs is None:
            raise PinlabDataError(
                "reinforce is trained from logs: pass --train-logs DIR (logs of the same world "
                "from another `pinlab sim run`, not the logs being evaluated)"
            )
        feedback, other, _ = read_logs(train_logs)
        if not np.array_equal(other.items, world.items):
            raise PinlabDataError(
                f"{train_logs} comes from another world than the one reinforce is to act in; "
                "train on logs of the same world"
            )
        return train_reinforce(
            feedback, world.items, ReinforceConfig.model_validate(settings), seed=seed,
            slate_size=slate_size,
        )  # fmt: skip
    policy = build_policy(name, world.inputs(slate_size, seed), settings)
    if not isinstance(policy, StationaryPolicy):
        raise PinlabDataError(
            f"{name} learns as it acts, so it has no fixed value to estimate; value a fixed "
            "policy: random, greedy, softmax, epsilon-greedy or reinforce"
        )
    return policy


def same_logs(a: Path, b: Path) -> bool:
    """Whether two logs folders hold the same feedback (one folder, or a copy of it)."""
    first, second = a / FEEDBACK_FILE, b / FEEDBACK_FILE
    return first.is_file() and second.is_file() and filecmp.cmp(first, second, shallow=False)


def is_ope_result(path: Path) -> bool:
    """Whether `path` holds what `eval_ope` returns (so `eval ope --out` may replace it)."""
    if path.stat().st_size > 2**24:
        return False
    try:
        result = json.loads(path.read_bytes())
    except ValueError:  # not JSON, or not UTF-8
        return False
    return isinstance(result, dict) and {"logs", "target", "estimates"} <= result.keys()


def eval_ope(
    logs: Path,
    policy_name: str,
    settings: dict[str, Any],
    *,
    train_logs: Path | None,
    ci: Any,
    seed: int,
) -> dict[str, Any]:
    """Every estimator's value of `policy_name` from the logs in `logs`, with intervals; the
    exact value too when the logs' simulator was stationary with pbm clicks."""
    from pinlab_eval import estimate_all
    from pinlab_models import fit_reward_model

    if train_logs is not None and same_logs(train_logs, logs):
        raise PinlabDataError(
            f"--train-logs {train_logs} are the logs being evaluated: a target trained on them "
            "is valued on its own training data, which flatters it; train on other logs of the "
            "same world (`pinlab sim run` with the same world options and another --policy)"
        )
    feedback, world, meta = read_logs(logs)
    config = SimConfig.model_validate(meta.get("sim", {}))
    target = target_policy(
        world, policy_name, settings, feedback.len_list, seed=seed, train_logs=train_logs
    )
    action_dist = target.marginals(feedback.context)
    rewards = fit_reward_model(feedback, world.items, folds=2, seed=seed)
    estimates = estimate_all(feedback, action_dist, rewards, ci=ci, seed=seed)
    truth: float | None = None
    why = None
    if config.click_model == "pbm" and config.is_stationary:
        truth = world.simulator(config).on_policy_value(target.marginals(world.contexts))
    else:
        why = (
            "no exact value: the logs' simulator had "
            + ("cascade clicks" if config.click_model != "pbm" else "drift or fatigue")
            + "; log with --stationary (pbm, no drift or fatigue) to compare with the truth"
        )
    rows = []
    for est in estimates:
        row: dict[str, Any] = est.model_dump(mode="json")
        if truth is not None and est.value is not None:
            scale = feedback.len_list if est.name == "pseudo-inverse" else 1
            row["truth"] = truth * scale
            row["relative_error"] = abs(est.value - truth * scale) / (truth * scale)
            row["covers_truth"] = bool(
                est.ci_low is not None
                and est.ci_high is not None
                and est.ci_low <= truth * scale <= est.ci_high
            )
        rows.append(row)
    return {
        "logs": str(logs),
        "logger": meta.get("policy"),
        "logger_settings": meta.get("settings", {}),
        "target": policy_name,
        "target_settings": settings,
        "rows": len(feedback),
        "rounds": feedback.n_rounds,
        "logged_click_rate": float(feedback.reward.mean()),
        "truth_per_impression": truth,
        "truth_note": why,
        "reward_model": "cross-fitted logistic regression on the logs (2 folds)",
        "estimates": rows,
    }
