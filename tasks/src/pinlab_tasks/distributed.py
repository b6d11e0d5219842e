"""`pinlab train ... --nproc-per-node N`: the same command, data-parallel under torchrun.

The command re-launches itself with torchrun's own launcher (`torch.distributed.run`'s parser
and `elastic_launch`, in this process, with this Python): N workers per node run the same
arguments less the launch flags, with the run directory fixed. A worker joins the process
group torchrun describes in its environment (gloo on the CPU, NCCL on GPUs); rank 0 writes the
run directory, prints and tracks, the others work in a scratch directory that goes when they
end. The training itself is data-parallel in `pinlab_models` (`Steps`, `run_epochs`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from pinlab_data import PinlabDataError
from pinlab_tasks._app import settings, use_settings
from pinlab_tasks._output import stderr
from pinlab_tasks.runs import RunLayout

LAUNCH_FLAGS = (
    "--nproc-per-node",
    "--nnodes",
    "--node-rank",
    "--rdzv-backend",
    "--rdzv-endpoint",
    "--rdzv-id",
    "--rdzv-timeout",
)
"""Options the launcher takes for itself; the workers get every other argument."""


class LaunchError(PinlabDataError):
    """Bad launch input (a rendezvous that timed out, flags that do not fit): exit 2."""


@dataclass(frozen=True)
class Launch:
    """How many processes, on how many nodes, meeting where (torchrun's terms)."""

    nproc_per_node: int = 1
    nnodes: str = "1"
    node_rank: int = 0
    rdzv_backend: str = "c10d"
    rdzv_endpoint: str | None = None
    rdzv_id: str = "pinlab"
    rdzv_timeout: int = 900

    @property
    def wanted(self) -> bool:
        """More than this one process: the command launches workers instead of training."""
        return self.nproc_per_node > 1 or self.nnodes != "1"

    @property
    def standalone(self) -> bool:
        return self.nnodes == "1"

    def torchrun_args(self) -> list[str]:
        """torchrun's own flags for this launch (one node: a private endpoint on a free port)."""
        if self.standalone:
            endpoint, run_id = "localhost:0", uuid.uuid4().hex
        elif self.rdzv_endpoint is None:
            raise LaunchError(
                f"--nnodes {self.nnodes} needs --rdzv-endpoint HOST:PORT, an address of the "
                "first node that every node can reach"
            )
        else:
            endpoint, run_id = self.rdzv_endpoint, self.rdzv_id
        return [
            f"--nproc-per-node={self.nproc_per_node}",
            f"--nnodes={self.nnodes}",
            f"--node-rank={self.node_rank}",
            f"--rdzv-backend={self.rdzv_backend}",
            f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}",
            f"--rdzv-conf=join_timeout={self.rdzv_timeout}",
            "--max-restarts=0",
        ]

    def timeout_message(self) -> str:
        return (
            f"torchrun rendezvous at {self.rdzv_endpoint or 'localhost'} (id {self.rdzv_id}) "
            f"timed out after {self.rdzv_timeout} s waiting for {self.nnodes} nodes; start "
            "every node with the same --rdzv-endpoint, --rdzv-id and --nnodes (and its own "
            "--node-rank), give them longer with --rdzv-timeout, or train on one node with "
            "--nnodes 1"
        )


def worker_args(args: list[str], run_dir: Path) -> list[str]:
    """`args` without the launch flags, with `--run` naming `run_dir` (every rank, one run)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg in LAUNCH_FLAGS:
            skip = True
        elif not arg.startswith(tuple(f"{flag}=" for flag in LAUNCH_FLAGS)):
            out.append(arg)
    has_run = any(a == "--run" or a.startswith("--run=") for a in out)
    return out if has_run else [*out, "--run", str(run_dir)]


def launch(plan: Launch, args: list[str], run_dir: Path) -> int:
    """Run this command's workers under torchrun; their exit code (2: bad input, which rank 0
    has printed). A rendezvous that times out raises `LaunchError` (one line, exit 2)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError, RendezvousTimeoutError
    from torch.distributed.launcher.api import elastic_launch
    from torch.distributed.run import config_from_args, get_args_parser

    if under_torchrun():
        raise LaunchError("this process is already a torchrun worker; drop --nproc-per-node")
    torchrun = [*plan.torchrun_args(), "--module", "pinlab_tasks"]
    # Share the cores out: N workers each with every core would fight over them.
    threads = str(max(1, settings().threads // plan.nproc_per_node))
    with _environment(OMP_NUM_THREADS=threads, PINLAB_THREADS=threads), _quiet_launcher():
        config, command, module = config_from_args(get_args_parser().parse_args(torchrun))
        # Added after parsing: torchrun's parser would take `--run` for its own `--run-path`.
        command_args = [*module, *worker_args(args, run_dir)]
        try:
            elastic_launch(config, command)(*command_args)
        except RendezvousTimeoutError:
            raise LaunchError(plan.timeout_message()) from None
        except RendezvousError as exc:
            raise LaunchError(
                f"torchrun rendezvous failed ({exc}); check --rdzv-endpoint and --rdzv-backend"
            ) from None
        except ChildFailedError as exc:
            codes = {failure.exitcode for failure in exc.failures.values()}
            return 2 if 2 in codes else 1
        except SignalException:
            stderr.print(
                f"interrupted; the workers stopped with every file whole. Continue from the "
                f"last epoch with the same command and --resume --run {run_dir}",
                markup=False, highlight=False, soft_wrap=True,
            )  # fmt: skip
            return 130
    return 0


@contextlib.contextmanager
def _environment(**values: str) -> Iterator[None]:
    """Environment variables the workers inherit, put back afterwards."""
    before = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def _quiet_launcher() -> Iterator[None]:
    """torchrun's agent logs each failure at length; pinlab says it in one line."""
    loggers = [
        logging.getLogger(name)
        for name in list(logging.root.manager.loggerDict)
        if name.startswith("torch.distributed")
    ]
    levels = [logger.level for logger in loggers]
    if not settings().debug:
        for logger in loggers:
            logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def under_torchrun() -> bool:
    """Started by torchrun (its environment names this process's rank)."""
    return "TORCHELASTIC_RUN_ID" in os.environ and "RANK" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if under_torchrun() else 0


@contextlib.contextmanager
def worker(layout: RunLayout, device: str) -> Iterator[RunLayout]:
    """Where this process writes: `layout` itself outside torchrun. A torchrun worker joins
    the process group first; rank 0 keeps `layout`, the others get a scratch run directory
    (removed when they end), no tracking, no progress and no stdout."""
    if not under_torchrun():
        yield layout
        return
    # SIGTERM (the launcher stopping its workers) unwinds like Ctrl-C: atomic writers clean up.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    cuda = device != "cpu" and torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        if dist.get_rank() == 0:
            yield layout
            return
        use_settings(settings().model_copy(update={"tracking": False, "progress": "off"}))
        with (
            tempfile.TemporaryDirectory(prefix=f"pinlab-rank{dist.get_rank()}-") as scratch,
            contextlib.redirect_stdout(io.StringIO()),
        ):
            yield RunLayout(Path(scratch))
    finally:
        dist.destroy_process_group()
