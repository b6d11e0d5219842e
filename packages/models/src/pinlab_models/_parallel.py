"""Data-parallel training under torchrun: PyTorch's DistributedDataParallel, nothing else.

A fit does not know whether it runs alone or as one of N processes: its epochs hand each
global batch (row indexes, the same on every rank) to `Steps`, which takes this rank's share
(`batch[rank::world]`), computes the model's loss on it through `DistributedDataParallel`
(gradients averaged over ranks), weighs it so the average is the whole batch's mean, and steps
the optimiser. In one process the share is the batch and nothing is wrapped: the numbers are
those of the plain loop.

Randomness: `gen` orders the batches and must stay the same on every rank, so a loss draws
its negatives, masks and augmentations from `Steps.draws`, which is `gen` itself in one
process and this rank's own generator under torchrun.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from pinlab_models.contracts import PinlabModelError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
"""(share, batch, draws) -> the mean loss over `share`, this rank's rows of `batch`, or, for a
loss that gathers the whole batch (`Steps(whole_batch=True)`), the whole batch's loss."""


def world() -> tuple[int, int]:
    """(rank, world size) of the process group torchrun started; (0, 1) outside one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def mean_over_ranks(value: float) -> float:
    """The mean of `value` over the ranks (itself in one process)."""
    _, size = world()
    if size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(total)
    return float(total) / size


def rank_zero_says(flag: bool) -> bool:
    """Rank 0's `flag` on every rank: one decision (stop, out of time) for all of them."""
    _, size = world()
    if size == 1:
        return flag
    box = torch.tensor([int(flag)])
    dist.broadcast(box, src=0)
    return bool(box)


def from_rank_zero(obj: Any) -> Any:
    """Rank 0's `obj` (pickled) on every rank."""
    _, size = world()
    if size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def at_rank_zero(obj: Any) -> list[Any] | None:
    """Every rank's `obj`, in rank order, on rank 0 (None elsewhere)."""
    rank, size = world()
    if size == 1:
        return [obj]
    out: list[Any] | None = [None] * size if rank == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def positions_in(batch: torch.Tensor, share: torch.Tensor) -> torch.Tensor:
    """Where `share`'s rows sit in `batch` (distinct row indexes): a loss whose negatives are
    the whole batch's items scores its share against them and needs its targets' places."""
    order = torch.argsort(batch)
    return order[torch.searchsorted(batch[order], share.contiguous())]


class _Gather(torch.autograd.Function):
    """All ranks' rows, concatenated in rank order; the backward pass sums every rank's
    gradient of the gathered rows and hands each rank those of its own."""

    @staticmethod
    def forward(ctx: Any, rows: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(rows) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, rows.contiguous())
        ctx.rank, ctx.rows = dist.get_rank(), len(rows)
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows]


def gathered(rows: torch.Tensor) -> torch.Tensor:
    """Every rank's `rows` (equal sizes), concatenated in rank order, with gradients flowing
    back to each rank's own: what a loss over the whole batch (contrastive pairs, in-batch
    negatives, proxies' log-sum-exps) needs. `rows` itself in one process."""
    _, size = world()
    if size == 1:
        return rows
    out: torch.Tensor = _Gather.apply(rows)
    return out


class _Objective(nn.Module):
    """The modules a loss trains, so DistributedDataParallel sees their parameters and the
    loss runs as its forward (DDP averages gradients only for what runs through it)."""

    def __init__(self, modules: Sequence[nn.Module], loss: LossFn) -> None:
        super().__init__()
        self.trained = nn.ModuleList(modules)
        self.loss = loss

    def forward(
        self, share: torch.Tensor, batch: torch.Tensor, draws: torch.Generator
    ) -> torch.Tensor:
        return self.loss(share, batch, draws)


class Steps:
    """The optimiser steps of one fit, one per global batch; data-parallel under torchrun.

    `modules` are what `optimizer` trains (the network, and a loss's own parameters such as
    Proxy-Anchor's proxies). `whole_batch`: the loss gathers every rank's rows (`gathered`) and
    is the whole batch's on every rank, so it is not weighed by the share; such batches must
    split evenly. `scheduler` steps after the optimiser.
    """

    def __init__(
        self,
        modules: nn.Module | Sequence[nn.Module],
        optimizer: torch.optim.Optimizer,
        gen: torch.Generator,
        loss: LossFn,
        *,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        whole_batch: bool = False,
    ) -> None:
        self.rank, self.world = world()
        self.optimizer, self.scheduler, self.gen = optimizer, scheduler, gen
        self.whole_batch = whole_batch
        self.count = 0
        """Optimiser steps taken (kept in the training state, so a resume counts on)."""
        self.draws = gen
        objective = _Objective([modules] if isinstance(modules, nn.Module) else modules, loss)
        self._forward: nn.Module = objective
        if self.world > 1:
            seed = gen.initial_seed() * 1_000_003 + self.rank
            self.draws = torch.Generator().manual_seed(seed % 2**63)
            torch.manual_seed(seed % 2**63)  # dropout differs between ranks, as between rows
            device = next(objective.parameters()).device
            self._forward = DistributedDataParallel(
                objective, device_ids=[device] if device.type == "cuda" else None
            )

    def __call__(self, batch: torch.Tensor) -> float:
        """One step on the global `batch`; returns this rank's loss (`run_epochs` averages an
        epoch's over the ranks)."""
        share, weight = self._share(batch)
        loss = self._forward(share, batch, self.draws)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(loss if weight == 1.0 else loss * weight)
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        self.count += 1
        return float(loss.detach())

    def _share(self, batch: torch.Tensor) -> tuple[torch.Tensor, float]:
        """This rank's rows and the weight that makes the ranks' average the batch's mean."""
        if self.world == 1:
            return batch, 1.0
        if self.whole_batch:
            if len(batch) % self.world:
                raise PinlabModelError(
                    f"a batch of {len(batch)} does not split evenly over {self.world} "
                    f"processes; make batch_size a multiple of {self.world}"
                )
            return batch[self.rank :: self.world], 1.0
        share = batch[self.rank :: self.world]
        if len(share) == 0:  # a last batch smaller than the world: step along, adding nothing
            return batch[:1], 0.0
        return share, len(share) * self.world / len(batch)

    def state_dict(self) -> dict[str, Any]:
        """What every rank shares: the optimiser, the schedule, the batch order, the count."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "gen": self.gen.get_state(),
            "count": self.count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"] is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.gen.set_state(state["gen"])
        self.count = int(state["count"])

    def rank_state(self) -> dict[str, torch.Tensor]:
        """What is this rank's own: its draws and PyTorch's global generator (dropout)."""
        return {"draws": self.draws.get_state(), "torch": torch.get_rng_state()}

    def load_rank_state(self, state: dict[str, torch.Tensor]) -> None:
        self.draws.set_state(state["draws"])
        torch.set_rng_state(state["torch"])
