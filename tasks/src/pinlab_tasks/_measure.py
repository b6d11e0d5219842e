"""Measure a step alone: in a child process (wall time, peak memory), or in this process by
the memory it adds over what the process already held."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

# Linux carries a process's peak RSS across exec, so a child forked from this (large) process
# would report this process's memory as its own. A small launcher starts the child instead and
# reports the child's rusage from wait4.
_LAUNCHER = """
import json, os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"exit_code": os.waitstatus_to_exitcode(status), "maxrss": usage.ru_maxrss}, f)
"""


@dataclass(frozen=True)
class Measured:
    """What a child process printed last (a JSON document), its wall time and peak RSS."""

    result: Any
    wall_seconds: float
    peak_rss_mb: float


def run_measured(code: str, *args: str) -> Measured:
    """Run `python -c code args...` and measure it; its last stdout line must be JSON.

    A failing child raises RuntimeError with the last line of its stderr.
    """
    with tempfile.TemporaryDirectory(prefix="pinlab-measure-") as tmp:
        out, err, usage = (Path(tmp) / name for name in ("stdout", "stderr", "usage.json"))
        command = [sys.executable, "-c", _LAUNCHER, str(usage), sys.executable, "-c", code, *args]
        with out.open("wb") as stdout, err.open("wb") as stderr:
            start = time.perf_counter()
            subprocess.run(command, stdout=stdout, stderr=stderr, check=False)
            wall = time.perf_counter() - start
        child = json.loads(usage.read_text()) if usage.exists() else {"exit_code": -1}
        if child["exit_code"] != 0:
            tail = err.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"measured process exited {child['exit_code']}: {tail[0]}")
        lines = out.read_text().strip().splitlines()
    # Linux reports kilobytes, macOS bytes.
    peak = child["maxrss"] / (2**20 if sys.platform == "darwin" else 2**10)
    return Measured(json.loads(lines[-1]) if lines else None, wall, round(peak, 1))


@contextmanager
def peak_rss() -> Iterator[Callable[[], float]]:
    """Samples this process's resident memory while the block runs; yields the peak in MB."""
    process = psutil.Process()
    peak = [process.memory_info().rss]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], process.memory_info().rss)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        yield lambda: max(peak[0], process.memory_info().rss) / 2**20
    finally:
        done.set()
        thread.join()


@contextmanager
def added_peak_rss() -> Iterator[Callable[[], float]]:
    """The peak resident memory the block added over what the process held when it began, MB.

    What one fit costs inside a long-lived process: the libraries, data and earlier models
    already resident are not counted (memory an earlier step freed to the allocator and this
    one reuses is not counted either, so it is a lower bound).
    """
    before = psutil.Process().memory_info().rss / 2**20
    with peak_rss() as peak:
        yield lambda: max(0.0, peak() - before)
