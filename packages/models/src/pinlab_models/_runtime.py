"""Device choice, seeding, checkpoints and the per-epoch log shared by every trainer."""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from pinlab_data import atomic_writer
from pinlab_data.contracts import Int64Array
from pinlab_models.contracts import (
    EpochRecord,
    FitReport,
    PinlabModelError,
    Scorer,
    TrainContext,
    Validator,
)

stderr = Console(stderr=True)


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise PinlabModelError(
            "device 'cuda' was asked for but no GPU is visible; use --device cpu"
        )
    if device not in ("cpu", "cuda"):
        raise PinlabModelError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def save_checkpoint(path: Path, payload: Mapping[str, Any]) -> str:
    """Write a checkpoint atomically; returns its short SHA-256, used as the model id."""
    with atomic_writer(path) as f:
        torch.save(dict(payload), f)
    return file_digest(path)


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def load_checkpoint(path: Path, kind: str) -> dict[str, Any]:
    """Load with weights_only=True: a checkpoint is data, never code."""
    if not path.is_file():
        raise PinlabModelError(f"no checkpoint at {path}; train one first (`pinlab train ...`)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise PinlabModelError(
            f"{path} is not a readable pinlab checkpoint ({type(exc).__name__}); retrain it"
        ) from exc
    if not isinstance(payload, dict) or payload.get("kind") != kind:
        found = payload.get("kind") if isinstance(payload, dict) else type(payload).__name__
        raise PinlabModelError(f"{path} holds a {found!r} checkpoint, expected {kind!r}")
    return payload


class EpochLog:
    """Appends one JSON line per epoch to `metrics.jsonl` in the run directory."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self.path.write_text("")
        self.records: list[EpochRecord] = []

    def write(self, record: EpochRecord) -> None:
        self.records.append(record)
        with self.path.open("a") as f:
            f.write(json.dumps(record.model_dump()) + "\n")


@contextmanager
def epoch_progress(
    description: str, total: int, enabled: bool, transient: bool = False
) -> Iterator[Progress]:
    """A live bar on a terminal; elsewhere (a pipe, a log, `--json` runs) `epoch_line` speaks."""
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("left at most"),
        TimeRemainingColumn(),
        console=stderr,
        disable=not enabled or not stderr.is_terminal,
        transient=transient,
    )
    with progress:
        progress.add_task(description, total=total, status="")
        yield progress


LINE_EVERY_SECONDS = 10.0
"""Off a terminal, an epoch line at most this often: every epoch of a slow model, few of a
fast one."""


def epoch_line(
    description: str, epoch: int, total: int, seconds: float, status: str, deadline: float | None
) -> str:
    """One epoch as a plain line, with the time left: the epochs left at the mean epoch time,
    capped by the search budget's deadline when there is one (early stopping can end sooner).
    """
    left = (total - epoch) * seconds / epoch
    if deadline is not None:
        left = max(0.0, min(left, deadline - time.monotonic()))
    return (
        f"{description}: epoch {epoch}/{total} ({seconds / epoch:.1f} s/epoch), {status}; "
        f"at most {_clock(left)} left"
    )


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class EarlyStopping:
    """Keeps the best state seen on validation; says stop after `patience` epochs without gain."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self._since = 0

    def update(self, epoch: int, value: float | None, module: torch.nn.Module) -> bool:
        """Record an epoch; returns True when training should stop."""
        if value is None or self.best is None or value > self.best:
            self.best, self.best_epoch, self._since = value, epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            return False
        self._since += 1
        return self._since >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        if self.best_state is not None:
            module.load_state_dict(self.best_state)


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


