"""`pinlab export onnx`, `--runtime` on search and serve, and `pinlab bench infer`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pinlab_data import load_dataset
from pinlab_models import CNNEncoder, OnnxMetadata, sha256_file
from pinlab_models.testing import handmade_onnx_encoder
from pinlab_tasks.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run pinlab in-process with --json; returns (exit code, parsed stdout, stderr)."""
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def query_image(run_dir: Path, tmp_path: Path, row: int = 3) -> Path:
    ds = load_dataset(run_dir / "data")
    assert ds.images is not None
    path = tmp_path / "query.png"
    Image.fromarray(np.asarray(ds.images[row])).save(path)
    return path


def test_an_onnx_file_of_another_model_exits_2_naming_it(
    serve_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A copied run whose encoder.onnx came from another checkpoint: one line, exit 2."""
    run_dir = tmp_path / "run"
    shutil.copytree(serve_run, run_dir)
    checkpoint = run_dir / "visual" / "encoder.pt"
    encoder = CNNEncoder.load(checkpoint)
    other = OnnxMetadata(
        kind="image-encoder",
        precision="fp32",
        source="elsewhere/visual/encoder.pt",
        source_sha256="f" * 64,
        model_id="cnn-ffffffffffffffff",
        inputs="images: uint8 [N, 32, 32, 3]",
        embedding_dim=encoder.embedding_dim,
        image_size=encoder.image_size,
        exported_with="test",
    )
    onnx = run_dir / "onnx" / "encoder.onnx"
    handmade_onnx_encoder(onnx, encoder.image_size, encoder.embedding_dim, other)
    image = query_image(run_dir, tmp_path)
    code, out, _ = cli(capsys, "search", "--run", str(run_dir), "--image", str(image),
                       "--runtime", "onnx")  # fmt: skip
    assert code == 2
    message = out["error"]
    assert "\n" not in message and str(onnx) in message
    assert f"weights sha256 ffffffffffff, but {checkpoint} is {sha256_file(checkpoint)[:12]}" in (
        message
    )
    assert f"re-export it with `pinlab export onnx --run {run_dir}`" in message
    # The same file stops `serve` before it listens.
    code, out, _ = cli(capsys, "serve", "--run", str(run_dir), "--runtime", "onnx", "--port", "0")
    assert code == 2 and str(onnx) in out["error"]


def test_serve_without_an_export_exits_2(
    serve_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "serve", "--run", str(serve_run), "--runtime", "onnx-int8")
    assert code == 2
    assert "encoder.int8.onnx, which does not exist" in out["error"]
    assert f"`pinlab export onnx --run {serve_run} --int8`" in out["error"]


@pytest.mark.slow
def test_export_writes_checked_files_with_their_fingerprint(onnx_run: Path) -> None:
    result = json.loads((onnx_run.parent / "export_stdout.json").read_text())
    names = sorted(Path(f["file"]).name for f in result["files"])
    assert names == ["encoder.int8.onnx", "encoder.onnx", "text.int8.onnx", "text.onnx"]
    assert all(f["within"] for f in result["files"]), result["files"]
    assert json.loads((onnx_run / "onnx" / "export.json").read_text()) == result
    steps = json.loads((onnx_run / "run.json").read_text())["steps"]
    assert steps[-1]["command"] == "export onnx" and steps[-1]["config"]["int8"] is True
    assert not list((onnx_run / "onnx").glob(".*"))  # no temporary file left behind


@pytest.mark.slow
def test_search_by_image_on_each_runtime(
    onnx_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = query_image(onnx_run, tmp_path)
    hits = {}
    for runtime in ("torch", "onnx", "onnx-int8"):
        code, out, err = cli(capsys, "search", "--run", str(onnx_run), "--image", str(image),
                             "--runtime", runtime, "-k", "5")  # fmt: skip
        assert code == 0, err
        assert out["runtime"] == runtime
        hits[runtime] = [(h["pin_id"], h["score"]) for h in out["hits"]]
    assert [p for p, _ in hits["onnx"]] == [p for p, _ in hits["torch"]]
    np.testing.assert_allclose(
        [s for _, s in hits["onnx"]], [s for _, s in hits["torch"]], atol=1e-5
    )
    assert hits["onnx-int8"][0][0] == hits["torch"][0][0]  # the pin itself comes first


@pytest.mark.slow
def test_bench_infer_on_an_exported_run(onnx_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = cli(capsys, "bench", "infer", "--run", str(onnx_run), "--rounds", "2",
                         "--batch-sizes", "4,16")  # fmt: skip
    assert code == 0, err
    assert out["world"]["exported"] is False  # the run's exports were current
    for key in ("images", "texts"):
        assert [row["batch_size"] for row in out[key]] == [4, 16]
        for row in out[key]:
            assert row["torch"]["per_s"] > 0 and "speedup" not in row["torch"]
            assert row["onnx"]["speedup"] > 0 and row["onnx-int8"]["speedup"] > 0
    quality = out["image_quality"]
    assert quality["queries"] > 0
    assert quality["onnx"]["vs_torch"]["max_abs_diff"] <= 1e-4
    assert quality["onnx"]["recall@10"] == quality["torch"]["recall@10"]
    assert 0 <= quality["onnx-int8"]["recall@10"] <= 1
    assert "text_quality" not in out  # the run is not aligned
    targets = out["targets"]
    assert set(targets) == {"image_onnx", "image_onnx-int8", "image_onnx_or_int8"}
    assert targets["image_onnx"]["min_speedup"] == min(r["onnx"]["speedup"] for r in out["images"])
