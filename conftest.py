"""Fixtures shared by every test directory (one conftest, so mypy sees one module)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).parent


def shared_datasets() -> Path:
    """Real data for tests: PINLAB_TEST_DATA, default ../shared/datasets from the root."""
    return Path(os.environ.get("PINLAB_TEST_DATA", ROOT.parent / "shared" / "datasets"))


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The tiny demo, run once through the real CLI; tests read its run directory."""
    from pinlab_tasks.cli import run

    out = tmp_path_factory.mktemp("demo") / "run"
    capture = out.parent / "stdout.json"
    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["demo", "--preset", "tiny", "--out", str(out), "--json", "--seed", "1"])
    capture.write_text(buffer.getvalue())
    assert code == 0, buffer.getvalue()
    result: dict[str, Any] = json.loads(buffer.getvalue())
    return result
