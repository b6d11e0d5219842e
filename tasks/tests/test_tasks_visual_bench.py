"""bench visual's parts: raw pixels, tiny runs over seeds, the settings search, and selection
blind to the test classes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest

from pinlab_data import PinlabDataError, SynthConfig, load_dataset, write_synth
from pinlab_models import (
    EncoderConfig,
    ImageEncoder,
    IntRange,
    Recipe,
    RecipeConfig,
    recipe_space,
    train_with_recipe,
)
from pinlab_tasks import tuning, visual_bench
from pinlab_tasks._output import stdout
from pinlab_tasks.cli import run
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual_bench import bench_visual, raw_pixels


def test_raw_pixels_are_centred_unit_vectors() -> None:
    images = np.random.default_rng(0).integers(0, 255, (10, 64, 64, 3), dtype=np.uint8)
    flat = raw_pixels(images)
    assert flat.shape == (10, 32 * 32 * 3)
    assert np.allclose(np.linalg.norm(flat, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_tiny_bench_reports_every_row_over_seeds(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_synth(data, SynthConfig(num_pins=160, num_users=10, num_categories=8, image_size=16))
    run = RunLayout(tmp_path / "run")
    payload = bench_visual(data, run, ["proxy-anchor"], epochs=2, progress=False, seeds=2, trials=1)
    assert payload["protocol"]["name"] == "unseen-classes"
    assert payload["protocol"]["seeds"] == [0, 1]
    for split in payload["protocol"]["splits"]:
        assert not set(split["validation_classes"]) & set(split["test_classes"])
        assert not set(split["fit_classes"]) & set(split["test_classes"])
    rows = {r["recipe"]: r for r in payload["results"]}
    assert list(rows) == ["raw pixels", "untrained", "proxy-anchor"]
    assert [r["baseline"] for r in rows.values()] == [True, True, False]
    for row in rows.values():
        assert set(row["metrics"]) == {"recall@1", "recall@10", "map@r", "linear_probe"}
        for metric, values in row["per_seed"].items():
            assert len(values) == 2
            assert row["metrics"][metric] == pytest.approx(np.mean(values), abs=1e-4)
            assert row["std"][metric] == pytest.approx(np.std(values, ddof=1), abs=1e-4)
        assert row["embed_images_per_s"] > 0 and row["peak_rss_mb"] > 0
    trained = rows["proxy-anchor"]
    assert trained["train_images_per_s"] > 0 and trained["max_epochs"] == 2
    assert all(1 <= e <= 2 for e in trained["epochs_per_seed"])
    assert trained["epochs_at_edge"] == [e == 2 for e in trained["epochs_per_seed"]]
    assert {p["vs"] for p in payload["paired"]} == {"raw pixels", "untrained"}
    assert all((run.root / f"seed{s}" / "rows.json").is_file() for s in (0, 1))
    assert (run.root / "bench_visual.json").is_file() and (run.root / "run.json").is_file()
    assert all(Path(p).read_bytes()[:4] == b"\x89PNG" for p in payload["embedding_maps"].values())
    with pytest.raises(PinlabDataError, match="unknown recipe 'arcface'"):
        bench_visual(data, run, ["arcface"])


@pytest.mark.slow
def test_chosen_settings_ignore_the_test_classes(tmp_path: Path) -> None:
    """Replacing every test-class image with noise changes no chosen setting or epoch."""
    data = tmp_path / "data"
    write_synth(data, SynthConfig(num_pins=160, num_users=10, num_categories=8, image_size=16))
    before = bench_visual(
        data, RunLayout(tmp_path / "a"), ["supcon"], epochs=4, progress=False, seeds=1,
        trials=3, budget_seconds=0,
    )  # fmt: skip
    test_classes = set(before["protocol"]["test_classes"])
    ds = load_dataset(data)
    labels = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    rows = ds.pins.column("image_row").to_numpy()[np.isin(labels, list(test_classes))]
    images = np.load(data / "images.npy")
    images[rows] = np.random.default_rng(0).integers(0, 255, images[rows].shape, dtype=np.uint8)
    np.save(data / "images.npy", images)
    after = bench_visual(
        data, RunLayout(tmp_path / "b"), ["supcon"], epochs=4, progress=False, seeds=1,
        trials=3, budget_seconds=0,
    )  # fmt: skip
    assert after["protocol"]["test_classes"] == before["protocol"]["test_classes"]

    def chosen(payload: dict[str, Any]) -> dict[str, Any]:
        return {
            r["recipe"]: (r.get("epochs_per_seed"), r.get("settings_per_seed"))
            for r in payload["results"]
        }

    assert chosen(before) == chosen(after) and chosen(before)["supcon"][1] != [{}]
    # ...while the test-class numbers do see the change.
    assert before["results"][0]["metrics"] != after["results"][0]["metrics"]


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("visual") / "data"
    write_synth(data, SynthConfig(num_pins=160, num_users=10, num_categories=8, image_size=16))
    return data


def test_search_runs_its_trials_on_training_classes_only(
    tiny_world: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trial 0 is the defaults; every image a trial fits or validates on is a training class's."""
    seen: list[np.ndarray] = []
    real_train = train_with_recipe

    class Watched:
        def __init__(self, encoder: ImageEncoder) -> None:
            self.encoder = encoder

        def embed(self, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
            seen.append(images)
            return self.encoder.embed(images, batch_size)

    def spy(
        images: np.ndarray, labels: Any, config: Any, recipe: Any, ctx: Any, validate: Any = None
    ) -> Any:
        if validate is None:  # the refit on all training classes
            return real_train(images, labels, config, recipe, ctx)
        seen.append(images)
        return real_train(images, labels, config, recipe, ctx, lambda e: validate(Watched(e)))

    monkeypatch.setattr(visual_bench, "train_with_recipe", spy)
    run = RunLayout(tmp_path / "run")
    payload = bench_visual(
        tiny_world, run, ["proxy-anchor"], epochs=2, progress=False, seeds=1, trials=3,
        budget_seconds=0,
    )  # fmt: skip
    row = next(r for r in payload["results"] if r["recipe"] == "proxy-anchor")
    search = row["search_per_seed"][0]
    assert row["trials_per_seed"] == [3] and len(search["trials"]) == 3
    assert search["trials"][0]["params"] == search["defaults"]
    assert search["defaults"]["batch_size"] == 32 and search["defaults"]["lr"] == 2e-3
    assert set(search["space"]) == set(recipe_space("proxy-anchor"))
    assert row["settings_per_seed"] == [search["chosen"]]
    assert search["chosen"] == search["trials"][search["best_trial"]]["params"]
    assert payload["search"]["trials"] == 3 and payload["search"]["budget_seconds"] is None
    storage = f"sqlite:///{run.root / 'optuna.db'}"
    study = optuna.load_study(study_name="proxy-anchor-seed0", storage=storage)
    assert len(study.trials) == 3
    # Every searched image comes from the fit or validation classes, and both are searched on.
    ds = load_dataset(tiny_world)
    labels = np.asarray(ds.pins.column("category").to_pylist(), dtype=object)
    images = visual_bench.packed_images(ds)
    split = payload["protocol"]["splits"][0]

    def rows_of(classes: list[str]) -> set[bytes]:
        return {image.tobytes() for image in images[np.isin(labels, classes)]}

    searched = {image.tobytes() for batch in seen for image in batch}
    assert not searched & rows_of(split["test_classes"])
    assert searched == rows_of(split["fit_classes"]) | rows_of(split["validation_classes"])


def test_one_trial_is_the_defaults_with_early_stopped_epochs(
    tiny_world: Path, tmp_path: Path
) -> None:
    payload = bench_visual(
        tiny_world, RunLayout(tmp_path / "run"), ["supcon"], epochs=2, progress=False, seeds=1,
        trials=1,
    )  # fmt: skip
    row = next(r for r in payload["results"] if r["recipe"] == "supcon")
    assert row["trials_per_seed"] == [1] and row["settings_per_seed"] == [{}]
    assert row["on_edge_per_seed"] == [[]] and 1 <= row["epochs_per_seed"][0] <= 2


def test_a_chosen_setting_on_its_range_edge_is_flagged(
    tiny_world: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A two-value batch range: whatever is chosen sits on its edge, in the JSON and the table."""
    monkeypatch.setattr(stdout, "_width", 200)  # the table whole, not cut to 80 columns
    monkeypatch.setattr(
        visual_bench, "recipe_space", lambda recipe: {"batch_size": IntRange(low=16, high=17)}
    )
    run_dir = tmp_path / "run"
    args = ["bench", "visual", "--data", str(tiny_world), "--run", str(run_dir), "--recipe",
            "supcon", "--epochs", "1", "--seeds", "1", "--trials", "2"]  # fmt: skip
    assert run(args) == 0
    out = capsys.readouterr().out
    assert "supcon*" in out and "on the edge: batch_size" in out
    payload = json.loads((run_dir / "bench_visual.json").read_text())
    row = next(r for r in payload["results"] if r["recipe"] == "supcon")
    assert row["on_edge_per_seed"] == [["batch_size"]]
    assert payload["search"]["spaces"]["supcon"] == {
        "batch_size": {"kind": "int", "low": 16, "high": 17, "log": False}
    }


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        (["--trials", "0"], "--trials must be at least 1"),
        (["--budget", "-5"], "--budget must be seconds >= 0"),
    ],
)
def test_bad_search_settings_exit_2_and_leave_no_run(
    tiny_world: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    flag: list[str],
    message: str,
) -> None:
    run_dir = tmp_path / "run"
    code = run(
        ["bench", "visual", "--data", str(tiny_world), "--run", str(run_dir), *flag, "--json"]
    )
    error = json.loads(capsys.readouterr().out)["error"]
    assert code == 2 and message in error and "\n" not in error
    assert not run_dir.exists()


@pytest.mark.parametrize("recipe", visual_bench.RECIPES)
def test_recipe_defaults_sit_inside_their_search_space(recipe: Recipe) -> None:
    base = EncoderConfig().model_dump() | visual_bench.RECIPE_ENCODER[recipe]
    start = base | RecipeConfig(recipe=recipe, **visual_bench.RECIPE_SETTINGS[recipe]).model_dump()
    space = recipe_space(recipe)
    assert {"lr", "batch_size", "crop_scale"} <= set(space)
    for name, param in space.items():
        assert not param.on_edge(start[name]), f"{recipe}'s default {name} is on its edge"
        assert name in tuning.defaults_point(space, start)
