"""The default demo meets the numbers the README promises (slow: about two minutes)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from pinlab_tasks.cli import run


@pytest.mark.slow
def test_default_demo_meets_its_targets(tmp_path: Path) -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(["demo", "--out", str(tmp_path / "run"), "--json"])
    assert code == 0
    result = json.loads(buffer.getvalue())
    trained, untrained = result["visual"]["trained"], result["visual"]["untrained"]
    assert trained["recall@1"] >= 0.90
    assert trained["recall@1"] - untrained["recall@1"] >= 0.25
    models = result["recommender"]
    best = max(m["ndcg@10"] for m in models.values())
    assert best >= 1.5 * models["popularity"]["ndcg@10"]
    assert result["seconds"] < 180
    assert result["peak_rss_mb"] < 3 * 1024
