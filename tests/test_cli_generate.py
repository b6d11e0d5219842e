"""`pinlab train generator`, `generate`, `eval generator`, `bench generative`: CLI, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pinlab_data import png_text
from pinlab_models import ClassifierConfig
from pinlab_tasks import generative
from pinlab_tasks.cli import run

TINY_UNET = ["--set", "widths=[16,32]", "--set", "heads=2", "--set", "text_tokens=8"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """`pinlab ARGS --json`: root options (--threads) may come first."""
    code = run([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--text", " "], "prompt is empty"),
        (["--text", "x" * 201], "the limit is 200"),
        (["--text", "a star", "-n", "0"], "ask for 1..64"),
        (["--text", "a star", "-n", "65"], "ask for 1..64"),
        (["--text", "a star", "--steps", "0"], "use 1..200"),
        (["--text", "a star", "--steps", "500"], "use 1..200"),
        (["--text", "a star", "--guidance", "25"], "use 0..20"),
        (["--text", "a star", "--autoguidance", "25"], "autoguidance = 25.0 is out of range"),
    ],
)
def test_generate_refuses_bad_requests_with_the_range(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], says: str
) -> None:
    code, out = cli(capsys, "generate", "--run", str(tmp_path), "--out", str(tmp_path / "o"), *args)
    assert code == 2 and says in out["error"]
    assert not (tmp_path / "o").exists()


def test_a_run_without_a_generator_is_bad_input(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out_dir = tmp_path / "o"
    code, out = cli(
        capsys, "generate", "--run", str(tmp_path), "--text", "a star", "--out", str(out_dir)
    )
    assert code == 2 and "has no generator" in out["error"] and "train generator" in out["error"]
    code, out = cli(capsys, "eval", "generator", "--run", str(tmp_path))
    assert code == 2 and "has no generator" in out["error"]


def test_train_generator_refuses_a_config_that_cannot_fit(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out = cli(
        capsys, "train", "generator", "--data", str(tmp_path), "--run", str(tmp_path / "r"),
        "--set", "widths=[12,24]",
    )  # fmt: skip
    assert code == 2 and "multiples of 8" in out["error"]
    code, out = cli(
        capsys, "train", "generator", "--data", str(tmp_path), "--set", "no_such_field=1"
    )
    assert code == 2 and "no_such_field" in out["error"]


def test_train_generator_needs_the_runs_encoder_to_align_with(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = Path(tiny_demo["run_dir"]) / "data"
    bare = tmp_path / "bare"
    code, out = cli(
        capsys, "train", "generator", "--data", str(data), "--run", str(bare), *TINY_UNET
    )  # fmt: skip
    assert code == 2 and "no image encoder" in out["error"] and "train visual" in out["error"]
    assert "align_weight=0" in out["error"] and not (bare / "generator").exists()


@pytest.mark.slow
def test_train_generate_and_evaluate_through_the_cli(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo["run_dir"], run_dir)
    code, out = cli(
        capsys, "train", "generator", "--data", str(run_dir / "data"), "--run", str(run_dir),
        "--epochs", "2", "--seed", "1", *TINY_UNET,
    )  # fmt: skip
    assert code == 0, out
    assert out["model"] == "generator" and out["model_id"].startswith("gen-")
    assert (run_dir / "generator" / "generator.pt").is_file()
    assert (run_dir / "generator" / "metrics.jsonl").read_text().count("\n") == out["epochs"]
    steps = json.loads((run_dir / "run.json").read_text())["steps"]
    assert steps[-1]["command"] == "train generator" and steps[-1]["config"]["seed"] == 1
    encoder_id = json.loads((run_dir / "visual" / "train.json").read_text())["model_id"]
    assert steps[-1]["config"]["aligned_to"] == encoder_id  # REPA's teacher, on the record
    trained = json.loads((run_dir / "generator" / "train.json").read_text())
    assert out["precision"] == trained["precision"] in {"bfloat16", "float32"}  # the probe's

    made = []
    for name in ("a", "b"):
        code, out = cli(
            capsys, "generate", "--run", str(run_dir), "--text", "a striped warm star", "-n", "2",
            "--steps", "3", "--seed", "4", "--out", str(tmp_path / name),
        )  # fmt: skip
        assert code == 0, out
        assert len(out["files"]) == 2
        made.append([Path(f).read_bytes() for f in out["files"]])
    assert made[0] == made[1]  # the same seed, the same PNGs
    code, refused = cli(
        capsys, "generate", "--run", str(run_dir), "--text", "a star", "--out",
        str(run_dir / "data"),
    )  # fmt: skip
    assert code == 2 and "which generate did not write" in refused["error"]  # a dataset
    meta = png_text(made[0][0])
    assert meta["pinlab:generated"] == "true"
    assert meta["pinlab:prompt"] == "a striped warm star"
    assert meta["pinlab:model_id"] == out["model_id"] and meta["pinlab:seed"] == "4"
    # Without --category, the caption prior's category, and the PNG says which it was.
    assert out["category_inferred"] == (out["category"] is not None)
    assert meta["pinlab:category"] == (out["category"] or "")
    assert meta["pinlab:category_inferred"] == str(out["category_inferred"]).lower()
    code, alone = cli(
        capsys, "generate", "--run", str(run_dir), "--text", "a striped warm star", "-n", "2",
        "--steps", "3", "--seed", "4", "--out", str(tmp_path / "alone"), "--no-infer-category",
    )  # fmt: skip
    assert code == 0 and alone["category"] is None and alone["category_inferred"] is False
    if out["category"] is not None:
        assert [Path(f).read_bytes() for f in alone["files"]] != made[0]

    code, out = cli(capsys, "eval", "generator", "--run", str(run_dir), "--steps", "3")
    assert code == 0, out
    assert out["prompts"] >= 4 and out["text_image_agreement"] is None  # no `train align`
    prior = out["category_prior"]
    assert prior["infer_category"] is True and 0 <= prior["inferred_share"] <= 1
    assert 0 <= prior["accuracy"] <= prior["inferred_share"]  # an uninferred one counts wrong
    for name in ("generated", "baseline", "real"):
        fidelity = out["fidelity"][name]
        assert fidelity["frechet_distance"] >= 0 and 0 <= fidelity["precision"] <= 1
        assert 0 <= out["conditional"][name]["category_accuracy"] <= 1
        assert 0 <= out["conditional"][name]["palette_accuracy"] <= 1
        assert 0 <= out["memorisation"][name]["near_duplicate_share"] <= 1
    assert out["real_vs_real_floor"] == out["fidelity"]["real"]["frechet_distance"]
    assert out["retrieval"]["k"] == 10
    assert (run_dir / "generator" / "samples.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((run_dir / "generator" / "eval.json").read_text()) == out

    # The classifier is kept for the next evaluation, unless it was trained with another config.
    record_file = run_dir / "visual" / "classifier" / "train.json"
    record = json.loads(record_file.read_text())
    assert record["model_id"] == out["classifier_id"]
    assert record["config"] == ClassifierConfig(image_size=32).model_dump(mode="json")
    assert record["precision"] in {"bfloat16", "float32"}
    code, again = cli(capsys, "eval", "generator", "--run", str(run_dir), "--steps", "3")
    assert code == 0 and again["classifier_id"] == out["classifier_id"]
    record_file.write_text(json.dumps({**record, "config": {**record["config"], "epochs": 1}}))
    code, again = cli(capsys, "eval", "generator", "--run", str(run_dir), "--steps", "3")
    assert code == 0 and json.loads(record_file.read_text())["config"] == record["config"]
    assert json.loads(record_file.read_text())["seconds"] != record["seconds"]  # trained again
    record_file.write_text('{"model_id": ')  # a torn record is a cache miss too, not an error
    code, again = cli(capsys, "eval", "generator", "--run", str(run_dir), "--steps", "3")
    assert code == 0 and json.loads(record_file.read_text())["config"] == record["config"]


@pytest.mark.slow
def test_bench_generative_trains_its_instruments_and_checks_the_targets(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data, run_dir = Path(tiny_demo["run_dir"]) / "data", tmp_path / "bench"
    bench = ["bench", "generative", "--data", str(data), "--run", str(run_dir), "--seed", "3"]
    # float32: where bfloat16 times about as fast, the probe may choose either, run to run.
    bench += ["--set", "mixed_precision=false"]
    threads = torch.get_num_threads()
    # By default on 2 threads, a worker per seed and one for the instruments, a thread each.
    code, out = cli(capsys, "--threads", "2", *bench, "--seeds", "2", "--epochs", "1", *TINY_UNET)
    assert code == 0, out
    assert out["seeds"] == [3, 4] and out["split_seed"] == 3
    assert (out["workers"], out["threads_per_worker"]) == (3, 1)
    steps = [step["command"] for step in json.loads((run_dir / "run.json").read_text())["steps"]]
    for command, times in [("train visual", 1), ("train align", 1), ("train generator", 2)]:
        assert steps.count(command) == times, steps  # the workers' records interleave, none lost
    # A fresh run trains every instrument, so the whole bench was timed against the budget.
    assert set(out["instruments"]) == set(generative.INSTRUMENTS)
    assert set(out["targets"]) == {*generative.TARGETS, "seconds"}
    timed = out["targets"]["seconds"]
    assert timed["mean"] == out["seconds"]
    assert timed["met"] == (out["seconds"] < generative.TIME_BUDGET_S)
    fd = "fidelity.generated.frechet_distance"
    per_seed = [p[fd] for p in out["per_seed"]]
    assert per_seed[0] != per_seed[1]  # the training seed varies the generator
    assert out["summary"][fd]["mean"] == pytest.approx(np.mean(per_seed), abs=1e-5)
    assert out["summary"][fd]["std"] == pytest.approx(np.std(per_seed, ddof=1), abs=1e-5)
    for key, target in out["targets"].items():
        if key != "seconds":
            assert target["mean"] == out["summary"][key]["mean"]
    for s in (3, 4):
        assert (run_dir / "generative" / f"seed-{s}" / "eval.json").is_file()
    saved = json.loads((run_dir / "generative.json").read_text())
    assert saved == {k: v for k, v in out.items() if k != "run_dir"}

    # Instruments reused: the time is not the whole bench's, so no budget is checked.
    one = ["--seeds", "1", "--workers", "1", "--epochs", "1"]
    code, again = cli(capsys, "--threads", "1", *bench, *one, *TINY_UNET)
    torch.set_num_threads(threads)
    assert code == 0, again
    assert again["instruments"] == {} and "seconds" not in again["targets"]
    # In this process on one thread, seed 3 trains and measures as it did in its worker.
    timed = ("seconds", "images_per_s")
    figures = {k: v for k, v in again["per_seed"][0].items() if not any(t in k for t in timed)}
    assert figures == {k: out["per_seed"][0][k] for k in figures}