def run_epochs(
    model: Scorer,
    net: torch.nn.Module,
    train_epoch: Callable[[], float],
    *,
    epochs: int,
    patience: int,
    ctx: TrainContext,
    validate: Validator | None,
    eval_every: int = 1,
) -> FitReport:
    """The loop every epoch-trained recommender shares: train, validate, log, stop early.

    `train_epoch` runs one pass and returns its mean loss. Validation runs every `eval_every`
    epochs and on the last; the best validated state of `net` is restored at the end. Past
    `ctx.deadline`, training stops at the next validation.
    """
    name = str(getattr(model, "name", type(model).__name__))
    log = EpochLog(ctx.run_dir)
    stopper = EarlyStopping(patience)
    clock = Stopwatch()
    said = 0.0  # when the last epoch line was printed
    description = f"train {name}" + (f" ({ctx.label})" if ctx.label else "")
    with epoch_progress(description, epochs, ctx.progress, transient=bool(ctx.label)) as progress:
        for epoch in range(1, epochs + 1):
            epoch_clock = Stopwatch()
            loss = train_epoch()
            check = validate is not None and (epoch % eval_every == 0 or epoch == epochs)
            valid = validate(model) if validate is not None and check else None
            log.write(EpochRecord(epoch=epoch, train_loss=loss, valid=valid, seconds=epoch_clock()))
            status = f"loss {loss:.3f}" + (f" valid {valid:.4f}" if valid is not None else "")
            progress.update(progress.task_ids[0], advance=1, status=status)
            if ctx.progress and not stderr.is_terminal and clock() - said >= LINE_EVERY_SECONDS:
                said = clock()
                stderr.print(
                    epoch_line(description, epoch, epochs, said, status, ctx.deadline),
                    soft_wrap=True,  # one line per epoch, whatever the log's width
                    markup=False,
                    highlight=False,
                )
            if (validate is None or check) and stopper.update(epoch, valid, net):
                break
            if check and ctx.deadline is not None and time.monotonic() > ctx.deadline:
                break  # out of time: keep the best epoch validated so far
    stopper.restore(net)
    return FitReport(
        model=name,
        epochs=len(log.records),
        best_epoch=stopper.best_epoch,
        best_valid=stopper.best,
        seconds=clock(),
        history=log.records,
    )


def one_pass_report(
    model: Scorer, ctx: TrainContext, validate: Validator | None, clock: Stopwatch
) -> FitReport:
    """Validate and log a model fitted in one step (closed form, counts): one epoch's record."""
    name = str(getattr(model, "name", type(model).__name__))
    valid = validate(model) if validate else None
    log = EpochLog(ctx.run_dir)
    log.write(EpochRecord(epoch=1, train_loss=0.0, valid=valid, seconds=clock()))
    return FitReport(
        model=name, epochs=1, best_epoch=1, best_valid=valid, seconds=clock(),
        history=log.records,
    )  # fmt: skip


RECOMMENDER_CHECKPOINT = "pinlab-recommender"
"""The `kind` of every recommender checkpoint (`load_recommender` checks it)."""


def require_fitted(fitted: bool, name: str) -> None:
    if not fitted:
        raise PinlabModelError(f"{name} has not been fitted; call fit() or load a checkpoint")


def check_users(users: Int64Array, num_users: int) -> None:
    if len(users) and (users.min() < 0 or users.max() >= num_users):
        raise PinlabModelError(f"user index out of range 0..{num_users - 1}")


def check_candidates(users: Int64Array, items: Int64Array, num_items: int) -> None:
    """`items` of `score_candidates`: one row per user, every index in the catalogue."""
    if items.ndim != 2 or len(items) != len(users):
        raise PinlabModelError(
            f"candidates have shape {items.shape}; expected one row per each of {len(users)} users"
        )
    if items.size and (items.min() < 0 or items.max() >= num_items):
        raise PinlabModelError(f"item index out of range 0..{num_items - 1}")


def gathered_dot(
    user_vecs: torch.Tensor, item_vecs: torch.Tensor, items: Int64Array
) -> torch.Tensor:
    """(len(user_vecs), n) scores: row r against `item_vecs[items[r]]`, not the whole table."""
    index = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(item_vecs.device)
    return torch.einsum("bd,bnd->bn", user_vecs, item_vecs[index])


def save_recommender(
    path: Path,
    name: str,
    config: dict[str, Any],
    state: dict[str, torch.Tensor],
    num_users: int,
    num_items: int,
) -> None:
    save_checkpoint(
        path,
        {
            "kind": RECOMMENDER_CHECKPOINT,
            "name": name,
            "config": config,
            "state": state,
            "num_users": num_users,
            "num_items": num_items,
        },
    )
