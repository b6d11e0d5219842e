"""Device choice, seeding, checkpoints and the per-epoch log shared by every trainer."""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, TypeVar

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

from pinlab_data import atomic_writer, make_directory, write_bytes_atomic
from pinlab_data.contracts import Int64Array, InteractionLog
from pinlab_models._parallel import (
    Steps,
    at_rank_zero,
    from_rank_zero,
    mean_over_ranks,
    rank_zero_says,
    world,
)
from pinlab_models.contracts import (
    EpochRecord,
    FitReport,
    PinlabModelError,
    ProgressEvent,
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


def bfloat16_autocast(device: str, *, cpu: bool = False) -> AbstractContextManager[Any]:
    """bfloat16 autocast on CUDA; with `cpu`, also on a CPU with fast bfloat16 (AVX512-BF16
    or AMX); nothing elsewhere."""
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    if cpu and device == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return nullcontext()


def training_precision(bfloat16: bool, device: str) -> AbstractContextManager[Any]:
    """bfloat16 autocast (`bfloat16_autocast` with `cpu`) when `bfloat16`, float32 otherwise."""
    return bfloat16_autocast(device, cpu=True) if bfloat16 else nullcontext()


BFLOAT16_GAIN = 1.1
"""How much faster a training step must time in bfloat16 on a CPU for a trainer to use it."""
Net = TypeVar("Net", bound=torch.nn.Module)


def bfloat16_pays(net: Net, loss: Callable[[Net], torch.Tensor], device: str) -> bool:
    """Whether a trainer whose `mixed_precision` is on should train `net` in bfloat16: always
    on CUDA; on a CPU with bfloat16 kernels (AVX512-BF16 or AMX), when a step, `loss` of a
    copy of `net` and its backward, times at least `BFLOAT16_GAIN` x faster in it than in
    float32 at this thread count (best of three each, alternating). The CPU flags do not tell:
    the generator trained 1.4x faster in bfloat16 on an AMD EPYC with AVX512-BF16, and 1.5x
    slower on an Intel Xeon with AVX512-BF16 whose AMX its hypervisor hides. Steps are timed
    in the process's CPU time, which other processes sharing the cores (the bench's workers)
    do not inflate as they do the clock's."""
    if device.startswith("cuda"):
        return True
    if device != "cpu" or not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return False
    probe = copy.deepcopy(net)  # its gradients and batch statistics are thrown away

    def seconds(bfloat16: bool) -> float:
        start = time.process_time()
        with training_precision(bfloat16, device):
            value = loss(probe)
        torch.autograd.backward(value)
        return time.process_time() - start

    best = {False: math.inf, True: math.inf}
    for bfloat16 in (False, True) * 3:
        best[bfloat16] = min(best[bfloat16], seconds(bfloat16))
    return best[True] * BFLOAT16_GAIN <= best[False]


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
    """Appends one JSON line per epoch to `metrics.jsonl` in the run directory; with
    `write=False` (ranks past 0 under torchrun) it only keeps the records."""

    def __init__(self, run_dir: Path, write: bool = True) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.writes = write
        self.records: list[EpochRecord] = []
        if write:
            make_directory(run_dir)
            self.path.write_text("")

    def write(self, record: EpochRecord) -> None:
        self.records.append(record)
        if self.writes:
            with self.path.open("a") as f:
                f.write(json.dumps(record.model_dump()) + "\n")

    def restore(self, records: list[EpochRecord]) -> None:
        """Start from the records of a resumed fit (the file rewritten whole)."""
        self.records = list(records)
        if self.writes:
            text = "".join(json.dumps(r.model_dump()) + "\n" for r in records)
            write_bytes_atomic(self.path, text.encode())


LINE_EVERY_SECONDS = 10.0
"""Off a terminal, an epoch line at most this often: every epoch of a slow model, few of a
fast one."""


class EpochReporter:
    """Says how one fit goes, as `TrainContext.progress` asks: a rich bar on a terminal, a
    plain line every `LINE_EVERY_SECONDS` elsewhere, `ProgressEvent`s to a sink, or nothing.
    """

    def __init__(self, description: str, total: int, ctx: TrainContext, bar: Progress) -> None:
        self.description = description
        self.total = total
        self.ctx = ctx
        self.bar = bar
        self.clock = Stopwatch()
        self.said = 0.0  # when the last plain line was printed
        self.epoch = 0
        self.best: float | None = None
        self.best_epoch: int | None = None

    def _send(self, event: Literal["start", "epoch", "end"], **fields: Any) -> None:
        if callable(self.ctx.progress):
            self.ctx.progress(
                ProgressEvent(
                    event=event,
                    label=self.description,
                    epochs=self.total,
                    metric=self.ctx.metric,
                    elapsed_s=round(self.clock(), 3),
                    **fields,
                )
            )

    def start(self) -> None:
        self._send("start")

    def update(self, epoch: int, loss: float, valid: float | None) -> None:
        """One epoch done: `loss` its mean training loss, `valid` its validation value."""
        self.epoch = epoch
        if valid is not None and (self.best is None or valid > self.best):
            self.best, self.best_epoch = valid, epoch
        status = f"loss {loss:.3f}" + (f" valid {valid:.4f}" if valid is not None else "")
        self.bar.update(self.bar.task_ids[0], advance=1, status=status)
        elapsed = self.clock()
        self._send(
            "epoch", epoch=epoch, loss=loss, value=valid, best=self.best,
            best_epoch=self.best_epoch, eta_s=round(self._eta(epoch, elapsed), 3),
        )  # fmt: skip
        if self.ctx.progress is True and not stderr.is_terminal:
            self._line(epoch, elapsed, status)

    def _line(self, epoch: int, elapsed: float, status: str) -> None:
        if elapsed - self.said < LINE_EVERY_SECONDS:
            return
        self.said = elapsed
        stderr.print(
            epoch_line(self.description, epoch, self.total, elapsed, status, self.ctx.deadline),
            soft_wrap=True,  # one line per epoch, whatever the log's width
            markup=False,
            highlight=False,
        )

    def end(self) -> None:
        self._send("end", epoch=self.epoch or None, best=self.best, best_epoch=self.best_epoch)

    def _eta(self, epoch: int, elapsed: float) -> float:
        left = None if self.ctx.deadline is None else self.ctx.deadline - time.monotonic()
        return eta_seconds(epoch, self.total, elapsed, left)


@contextmanager
def epoch_progress(
    description: str, total: int, ctx: TrainContext, transient: bool = False
) -> Iterator[EpochReporter]:
    """One fit's `EpochReporter`; a sink hears `start` now and `end` when the block leaves."""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("left at most"),
        TimeRemainingColumn(),
        console=stderr,
        disable=ctx.progress is not True or not stderr.is_terminal,
        transient=transient,
    )
    with bar:
        bar.add_task(description, total=total, status="")
        reporter = EpochReporter(description, total, ctx, bar)
        reporter.start()
        try:
            yield reporter
        finally:
            reporter.end()  # a pruned trial ends too: every start has its end


