"""`pinlab train align`, `pinlab search --text` and the text metrics of `pinlab eval visual`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from pinlab_tasks.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = run([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.mark.slow
def test_align_then_search_by_text_and_evaluate(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo["run_dir"], run_dir)
    code, out = cli(capsys, "train", "align", "--run", str(run_dir), "--epochs", "2")
    assert code == 0, out
    assert out["model"] == "align" and out["epochs"] <= 2 and out["model_id"].startswith("align-")
    assert (run_dir / "visual" / "image_text.pt").is_file()
    assert (run_dir / "visual" / "align" / "metrics.jsonl").is_file()
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    assert steps[-1]["command"] == "train align" and steps[-1]["config"]["align"]["epochs"] == 2

    code, out = cli(capsys, "search", "--run", str(run_dir), "--text", "a neon star", "-k", "3")
    assert code == 0 and out["query"] == {"text": "a neon star"} and len(out["hits"]) == 3
    scores = [hit["score"] for hit in out["hits"]]
    assert scores == sorted(scores, reverse=True)

    code, out = cli(capsys, "eval", "visual", "--run", str(run_dir), "--seed", "1")
    assert code == 0
    text = out["text_to_image"]
    assert text["relevance"] == "category+palette+texture" and text["num_queries"] > 0
    assert text["seed"] == 0  # the alignment's own held-out pins, whatever --seed says
    for name in ("text_recall@1", "text_recall@10", "zero_shot_accuracy"):
        assert 0 <= text["metrics"][name] <= 1
    assert text["metrics"]["text_recall@1"] <= text["metrics"]["text_recall@10"]

    code, out = cli(capsys, "search", "--run", str(run_dir), "--text", " ")
    assert code == 2 and "empty" in out["error"]
    code, out = cli(capsys, "search", "--run", str(run_dir), "--text", "x", "--pin", "1")
    assert code == 2 and "exactly one" in out["error"]


def test_text_search_without_an_aligned_model_says_how(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = cli(capsys, "search", "--run", tiny_demo["run_dir"], "--text", "a star")
    assert code == 2 and "pinlab train align" in out["error"]


@pytest.mark.slow
def test_demo_align_adds_text_metrics_and_a_text_search(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "demo"
    code, out = cli(capsys, "demo", "--preset", "tiny", "--align", "--out", str(out_dir))
    assert code == 0, out
    assert out["align"]["relevance"] == "category+palette+texture"
    assert 0 <= out["align"]["metrics"]["text_recall@10"] <= 1
    assert len(out["search_text"]["hits"]) == 5
    assert (out_dir / "visual" / "image_text.pt").is_file()
    config = json.loads((out_dir / "run.json").read_text())["steps"][0]["config"]
    assert config["with_align"] is True and config["align"]["epochs"] == 2
