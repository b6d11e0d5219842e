"""A save killed (SIGKILL) at each point of its sequence leaves a loadable index behind."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pinlab_serve import MANIFEST_FILE, PinIndex

# The child builds a new index over the same directory and dies where the hook says: while
# the index temp file is being written, after the index rename but before the manifest's, or
# after the manifest rename (the new index is committed).
_CHILD = """
import os, signal, sys
from pathlib import Path
import numpy as np
import pinlab_serve._index as impl
from pinlab_serve import PinIndex

directory, stage, rows = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(1)
index = PinIndex.build(
    rng.standard_normal((rows, 16)).astype(np.float32),
    np.arange(rows),
    "new-model",
    hnsw_threshold=rows + 1,  # exact: building a large graph would take minutes
)
real_write, real_fsync, writes = impl._write_atomic, os.fsync, []

def die(*_args):
    os.kill(os.getpid(), signal.SIGKILL)

def write(path, data):
    writes.append(path.name)
    if stage == "mid-index" and len(writes) == 1:
        impl._CHUNK = 4096
        os.fsync = die  # the temp file is on disk, the rename has not happened
    if stage == "before-manifest" and len(writes) == 2:
        die()
    real_write(path, data)
    if stage == "after-manifest" and len(writes) == 2:
        die()

impl._write_atomic = write
if stage == "signal":
    print("saving", flush=True)
index.save(directory)
print("saved", flush=True)
"""


def _old_index(directory: Path) -> PinIndex:
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((50, 16)).astype(np.float32)
    index = PinIndex.build(emb, np.arange(50), "old-model")
    index.save(directory)
    return index


def _run_child(directory: Path, stage: str, rows: int = 300) -> int:
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory), stage, str(rows)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return proc.returncode


@pytest.mark.parametrize("stage", ["mid-index", "before-manifest"])
def test_killed_save_keeps_previous_index(tmp_path: Path, stage: str) -> None:
    old = _old_index(tmp_path)
    assert _run_child(tmp_path, stage) == -signal.SIGKILL
    loaded = PinIndex.load(tmp_path, expect_model_id="old-model")
    assert loaded.manifest == old.manifest
    assert len(loaded) == 50
    # The killed save may leave a temp file or an orphan index file; the next save cleans
    # the orphan and loading never looks at either.
    _old_index(tmp_path)
    names = {p.name for p in tmp_path.iterdir() if ".tmp-" not in p.name}
    assert names == {old.manifest.file, MANIFEST_FILE}


def test_killed_after_commit_loads_new_index(tmp_path: Path) -> None:
    _old_index(tmp_path)
    assert _run_child(tmp_path, "after-manifest") == -signal.SIGKILL
    loaded = PinIndex.load(tmp_path, expect_model_id="new-model")
    assert len(loaded) == 300


@pytest.mark.slow
def test_sigkill_during_large_save(tmp_path: Path) -> None:
    """No hook: SIGKILL from outside while a ~64 MB index is being written."""
    old = _old_index(tmp_path)
    with subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), "signal", "1000000"],
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "saving"
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob(".index-*.tmp-*")) and time.monotonic() < deadline:
            time.sleep(0.001)
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    assert list(tmp_path.glob(".index-*.tmp-*")), "the kill came after the temp file was gone"
    loaded = PinIndex.load(tmp_path)
    assert loaded.manifest == old.manifest
