"""Where a number came from: code version, command line, library versions, hardware, seeds, data."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from pinlab_data import dataset_fingerprint

LIBRARIES = ("torch", "numpy", "faiss-cpu", "faiss-gpu", "mlflow")
PINLAB_PACKAGES = (
    "pinlab-data",
    "pinlab-models",
    "pinlab-eval",
    "pinlab-serve",
    "pinlab-tasks",
)


def provenance(
    data_dir: Path | None = None, seeds: Mapping[str, int] | None = None
) -> dict[str, Any]:
    """Everything needed to tell two runs' setups apart, as plain JSON values."""
    return {
        **_static(),
        "argv": list(sys.argv),
        "torch_threads": torch.get_num_threads(),
        "seeds": dict(seeds or {}),
        "dataset_fingerprint": None if data_dir is None else dataset_fingerprint(data_dir),
    }


@cache
def _static() -> dict[str, Any]:
    """The parts that cannot change within one process."""
    versions = {name: _version(name) for name in LIBRARIES + PINLAB_PACKAGES}
    return {
        **git_state(Path(__file__).parent),
        "python": platform.python_version(),
        "versions": {k: v for k, v in versions.items() if v is not None},
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def git_state(inside: Path) -> dict[str, Any]:
    """The commit of the checkout holding `inside`, and whether tracked files differ from it.

    Untracked files that git does not ignore count as dirty too: a new module changes a run.
    Both are None when pinlab is installed from a wheel rather than run from a checkout.
    """
    try:
        commit = _git(inside, "rev-parse", "HEAD")
        dirty = bool(_git(inside, "status", "--porcelain"))
    except (OSError, subprocess.CalledProcessError):
        return {"git_commit": None, "git_dirty": None}
    return {"git_commit": commit, "git_dirty": dirty}


def _git(inside: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(inside), *args], capture_output=True, text=True, check=True, timeout=10
    )
    return done.stdout.strip()


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo on Linux; platform's guess elsewhere."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return platform.processor() or platform.machine()
