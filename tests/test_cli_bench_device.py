"""`pinlab bench device` on the CPU at its smallest scale: every figure present and positive."""

from __future__ import annotations

import json

import pytest

from pinlab_tasks.cli import run


@pytest.mark.slow  # about 30 s: it trains an encoder and SASRec for 2 epochs each
def test_bench_device_reports_every_figure_on_the_cpu(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["bench", "device", "--device", "cpu", "--scale", "0.01", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0, payload
    assert payload["device"] == "cpu"
    for key in ("encoder_train_images_per_s_fp32", "embed_images_per_s_fp32",
                "generate_8_images_per_s"):  # fmt: skip
        assert payload[key] > 0
    assert "encoder_train_images_per_s_bf16" not in payload  # autocast is CUDA-only
    assert len(payload["sasrec_epoch_seconds"]) == 2
    assert all(s > 0 for s in payload["sasrec_epoch_seconds"])


def test_bench_device_refuses_a_scale_out_of_range(capsys: pytest.CaptureFixture[str]) -> None:
    code = run(["bench", "device", "--scale", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert "--scale" in captured.out + captured.err
