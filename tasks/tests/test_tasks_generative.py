"""The generative workflow's pieces: the no-learning baseline and the report pages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pinlab_eval import sample_grid_png
from pinlab_tasks.generative import mean_image_baseline
from pinlab_tasks.report import build_report, detect_kind


def test_baseline_is_the_prompted_categorys_mean_plus_its_own_noise() -> None:
    # Category 0 images are all 10, category 1 all 200: zero spread, so no noise at all.
    images = np.concatenate(
        [np.full((3, 4, 4, 3), 10, np.uint8), np.full((2, 4, 4, 3), 200, np.uint8)]
    )
    labels = np.array([0, 0, 0, 1, 1])
    out = mean_image_baseline(images, labels, np.array([1, 0, 1]), seed=0)
    assert out.shape == (3, 4, 4, 3) and out.dtype == np.uint8
    assert (out[[0, 2]] == 200).all() and (out[1] == 10).all()
    # With spread, the noise is seeded and per category.
    noisy = images.copy()
    noisy[0] = 0
    a = mean_image_baseline(noisy, labels, np.array([0, 0]), seed=1)
    b = mean_image_baseline(noisy, labels, np.array([0, 0]), seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a[0], a[1])
    # No categories: every prompt gets the whole training set's mean.
    whole = mean_image_baseline(images, None, np.zeros(4, np.int64), seed=0)
    assert whole.shape == (4, 4, 4, 3) and len(np.unique(whole)) > 1


def _eval(fd: float) -> dict[str, Any]:
    sets = ("generated", "baseline", "real")
    return {
        "prompts": 40,
        "prompts_are": "captions of held-out pins that no training pin has",
        "steps": 25,
        "guidance": 3.0,
        "seed": 0,
        "fidelity": {
            name: {"frechet_distance": fd * (i + 1), "precision": 0.5, "recall": 0.4}
            for i, name in enumerate(sets)
        },
        "real_vs_real_floor": fd * 3,
        "conditional": {name: {"category_accuracy": 0.9, "palette_accuracy": 0.8} for name in sets},
        "text_image_agreement": {**dict.fromkeys(sets, 0.3), "real_shuffled": 0.1},
        "retrieval": {"k": 10, **{f"{name}_precision@10": 0.7 for name in sets}},
        "memorisation": {
            name: {
                "near_duplicate_share": 0.0,
                "nn_pixel_rms": {"p5": 0.1, "p25": 0.2, "p50": 0.3, "p75": 0.4, "p95": 0.5},
            }
            for name in sets
        },
    }


def _grid() -> bytes:
    image = np.zeros((2, 8, 8, 3), dtype=np.uint8)
    return sample_grid_png([("a <b>star</b>", image[:1], image)])


def test_a_run_page_shows_the_generator_and_its_samples(tmp_path: Path) -> None:
    (tmp_path / "generator").mkdir()
    (tmp_path / "run.json").write_text(json.dumps({"steps": []}))
    (tmp_path / "generator" / "eval.json").write_text(json.dumps(_eval(0.123)))
    (tmp_path / "generator" / "samples.png").write_bytes(_grid())
    assert detect_kind(tmp_path) == "run"
    report = build_report(tmp_path)
    assert "generator-generator" in report.sections
    assert "0.123" in report.html and "near-duplicate share" in report.html
    assert report.plots >= 1
    assert "the caption alone" in report.html  # an evaluation from before the caption prior
    prior = {"infer_category": True, "inferred_share": 0.975, "accuracy": 0.95}
    (tmp_path / "generator" / "eval.json").write_text(
        json.dumps({**_eval(0.123), "category_prior": prior})
    )
    html = build_report(tmp_path).html
    assert "caption prior inferred (inferred for 0.975 of them" in html and "for 0.95)" in html


def test_a_bench_generative_page_has_targets_and_every_seed(tmp_path: Path) -> None:
    for seed in (0, 1):
        directory = tmp_path / "generative" / f"seed-{seed}"
        directory.mkdir(parents=True)
        (directory / "eval.json").write_text(json.dumps(_eval(0.5 + seed)))
    bench = {
        "data": "world",
        "seeds": [0, 1],
        "split_seed": 0,
        "device": "cpu",
        "seconds": 12.0,
        "summary": {"fidelity.generated.precision": {"mean": 0.5, "std": 0.0}},
        "targets": {
            "fidelity.generated.precision": {"target": ">= 0.7", "mean": 0.5, "met": False}
        },
    }
    (tmp_path / "generative.json").write_text(json.dumps(bench))
    assert detect_kind(tmp_path) == "bench generative"
    report = build_report(tmp_path)
    assert {"targets", "summary", "generator-seed-0", "generator-seed-1"} <= set(report.sections)
    assert "&gt;= 0.7" in report.html and "1.5" in report.html


def test_an_autoguidance_the_generator_cannot_apply_is_reported(
    generator_run: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pinlab_tasks.generative import generate
    from pinlab_tasks.runs import RunLayout

    run = RunLayout(generator_run)  # its untrained generator kept no guide
    out = generate(run, "a red circle", 1, 2, 3.0, 0, tmp_path / "a", autoguidance=0.0)
    assert out["autoguidance"] == 1.0  # what sampling used, as the PNG says too
    assert "--autoguidance 0.0 has no effect" in caplog.text
    caplog.clear()
    generate(run, "a red circle", 1, 2, 3.0, 0, tmp_path / "b")  # nothing asked, nothing said
    assert "autoguidance" not in caplog.text
