"""The trainers' shared runtime: whether mixed precision trains in bfloat16 is measured."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
import torch

from pinlab_models._runtime import bfloat16_pays

BFLOAT16_KERNELS = torch.ops.mkldnn._is_mkldnn_bf16_supported()


def slow_in(bfloat16: bool) -> Callable[[torch.nn.Module], torch.Tensor]:
    """A loss that takes 20 ms of CPU longer when autocast is (or is not) on."""

    def loss(net: torch.nn.Module) -> torch.Tensor:
        if torch.is_autocast_enabled("cpu") == bfloat16:
            busy = time.process_time() + 0.02
            while time.process_time() < busy:  # CPU time: a sleep would not count
                pass
        out: torch.Tensor = net(torch.ones(4, 3))
        return out.float().sum()

    return loss


def test_bfloat16_is_chosen_only_where_a_step_times_faster_in_it() -> None:
    net = torch.nn.BatchNorm1d(3)
    assert not bfloat16_pays(net, slow_in(True), "cpu")
    # Faster in bfloat16: chosen where the CPU has its kernels at all.
    assert bfloat16_pays(net, slow_in(False), "cpu") == BFLOAT16_KERNELS
    # The probe trains a copy: the net's gradients and batch statistics are untouched.
    assert net.weight.grad is None
    assert net.running_mean is not None and torch.equal(net.running_mean, torch.zeros(3))


def test_cuda_always_trains_in_bfloat16_without_a_probe() -> None:
    def never(net: torch.nn.Module) -> torch.Tensor:
        raise AssertionError("CUDA needs no probe")

    assert bfloat16_pays(torch.nn.Linear(3, 1), never, "cuda")


@pytest.mark.skipif(not BFLOAT16_KERNELS, reason="this CPU has no bfloat16 kernels")
def test_the_probe_steps_in_both_precisions() -> None:
    seen: list[bool] = []

    def loss(net: torch.nn.Module) -> torch.Tensor:
        seen.append(torch.is_autocast_enabled("cpu"))
        out: torch.Tensor = net(torch.ones(4, 3))
        return out.float().sum()

    bfloat16_pays(torch.nn.Linear(3, 1), loss, "cpu")
    assert seen == [False, True] * 3