def eta_seconds(done: int, total: int, elapsed: float, time_left: float | None = None) -> float:
    """Seconds left at most: the epochs left at the mean epoch time so far, capped by the time
    left to a search's budget when there is one (early stopping can end sooner)."""
    left = max(total - done, 0) * elapsed / max(done, 1)
    return left if time_left is None else max(0.0, min(left, time_left))


def epoch_line(
    description: str, epoch: int, total: int, seconds: float, status: str, deadline: float | None
) -> str:
    """One epoch as a plain line, with the time left (`eta_seconds`)."""
    left = eta_seconds(
        epoch, total, seconds, None if deadline is None else deadline - time.monotonic()
    )
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

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best, "best_epoch": self.best_epoch, "since": self._since,
            "best_state": self.best_state,
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch = state["best"], int(state["best_epoch"])
        self._since, self.best_state = int(state["since"]), state["best_state"]


class Stopwatch:
    def __init__(self) -> None:
        self.start = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.start


M = TypeVar("M")

TRAINING_STATE = "training_state.pt"
"""Kept in a fit's run directory when `TrainContext.checkpoints`: what `resume` continues."""
TRAINING_STATE_KIND = "pinlab-training-state"


def run_epochs(
    model: M,
    net: torch.nn.Module,
    train_epoch: Callable[[], float],
    *,
    epochs: int,
    patience: int,
    ctx: TrainContext,
    validate: Callable[[M], float] | None,
    eval_every: int = 1,
    steps: Steps | None = None,
    gen: torch.Generator | None = None,
    name: str | None = None,
) -> FitReport:
    """The loop every epoch-trained model shares: train, validate, log, stop early, resume.

    `train_epoch` runs one pass and returns its mean loss. Validation runs every `eval_every`
    epochs and on the last; the best validated state of `net` is restored at the end. Past
    `ctx.deadline`, training stops at the next validation. `steps` is the fit's `Steps`: with
    it the fit trains data-parallel under torchrun (the epoch's loss averaged over ranks, one
    stop decision, rank 0 alone writing) and its optimiser and generators go in the training
    state; a fit without it (one-step solves, LearnBPR) runs in one process and gives `gen`,
    its generator, to keep. With `ctx.checkpoints` the state after each epoch is kept in
    RUN_DIR/training_state.pt; with `ctx.resume` the fit continues from it.
    """
    name = name or str(getattr(model, "name", type(model).__name__))
    rank, size = world()
    if size > 1 and steps is None:
        raise PinlabModelError(
            f"{name} does not step through pinlab_models.Steps, so it cannot train "
            "data-parallel; train it in one process (drop --nproc-per-node and --nnodes)"
        )
    log = EpochLog(ctx.run_dir, write=rank == 0)
    stopper = EarlyStopping(patience)
    state = TrainingState(ctx.run_dir / TRAINING_STATE, name, net, stopper, log, steps, gen)
    done, finished = state.load() if ctx.resume else (0, False)
    clock = Stopwatch()
    description = f"train {name}" + (f" ({ctx.label})" if ctx.label else "")
    shown = ctx if rank == 0 else replace(ctx, progress=False)
    with epoch_progress(description, epochs, shown, transient=bool(ctx.label)) as progress:
        for epoch in range(done + 1, (done if finished else epochs) + 1):
            epoch_clock = Stopwatch()
            loss = mean_over_ranks(train_epoch())
            check = validate is not None and (epoch % eval_every == 0 or epoch == epochs)
            valid = validate(model) if validate is not None and check else None
            log.write(EpochRecord(epoch=epoch, train_loss=loss, valid=valid, seconds=epoch_clock()))
            progress.update(epoch, loss, valid)
            stop = bool((validate is None or check) and stopper.update(epoch, valid, net))
            # Out of time: keep the best epoch validated so far.
            stop |= check and ctx.deadline is not None and time.monotonic() > ctx.deadline
            stop = rank_zero_says(stop)  # the clock is rank 0's: every rank stops together
            if ctx.checkpoints:
                state.save(epoch, finished=stop or epoch == epochs)
            if stop:
                break
    stopper.restore(net)
    return FitReport(
        model=name,
        epochs=len(log.records),
        best_epoch=stopper.best_epoch,
        best_valid=stopper.best,
        seconds=clock(),
        history=log.records,
    )


