"""`pinlab bench ope` and `pinlab bench bandits` end to end on a tiny world, and their pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinlab_tasks.cli import run
from pinlab_tasks.report import build_report

TINY = ["--users", "60", "--items", "20", "--seed", "1"]


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, Any]]:
    code = run([*args, "--json"])
    return code, json.loads(capsys.readouterr().out)


@pytest.mark.slow  # a world, two REINFORCE fits and every pair over seeds
def test_bench_ope_writes_its_run_and_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, payload = _cli(
        ["bench", "ope", *TINY, "--seeds", "3", "--rounds", "300", "--no-peers",
         "--run", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, payload
    pairs = {p["pair"]: p for p in payload["pairs"]}
    assert len(pairs) == 5
    for pair in pairs.values():
        assert pair["truth_per_impression"] > 0
        dm = pair["estimators"]["dm"]
        assert dm["runs"] == 3 and dm["estimated"] == 3 and dm["mean"] > 0
    unsupported = pairs["greedy -> softmax(temperature=0.5)"]["estimators"]
    for name in ("ips", "snips", "dr", "switch-dr", "dr-os", "pseudo-inverse"):
        assert unsupported[name]["unsupported"] == 3 and unsupported[name]["mean"] is None
    headline = payload["pairs"][0]["estimators"]["dr"]
    assert payload["targets"]["dr_mean_relative_error"] == headline["mean_relative_error"]
    assert 0 <= headline["coverage"] <= 1
    assert payload["reinforce"]["rows"] > 0
    assert json.loads((tmp_path / "ope.json").read_text())["pairs"] == payload["pairs"]
    assert (tmp_path / "ope_errors.png").read_bytes()[:4] == b"\x89PNG"
    report = build_report(tmp_path)
    assert report.kind == "bench ope" and report.plots == 1
    assert "target" in report.sections and "errors" in report.sections


@pytest.mark.slow  # every policy over two seeds, REINFORCE's fits, the speed check
def test_bench_bandits_writes_its_run_and_page(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, payload = _cli(
        ["bench", "bandits", *TINY, "--seeds", "2", "--rounds", "600", "--train-rounds", "300",
         "--speed-impressions", "3000", "--run", str(tmp_path)],
        capsys,
    )  # fmt: skip
    assert code == 0, payload
    policies = payload["policies"]
    assert set(policies) >= {"random", "greedy", "linucb", "thompson", "neural-linear", "reinforce"}
    for p in policies.values():
        assert len(p["regret"]["per_seed"]) == 2 and p["regret"]["mean"] >= 0
        assert p["curve"]["rounds"][-1] == 600
        assert (np.diff(p["curve"]["regret"]) >= -1e-9).all()  # regret never goes back
    # A uniformly random slate loses the most against the best slate.
    assert max(policies, key=lambda n: policies[n]["regret"]["mean"]) == "random"
    assert payload["simulator_speed"]["impressions"] == 3000
    report = build_report(tmp_path)
    assert report.kind == "bench bandits" and report.plots == 1
    assert report.sections == ["policies", "curves", "reinforce"]
