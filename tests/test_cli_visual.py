"""Images from a folder through the real CLI: load, dedupe, train by recipe, evaluate, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pinlab_tasks.cli import run

TINY_NET = ["--set", "widths=[4, 8]", "--set", "embedding_dim=8", "--set", "batch_size=8"]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def image_folder(root: Path) -> Path:
    """Two classes of 20 pictures (a bright patch left or right), one copy, one broken file."""
    rng = np.random.default_rng(0)
    for label, cols in (("left", slice(2, 12)), ("right", slice(20, 30))):
        (root / label).mkdir(parents=True)
        for i in range(20):
            pixels = rng.integers(0, 80, (32, 32, 3), dtype=np.uint8)
            pixels[4:28, cols] = rng.integers(150, 255, 3, dtype=np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    (root / "left" / "copy.png").write_bytes((root / "left" / "3.png").read_bytes())
    (root / "right" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_images_to_dedupe_to_recipe_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = image_folder(tmp_path / "photos")
    data, runs = tmp_path / "data", tmp_path / "run"
    code, out, _ = cli(capsys, "data", "load", "images", str(source), "--out", str(data))
    assert code == 0 and out["loaded"] == 41 and out["skipped"] == 1
    assert (data / "skipped_images.csv").read_text().count("broken.jpg") == 1

    code, out, _ = cli(capsys, "data", "dedupe", str(data))
    assert code == 0 and (data / "duplicates.json").is_file()
    copies = [c["pin_ids"] for c in out["clusters"] if len(c["pin_ids"]) == 2]
    assert copies and out["duplicates"] >= 1

    code, out, err = cli(
        capsys,
        *("train", "encoder", "--data", str(data), "--run", str(runs)),
        *("--recipe", "simclr", "--epochs", "1", *TINY_NET),
    )
    assert code == 0, err
    assert out["recipe"] == "simclr" and out["model_id"].startswith("cnn-")
    steps = json.loads((runs / "run.json").read_text())["steps"]
    assert steps[-1]["config"]["recipe"]["recipe"] == "simclr"

    code, out, _ = cli(capsys, "eval", "visual", "--run", str(runs))
    assert code == 0 and 0 <= out["trained"]["recall@1"] <= 1

    code, out, _ = cli(capsys, "data", "dedupe", str(data), "--run", str(runs))
    assert code == 0 and out["model_id"].startswith("cnn-") and out["min_cosine"] == 0.9
    assert (runs / "duplicates.json").is_file()

    other = tmp_path / "run2"
    code, out, err = cli(
        capsys,
        *("train", "encoder", "--data", str(data), "--run", str(other), "--recipe", "supcon"),
        *("--protocol", "unseen-classes", "--epochs", "1", *TINY_NET),
    )
    assert code == 0, err
    assert out["protocol"] == "held-out-images"  # two classes are too few to split
    code, out, _ = cli(capsys, "eval", "visual", "--run", str(other))
    assert code == 0 and out["protocol"] == "held-out-images" and out["num_queries"] > 10


def test_visual_bad_input_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    code, out, _ = cli(capsys, "data", "load", "images", str(tmp_path / "empty"), "--out", "x")
    assert code == 2 and "holds no files" in out["error"] and "\n" not in out["error"]
    source = image_folder(tmp_path / "photos")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nphotos/left/1.png,a\nphotos/gone.png,b\n")
    code, out, _ = cli(capsys, "data", "load", "images", str(manifest), "--out", "x")
    assert code == 2 and "photos/gone.png" in out["error"]
    code, out, _ = cli(
        capsys, "data", "load", "images", str(manifest), "--out", "x", "--label-col", "kind"
    )
    assert code == 2 and "columns are: path, label" in out["error"]
    data = tmp_path / "data"
    assert cli(capsys, "data", "load", "images", str(source), "--out", str(data))[0] == 0
    code, out, _ = cli(capsys, "train", "encoder", "--data", str(data), "--arch", "resnet18x")
    assert code == 2 and "did you mean resnet18" in out["error"]
    code, out, _ = cli(capsys, "train", "encoder", "--data", str(data), "--pretrained")
    assert code == 2 and "--no-pretrained" in out["error"]
    code, out, _ = cli(capsys, "train", "encoder", "--data", str(data), "--set", "hue=2")
    assert code == 2 and "hue" in out["error"]
    assert not Path("x").exists()
