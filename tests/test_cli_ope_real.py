"""`pinlab bench ope-real`: the Open Bandit check through the CLI, or exit 2 without obp."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from pinlab_tasks.cli import run


def test_without_obp_it_exits_2_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "obp" else real(name, *a)
    )
    assert run(["bench", "ope-real", "--run", str(tmp_path / "r"), "--json"]) == 2
    assert "--extra obp" in json.loads(capsys.readouterr().out)["error"]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # obp's import, its BTS simulation and three reward-model fits
@pytest.mark.skipif(
    importlib.util.find_spec("obp") is None,
    reason="obp is an optional extra: uv sync --all-packages --extra obp",
)
def test_bench_ope_real_writes_its_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code = run(["bench", "ope-real", "--campaign", "men", "--run", str(tmp_path), "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0, payload
    assert payload["campaign"] == "men" and payload["agreement"]["agree"]
    assert json.loads((tmp_path / "ope_real.json").read_text())["rows"] == payload["rows"]
    assert json.loads((tmp_path / "run.json").read_text())["steps"][0]["command"] == (
        "bench ope-real"
    )
