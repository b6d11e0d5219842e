"""Named, seeded evaluation protocols: which interactions a model sees, which it must find.

Every protocol is a holdout (`_holdout`) applied twice: to the whole log for the test numbers,
then again, with `ProtocolSpec.for_validation()`, to the training part for tuning. Logs keep
the dense index space of the log they came from, so models, exclusions and metrics line up.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pydantic import ValidationError

from pinlab_data import holdout_mask, leave_last_out, seen_csr
from pinlab_data.contracts import Int64Array, InteractionLog, PinlabDataError
from pinlab_eval._ranking import csr_entries, item_popularity
from pinlab_eval.contracts import (
    Holdout,
    HoldoutCounts,
    NegativeSampling,
    ProtocolSpec,
    ProtocolSplit,
)

_KEYS_PER_BATCH = 1 << 22
"""Sampling keys drawn at once (32 MiB of float64); fixed, so negatives do not depend on memory."""


def protocol_spec(name: str, settings: Mapping[str, object] | None = None) -> ProtocolSpec:
    """A `ProtocolSpec` from a name and settings, unset (None) settings left at their defaults.

    For command lines: a bad name or value raises `PinlabDataError` (exit code 2) saying which
    setting was wrong, instead of pydantic's multi-line report.
    """
    given = {key: value for key, value in (settings or {}).items() if value is not None}
    try:
        return ProtocolSpec.model_validate({"name": name, **given})
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'protocol'}: "
            f"{e['msg'].removeprefix('Value error, ')}"
            for e in error.errors()
        )
        raise PinlabDataError(
            f"bad protocol {name!r}: {problems} "
            "(protocols: stratified, leave-last-out, temporal, cold-start)"
        ) from None


def apply_protocol(log: InteractionLog, spec: ProtocolSpec) -> ProtocolSplit:
    """Split `log` by `spec` into a test holdout and, inside its training part, a valid one.

    - `stratified`: per group (item or user), the group's (user, item) pairs in an order drawn
      with the seed, and the first round(ratio * n) of a group of n to train (Python's
      rounding, half to even), as Microsoft Recommenders' `python_stratified_split` does
      (`split_pandas_data_with_ratios` cuts each shuffled group at `round(0.75 * len)`; a
      group of one stays in train). Every interaction is a positive; repeats of a pair are
      dropped first, keeping the earliest, since a repeat of a training pair could never be
      recommended. The shuffle is numpy's `default_rng(seed)`, not pandas', so the rows differ
      from theirs while the sizes match.
    - `leave-last-out`: pinlab_data's `leave_last_out`. Test fits on everything but each
      user's last distinct item; valid fits on its `train` and targets its `valid`, which is
      this same holdout applied to the test's training part. With `negatives`, each target
      user gets that many items they never interacted with anywhere in `log`.
    - `temporal`: interactions before the cut train, those at or after it are targets, except
      for users or items unseen in training and pairs the user already had in training; the
      cut is the timestamp at position floor(quantile * n) of the sorted timestamps, or `cut`.
    - `cold-start`: about `cold_fraction` of the items, chosen per item id by a seeded hash
      (pinlab_data's `holdout_mask`), are cold: their interactions, once per (user, item)
      pair, are the targets and the rest train. `candidates` are the items the training part
      never shows, so each user ranks only cold items; validation holds out warm items the same
      way inside the training part.

    Target users without training data are skipped and counted (`HoldoutCounts`). A test
    holdout left with no target user at all is an error; a validation holdout may be empty.
    """
    if len(log) == 0:
        raise PinlabDataError("the interaction log is empty, so there is nothing to split")
    _check_indexes(log)
    if spec.name == "leave-last-out":
        parts = leave_last_out(log)
        train = _concat(parts.train, parts.valid)
        test = _holdout(spec, log, train, parts.test, 0, required=True)
        valid = _holdout(spec.for_validation(), log, parts.train, parts.valid, 0, required=False)
        return ProtocolSplit(spec=spec, test=test, valid=valid)
    test = _holdout(spec, log, *_split_once(log, spec), required=True)
    inner = spec.for_validation()
    valid = _holdout(inner, log, *_split_once(test.train, inner), required=False)
    return ProtocolSplit(spec=spec, test=test, valid=valid)


def sample_negatives(
    log: InteractionLog,
    users: Int64Array,
    count: int,
    sampling: NegativeSampling = "uniform",
    seed: int = 0,
) -> Int64Array:
    """`count` distinct items per user that the user never interacted with in `log`, seeded.

    Shape (len(users), count). `uniform` draws every such item with equal chance (SASRec's
    evaluation, Kang & McAuley 2018); `popularity` in proportion to how many users of `log`
    interacted with it (BERT4Rec's, Sun et al. 2019), so items nobody touched are never drawn.
    Drawn without replacement by the Efraimidis-Spirakis method (Inf. Process. Lett. 2006):
    each candidate gets the key E / weight with E ~ Exp(1), and the `count` smallest keys win,
    which is exactly successive weighted sampling without replacement. The same log, users,
    count, sampling and seed always give the same negatives.
    """
    users = np.asarray(users, dtype=np.int64)
    if count <= 0:
        raise PinlabDataError(f"the number of negatives must be positive, got {count}")
    if count > log.num_items:
        raise PinlabDataError(
            f"{count} negatives asked for but the catalogue has {log.num_items} items"
        )
    if len(users) and (users.min() < 0 or users.max() >= log.num_users):
        raise PinlabDataError(f"users must index 0..{log.num_users - 1} of the log")
    weights = (
        np.ones(log.num_items) if sampling == "uniform" else item_popularity(log).astype(float)
    )
    drawable = weights > 0
    seen = seen_csr(log)
    rng = np.random.default_rng(seed)
    out = np.empty((len(users), count), dtype=np.int64)
    rows_per_batch = max(1, _KEYS_PER_BATCH // log.num_items)
    for start in range(0, len(users), rows_per_batch):
        batch = users[start : start + rows_per_batch]
        keys = rng.standard_exponential((len(batch), log.num_items))
        np.divide(keys, weights, out=keys, where=drawable)
        keys[:, ~drawable] = np.inf
        rows, cols = csr_entries(seen, batch)
        keys[rows, cols] = np.inf
        short = np.isinf(keys).sum(axis=1) > log.num_items - count
        if short.any():
            user = int(batch[short.argmax()])
            left = int(np.isfinite(keys[short.argmax()]).sum())
            raise PinlabDataError(
                f"user {log.user_ids[user]} has only {left} items left to draw {sampling} "
                f"negatives from; ask for at most {left} negatives"
            )
        chosen = np.argpartition(keys, count - 1, axis=1)[:, :count]
        # In draw order (smallest key first), so the result does not hang on argpartition.
        order = np.argsort(np.take_along_axis(keys, chosen, axis=1), axis=1, kind="stable")
        out[start : start + len(batch)] = np.take_along_axis(chosen, order, axis=1)
    return out


def _split_once(
    log: InteractionLog, spec: ProtocolSpec
) -> tuple[InteractionLog, InteractionLog, int]:
    """Train, targets, and how many held-out interactions had to be dropped."""
    if spec.name == "stratified":
        return *_stratified(log, spec), 0
    if spec.name == "cold-start":
        return *_cold_items(log, spec), 0
    return _temporal(log, spec)


def _cold_items(log: InteractionLog, spec: ProtocolSpec) -> tuple[InteractionLog, InteractionLog]:
    cold = holdout_mask(log.item_ids, spec.cold_fraction, spec.seed)[log.items]
    target = _subset(log, np.flatnonzero(cold))
    return _subset(log, np.flatnonzero(~cold)), _subset(target, _first_of_each_pair(target))


def _stratified(log: InteractionLog, spec: ProtocolSpec) -> tuple[InteractionLog, InteractionLog]:
    rows = _first_of_each_pair(log)
    group = (log.items if spec.stratify_by == "item" else log.users)[rows]
    keys = np.random.default_rng(spec.seed).random(len(rows))
    order = np.lexsort((keys, group))  # by group, then by the drawn key
    sorted_group = group[order]
    size = np.bincount(sorted_group)
    start = np.cumsum(size) - size
    rank = np.arange(1, len(order) + 1) - start[sorted_group]
    # Microsoft Recommenders cuts each shuffled group at round(ratio * n) (Python's round,
    # half to even, as np.round), so the same groups split into the same sizes.
    to_train = np.zeros(len(rows), dtype=np.bool_)
    to_train[order] = rank <= np.round(spec.ratio * size[sorted_group])
    return _subset(log, rows[to_train]), _subset(log, rows[~to_train])


def _temporal(
    log: InteractionLog, spec: ProtocolSpec
) -> tuple[InteractionLog, InteractionLog, int]:
    if spec.cut is None:
        position = min(len(log) - 1, int(np.floor(spec.quantile * len(log))))
        cut = int(np.partition(log.timestamps, position)[position])
    else:
        cut = spec.cut
    before = log.timestamps < cut
    train = _subset(log, np.flatnonzero(before))
    later = np.flatnonzero(~before)
    # A target must be findable: an item known from training and new to this user, once.
    # (Users unseen in training are left in, for `_holdout` to count as skipped.)
    known_item = np.isin(log.items[later], train.items)
    new_pair = ~np.isin(_pair_keys(log, later), _pair_keys(train, np.arange(len(train))))
    kept = later[known_item & new_pair]
    kept = kept[_first_of_each_pair(_subset(log, kept))]
    return train, _subset(log, kept), len(later) - len(kept)


def _holdout(
    spec: ProtocolSpec,
    whole: InteractionLog,
    train: InteractionLog,
    target: InteractionLog,
    dropped: int,
    required: bool,
) -> Holdout:
    """Drop target users without training data, draw negatives if the protocol samples them.

    A test holdout (`required`) with nobody left to evaluate is an error; a validation one is
    returned empty, for whoever tunes on it to refuse (its counts say why).
    """
    trained = np.bincount(train.users, minlength=train.num_users) > 0
    keep = trained[target.users]
    kept = _subset(target, np.flatnonzero(keep))
    target_users = np.unique(kept.users)
    if required and len(target_users) == 0:
        raise PinlabDataError(
            f"{spec.label()} leaves no user with both training and held-out interactions "
            f"({len(train)} train, {len(target)} held out); the dataset is too small or too "
            "sparse for this protocol"
        )
    negatives = (
        None
        if spec.negatives is None
        else sample_negatives(whole, target_users, spec.negatives, spec.sampling, spec.seed)
    )
    counts = HoldoutCounts(
        train_interactions=len(train),
        target_interactions=len(kept),
        target_users=len(target_users),
        skipped_users=len(np.unique(target.users[~keep])),
        dropped_interactions=dropped + int((~keep).sum()),
    )
    candidates = None
    if spec.name == "cold-start":
        unseen = np.bincount(train.items, minlength=train.num_items) == 0
        candidates = np.flatnonzero(unseen).astype(np.int64)
    return Holdout(
        train=train, target=kept, negatives=negatives, counts=counts, candidates=candidates
    )


def _pair_keys(log: InteractionLog, rows: Int64Array) -> Int64Array:
    return log.users[rows].astype(np.int64) * log.num_items + log.items[rows]


def _first_of_each_pair(log: InteractionLog) -> Int64Array:
    """Rows, ascending, that are the earliest (then first in order) of their (user, item) pair."""
    order = np.lexsort((np.arange(len(log)), log.timestamps))
    _, first = np.unique(_pair_keys(log, order), return_index=True)
    return np.sort(order[first]).astype(np.int64)


def _subset(log: InteractionLog, rows: Int64Array) -> InteractionLog:
    return InteractionLog(
        users=log.users[rows],
        items=log.items[rows],
        timestamps=log.timestamps[rows],
        weights=log.weights[rows],
        user_ids=log.user_ids,
        item_ids=log.item_ids,
    )


def _concat(a: InteractionLog, b: InteractionLog) -> InteractionLog:
    both = InteractionLog(
        users=np.concatenate([a.users, b.users]),
        items=np.concatenate([a.items, b.items]),
        timestamps=np.concatenate([a.timestamps, b.timestamps]),
        weights=np.concatenate([a.weights, b.weights]),
        user_ids=a.user_ids,
        item_ids=a.item_ids,
    )
    return _subset(both, np.lexsort((both.timestamps, both.users)).astype(np.int64))


def _check_indexes(log: InteractionLog) -> None:
    for name, values, size in (
        ("users", log.users, log.num_users),
        ("items", log.items, log.num_items),
    ):
        if values.min() < 0 or values.max() >= size:
            raise PinlabDataError(
                f"interaction log {name} must index 0..{size - 1}, found {values.min()}.."
                f"{values.max()}; build logs with interaction_log()"
            )