class TrainingState:
    """A fit's state after an epoch, in one checkpoint: the network, the early stopping (its
    best state too), the epoch log, the optimiser, schedule and batch order, and every rank's
    own generators. Rank 0 writes it (atomically); on resume rank 0 reads it and hands it on.
    """

    def __init__(
        self,
        path: Path,
        name: str,
        net: torch.nn.Module,
        stopper: EarlyStopping,
        log: EpochLog,
        steps: Steps | None,
        gen: torch.Generator | None,
    ) -> None:
        self.path, self.name, self.net, self.stopper, self.log = path, name, net, stopper, log
        self.steps, self.gen = steps, gen

    def _rank_state(self) -> dict[str, torch.Tensor]:
        if self.steps is not None:
            return self.steps.rank_state()
        mine = {"torch": torch.get_rng_state()}
        return mine | ({} if self.gen is None else {"gen": self.gen.get_state()})

    def save(self, epoch: int, finished: bool) -> None:
        ranks = at_rank_zero(self._rank_state())  # a collective: every rank takes part
        if ranks is None:
            return
        save_checkpoint(
            self.path,
            {
                "kind": TRAINING_STATE_KIND,
                "model": self.name,
                "epoch": epoch,
                "finished": finished,
                "net": {k: v.detach().cpu() for k, v in self.net.state_dict().items()},
                "stopper": self.stopper.state_dict(),
                "history": [r.model_dump() for r in self.log.records],
                "steps": None if self.steps is None else self.steps.state_dict(),
                "ranks": ranks,
            },
        )

    def load(self) -> tuple[int, bool]:
        """Restore the state if there is one; (epochs done, whether the fit had finished)."""
        rank, size = world()
        payload = None
        if rank == 0 and self.path.is_file():
            payload = load_checkpoint(self.path, TRAINING_STATE_KIND)
        payload = from_rank_zero(payload)
        if payload is None:
            return 0, False
        if payload["model"] != self.name:
            raise PinlabModelError(
                f"{self.path} is {payload['model']}'s training state, not {self.name}'s; "
                "drop --resume to start over"
            )
        try:
            self.net.load_state_dict(payload["net"])
            if self.steps is not None and payload["steps"] is not None:
                self.steps.load_state_dict(payload["steps"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise PinlabModelError(
                f"{self.path} was written with other settings ({type(exc).__name__}); resume "
                "with the settings it was trained with, or drop --resume to start over"
            ) from exc
        self.stopper.load_state_dict(payload["stopper"])
        self.log.restore([EpochRecord.model_validate(r) for r in payload["history"]])
        ranks = payload["ranks"]
        # The same number of processes continues every rank's own draws; another number
        # continues the same model and optimiser with fresh draws.
        if len(ranks) == size:
            mine = ranks[rank]
            if self.steps is not None:
                self.steps.load_rank_state(mine)
            else:
                torch.set_rng_state(mine["torch"])
                if self.gen is not None and "gen" in mine:
                    self.gen.set_state(mine["gen"])
        return int(payload["epoch"]), bool(payload["finished"])


def one_pass_report(
    model: Scorer, ctx: TrainContext, validate: Validator | None, clock: Stopwatch
) -> FitReport:
    """Validate and log a model fitted in one step (closed form, counts): one epoch's record."""
    name = str(getattr(model, "name", type(model).__name__))
    if world()[1] > 1:
        raise PinlabModelError(
            f"{name} is fitted in one step, not in epochs: there is nothing to train "
            "data-parallel; train it in one process (drop --nproc-per-node and --nnodes)"
        )
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


def check_catalogue(train: InteractionLog, num_items: int, name: str) -> None:
    """`update_histories`' input: a log over the catalogue the model was fitted on."""
    if train.num_items != num_items:
        raise PinlabModelError(
            f"{name} was fitted on {num_items} items but the new histories' log has "
            f"{train.num_items}; update it with a log of the same dataset"
        )


def check_histories(histories: Sequence[Int64Array], num_items: int) -> None:
    """`score_histories`'s input: each history non-empty, every index in the catalogue."""
    for row, history in enumerate(histories):
        if len(history) == 0:
            raise PinlabModelError(f"history {row} is empty; a session needs at least one item")
        if history.min() < 0 or history.max() >= num_items:
            raise PinlabModelError(f"history {row}: item index out of range 0..{num_items - 1}")


def image_batches(
    images: np.ndarray, batch_size: int, gen: torch.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (row indexes, uint8 images) in a seeded shuffle, `len // batch_size` full
    batches (at least one): the rows left over wait for another epoch's shuffle."""
    order = torch.randperm(len(images), generator=gen)
    for step in range(max(1, len(images) // batch_size)):
        idx = order[step * batch_size : (step + 1) * batch_size]
        yield idx, torch.from_numpy(np.ascontiguousarray(images[idx.numpy()]))


def padded_histories(histories: Sequence[Int64Array], length: int) -> torch.Tensor:
    """(len(histories), length) item indexes + 1, each history's most recent items, left-padded
    with 0 (`user_sequences`'s layout)."""
    rows = torch.zeros((len(histories), length), dtype=torch.int64)
    for row, history in enumerate(histories):
        recent = torch.from_numpy(np.asarray(history[-length:], dtype=np.int64)) + 1
        rows[row, length - len(recent) :] = recent
    return rows


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
