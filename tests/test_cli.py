"""The `pinlab` CLI end to end: the tiny demo, every command on its run, and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pinlab_data import load_dataset
from pinlab_models import recommender_names
from pinlab_tasks._app import app
from pinlab_tasks.cli import run
from pinlab_tasks.commands.meta import walk_commands


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run pinlab in-process with --json; returns (exit code, parsed stdout, stderr)."""
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_tiny_demo_reports_every_stage(tiny_demo: dict[str, Any]) -> None:
    run_dir = Path(tiny_demo["run_dir"])
    for key in ("recall@1", "recall@10"):
        assert 0 <= tiny_demo["visual"]["trained"][key] <= 1
        assert 0 <= tiny_demo["visual"]["untrained"][key] <= 1
    assert {"popularity", "mf"} <= set(tiny_demo["recommender"])
    for metrics in tiny_demo["recommender"].values():
        assert {"ndcg@10", "recall@10", "hr@10", "mrr@10", "coverage@10"} <= set(metrics)
    assert tiny_demo["seconds"] > 0
    assert len(tiny_demo["search"]["hits"]) == 5
    assert len(tiny_demo["recommend"]["items"]) == 5
    for path in (
        "run.json",
        "summary.json",
        "data/dataset.json",
        "visual/encoder.pt",
        "visual/metrics.jsonl",
        "visual/eval.json",
        "recommender/mf/model.pt",
        "recommender/mf/metrics.jsonl",
        "recommender/eval.json",
        "index/index.json",
    ):
        assert (run_dir / path).is_file(), path
    index_file = json.loads((run_dir / "index/index.json").read_text())["file"]
    assert (run_dir / "index" / index_file).is_file()  # named by its checksum
    record = json.loads((run_dir / "run.json").read_text())
    assert record["steps"][0]["config"]["seed"] == 1  # the resolved config is recorded


def test_search_and_recommend_on_the_demo_run(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run_dir = tiny_demo["run_dir"]
    pin = tiny_demo["search"]["query"]["pin"]["pin_id"]
    code, out, _ = cli(capsys, "search", "--run", run_dir, "--pin", str(pin), "-k", "3")
    assert code == 0
    assert len(out["hits"]) == 3 and pin not in [h["pin_id"] for h in out["hits"]]
    scores = [h["score"] for h in out["hits"]]
    assert scores == sorted(scores, reverse=True)

    image = tmp_path / "query.png"
    pixels = np.asarray(Image.new("RGB", (40, 40), (200, 30, 30)))
    Image.fromarray(pixels).save(image)
    code, out, _ = cli(capsys, "search", "--run", run_dir, "--image", str(image), "-k", "4")
    assert code == 0 and len(out["hits"]) == 4

    code, out, _ = cli(capsys, "recommend", "--run", run_dir, "--user", "3", "-k", "7")
    assert code == 0 and len(out["items"]) == 7
    assert out["model"] in tiny_demo["recommender"]


def test_recommend_for_a_session_history(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    demo = tiny_demo["run_dir"]
    # The demo's models (popularity, mf) score users by id only.
    code, out, _ = cli(capsys, "recommend", "--run", demo, "--history", "1,2")
    assert code == 2 and "none of the models" in out["error"] and "reads a history" in out["error"]
    run_dir = tmp_path / "run"
    shutil.copytree(demo, run_dir)
    data = json.loads((run_dir / "run.json").read_text())["data_dir"]
    code, _, _ = cli(capsys, "train", "recommender", "--data", data, "--run", str(run_dir),
                     "--model", "sasrec", "--set", "epochs=2", "--set", "max_len=8")  # fmt: skip
    assert code == 0
    ds = load_dataset(Path(data))
    rows = ds.interactions.to_pylist()
    pins = [r["pin_id"] for r in rows if r["user_id"] == rows[0]["user_id"]][:12]
    history = ",".join(map(str, [*pins, 987654321]))
    code, out, err = cli(
        capsys, "recommend", "--run", str(run_dir), "--history", history, "-k", "6"
    )
    assert code == 0, err
    assert out["model"] == "sasrec" and out["window"] == 8
    assert out["unknown_ids"] == [987654321]
    assert out["truncated"] and out["history_used"] == 8  # the 8 most recent known pins
    assert "ignored 1 unknown pin ids" in err and "most recent 8" in err
    items = [i["pin_id"] for i in out["items"]]
    assert len(items) == 6 and not set(items) & set(pins[-8:])
    for args, message in (
        (["--history", "x,2"], "'x' is not one"),
        (["--history", "1,-5"], "'-5' is not one"),  # ids are non-negative int64s
        (["--history", "1,9223372036854775808"], "'9223372036854775808' is not one"),
        (["--history", ","], "the history is empty"),
        (["--history", "987654321"], "none of the 1 pin ids"),
        (["--user", "3", "--history", "1"], "exactly one of --user"),
        (["--external-user", "3"], "its users have no source ids (a synthetic world)"),
        (["--history", "1", "--model", "mf"], "does not read a history"),
    ):
        code, out, _ = cli(capsys, "recommend", "--run", str(run_dir), *args)
        assert code == 2 and message in out["error"], (args, out)
    # Past int64 once overflowed into exit 1; now a usage error (Typer's range check).
    code, _, err = cli(capsys, "search", "--run", str(run_dir), "--pin", str(2**63))
    assert code == 2 and "--pin" in err and "Traceback" not in err


def test_each_step_runs_on_its_own(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = Path(tiny_demo["run_dir"]) / "data"
    run_dir = tmp_path / "steps"
    code, out, _ = cli(capsys, "data", "validate", str(data))
    assert code == 0 and out["ok"]
    code, out, _ = cli(capsys, "data", "describe", str(data))
    assert code == 0 and out["num_pins"] == tiny_demo["data"]["num_pins"]
    steps = [
        ["train", "visual", "--data", str(data), "--run", str(run_dir), "--epochs", "1"],
        [
            "train",
            "recommender",
            "--data",
            str(data),
            "--run",
            str(run_dir),
            "--model",
            "popularity",
        ],
        ["eval", "visual", "--run", str(run_dir)],
        ["eval", "recommender", "--run", str(run_dir)],
        ["index", "build", "--run", str(run_dir)],
    ]
    for step in steps:
        code, out, err = cli(capsys, *step)
        assert code == 0, (step, err)
    assert out["count"] == tiny_demo["data"]["num_pins"]


def test_train_recommender_searches_settings_with_trials_into_a_new_run(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Exit 1 before: Optuna's SQLite store opened in a model folder not made yet."""
    data = str(Path(tiny_demo["run_dir"]) / "data")
    run_dir = tmp_path / "fresh"
    code, out, err = cli(capsys, "train", "recommender", "--data", data, "--run", str(run_dir),
                         "--model", "ease", "--trials", "3")  # fmt: skip
    assert code == 0, err
    assert len(out["search"]["trials"]) == 3 and "l2" in out["search"]["chosen"]
    assert (run_dir / "recommender" / "ease" / "optuna.db").is_file()


def test_a_run_holds_one_dataset(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Training on another dataset into a run used to repoint the run's dataset, so `eval
    visual` then measured the encoder on pins of a world it was never split on."""
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo["run_dir"], run_dir)
    other = tmp_path / "other"
    code, _, _ = cli(capsys, "data", "synth", "--out", str(other), "--preset", "tiny",
                     "--seed", "5")  # fmt: skip
    assert code == 0
    before = (run_dir / "run.json").read_bytes()
    for step in (["train", "recommender", "--model", "popularity"], ["bench", "rerank"]):
        code, result, _ = cli(capsys, *step, "--data", str(other), "--run", str(run_dir))
        assert code == 2, result
        assert "a run holds one dataset, so pass a new --run for this one" in result["error"]
    assert (run_dir / "run.json").read_bytes() == before
    # The same data, copied elsewhere, is the same dataset.
    copy = tmp_path / "copy"
    shutil.copytree(run_dir / "data", copy)
    args = ("train", "recommender", "--model", "popularity", "--data", str(copy))
    code, result, _ = cli(capsys, *args, "--run", str(run_dir))
    assert code == 0, result
    # `data dedupe` writes its report beside the data; that does not change the dataset.
    assert cli(capsys, "data", "dedupe", str(copy))[0] == 0
    assert (copy / "duplicates.json").is_file()
    assert cli(capsys, *args, "--run", str(run_dir))[0] == 0
    # A dataset folder changed since the run read it is another dataset too.
    code, _, _ = cli(capsys, "data", "synth", "--out", str(copy), "--preset", "tiny",
                     "--seed", "5", "--overwrite")  # fmt: skip
    assert code == 0
    code, result, _ = cli(capsys, *args, "--run", str(run_dir))
    assert code == 2 and "copy changed since the steps of" in result["error"], result
    # Nor is a model measured or queried on its run's dataset (now the copy) once that changed.
    for query in (["eval", "visual"], ["eval", "recommender"], ["search", "--pin", "1"],
                  ["recommend", "--user", "1"], ["card"]):  # fmt: skip
        where = [str(run_dir)] if query == ["card"] else ["--run", str(run_dir)]
        code, result, _ = cli(capsys, *query, *where)
        assert code == 2 and "restore it, or train again into a new --run" in result["error"]


def test_a_moved_run_finds_its_own_data(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A run moved with its data/ used to look for the old path, and advise `data synth`."""
    from pinlab_serve import RunFiles

    shutil.copytree(tiny_demo["run_dir"], tmp_path / "before")
    record = json.loads((tmp_path / "before" / "run.json").read_text())
    record["data_dir"] = str(tmp_path / "before" / "data")
    (tmp_path / "before" / "run.json").write_text(json.dumps(record))
    moved = tmp_path / "after"
    (tmp_path / "before").rename(moved)
    code, out, _ = cli(capsys, "search", "--run", str(moved), "--pin", "1", "-k", "2")
    assert code == 0 and len(out["hits"]) == 2, out
    assert RunFiles(moved).data_dir() == moved / "data"
    # Still the data the run read: changed, it is refused like any other.
    (moved / "data" / "truth.npz").write_bytes(b"other")
    code, out, _ = cli(capsys, "search", "--run", str(moved), "--pin", "1")
    assert code == 2 and "restore it, or train again into a new --run" in out["error"]


def test_data_synth_writes_a_valid_world(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "world"
    args = ("data", "synth", "--out", str(out), "--preset", "tiny", "--pins", "50", "--users", "10")
    code, result, _ = cli(capsys, *args)
    assert code == 0 and result["num_pins"] == 50
    before = (out / "pins.parquet").read_bytes()
    code, result, _ = cli(capsys, *args)  # again, without --overwrite
    assert code == 2 and "overwrite" in result["error"]
    assert (out / "pins.parquet").read_bytes() == before  # nothing damaged
    # An output under a file: exit 2 naming the file, not FileExistsError's exit 1.
    blocked = ["--out", str(out / "pins.parquet" / "world")]
    code, result, _ = cli(capsys, *args[:2], *blocked, *args[4:])
    assert code == 2 and result["error"] == (
        f"cannot create the directory {out / 'pins.parquet'}: {out / 'pins.parquet'} is a "
        "file, not a directory; choose another location"
    )
    assert (out / "pins.parquet").read_bytes() == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["recommend", "--user", "99999", "-k", "3"], "user 99999"),
        (["search", "--pin", "99999"], "pin 99999"),
        (["search", "--pin", "1", "-k", "0"], "k must be"),
        (["search", "--image", "/nonexistent.png"], "does not exist"),
        (["search"], "exactly one of --pin"),
        (["recommend", "--user", "1", "--model", "nope"], "no trained 'nope'"),
    ],
)
def test_bad_queries_exit_2_with_one_line(
    tiny_demo: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    message: str,
) -> None:
    code, out, err = cli(capsys, *args, "--run", tiny_demo["run_dir"])
    assert code == 2
    assert message in out["error"]
    assert "Traceback" not in err


def test_corrupt_image_and_bad_dataset(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    code, out, _ = cli(capsys, "search", "--run", tiny_demo["run_dir"], "--image", str(corrupt))
    assert code == 2 and "not a readable image" in out["error"]

    code, out, _ = cli(capsys, "data", "describe", str(tmp_path))
    assert code == 2 and "not a pinlab dataset" in out["error"]

    bad = tmp_path / "bad"
    code, _, _ = cli(capsys, "data", "synth", "--out", str(bad), "--preset", "tiny")
    (bad / "interactions.parquet").write_bytes(b"PAR1 garbage")
    code, out, _ = cli(capsys, "data", "describe", str(bad))
    assert code == 2 and "interactions.parquet" in out["error"]

    code, out, _ = cli(capsys, "data", "validate", str(tmp_path / "missing"))
    assert code == 2


@pytest.mark.parametrize(
    ("args", "message", "work"),
    [
        (["bench", "generative", "--data", "{missing}", "--run", "{run}"], "does not exist",
         "pinlab_tasks.generative._bench_jobs"),
        (["bench", "device", "--data", "{missing}", "--scale", "0.01"], "does not exist",
         "pinlab_tasks.device_bench.synthesize"),
        (["bench", "serve", "--run", "{missing}"], "not a pinlab run",
         "pinlab_tasks.serve_bench.sample_queries"),
        (["bench", "embed", "--run", "{bare}"], "no checkpoint",
         "pinlab_tasks.embed_bench.ray_cluster"),
        (["bench", "rerank", "--data", "{missing}", "--model", "nope", "--run", "{run}"],
         "unknown recommender 'nope'", "pinlab_tasks.rerank_bench.load_dataset"),
        (["bench", "index", "--tune-recall", "-1"], "--tune-recall must be in (0, 1]",
         "pinlab_tasks.index_bench.bench_index"),
        (["bench", "index", "--kinds", ","], "--kinds ',': names no kind",
         "pinlab_tasks.index_bench.bench_index"),
        # An empty list used to run every model.
        (["bench", "recsys", "--data", "{missing}", "--models", ",", "--run", "{run}"],
         "--models ',' names no model", "pinlab_tasks.benchmarks.bench_recsys"),
    ],
)  # fmt: skip
def test_benches_refuse_a_missing_input_before_any_work(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    message: str,
    work: str,
) -> None:
    # Each of these once read data, trained, started a cluster or recorded a step before it
    # checked its input; `work` is the first costly step, which must not start.
    def started(*_: object, **__: object) -> None:
        raise AssertionError(f"{work} ran before the input was read")

    monkeypatch.setattr(work, started)
    bare = tmp_path / "bare"  # a run that names a dataset but has no encoder
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"data_dir": str(tmp_path / "missing")}))
    paths = {"missing": tmp_path / "missing", "run": tmp_path / "run", "bare": bare}
    code, out, err = cli(capsys, *(a.format(**paths) for a in args))
    assert code == 2 and message in out["error"], out
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bare"]  # no run directory made
    assert [p.name for p in bare.iterdir()] == ["run.json"]


@pytest.mark.parametrize(
    ("args", "empty"),
    [
        (["embed", "--run="], "--run"),
        (["train", "visual", "--data", "D", "--run", ""], "--run"),
        (["--runs-dir=", "demo"], "--runs-dir"),
        (["data", "validate", ""], "the PATH argument"),
        (["--threads", "1", "data", "dedupe", "", "--max-distance", "3"], "the PATH argument"),
        (["data", "load", "sequences", "", "--out", "D"], "the SOURCE argument"),
        (["report", "", "--out", "r.html"], "the PATH argument"),
        (["card", ""], "the RUN argument"),
    ],
)
def test_an_empty_path_is_refused_not_read_as_this_folder(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    args: list[str],
    empty: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, *args)
    assert (code, out["error"]) == (2, f"{empty} is empty; pass a path ('.' for this folder)")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_text_is_not_taken_for_an_empty_path(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = cli(capsys, "search", "--run", "R", "--text", "")
    assert code == 2 and "is empty; pass a path" not in out["error"], out


def test_bench_recsys_refuses_a_cut_off_it_does_not_measure_before_training(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """--metric ndcg@7 used to train the first model, then fail on its missing ndcg@7."""

    def trained(*_: object, **__: object) -> None:
        raise AssertionError("a model trained before the metric was checked")

    monkeypatch.setattr("pinlab_tasks.benchmarks._tune_refit_tracked", trained)
    data = tmp_path / "data"
    assert cli(capsys, "data", "synth", "--out", str(data), "--preset", "tiny")[0] == 0
    code, out, _ = cli(capsys, "bench", "recsys", "--data", str(data), "--models", "popularity",
                       "--metric", "ndcg@7", "--run", str(tmp_path / "run"))  # fmt: skip
    assert code == 2
    assert out["error"] == (
        "validation metric 'ndcg@7': the bench measures at K = 10, 20; use one of those "
        "(e.g. ndcg@10)"
    )


@pytest.mark.parametrize(
    ("args", "option", "why"),
    [
        (["data", "synth", "--out", "{out}", "--seed", "-1"], "--seed", "greater than or equal"),
        (["demo", "--out", "{out}", "--seed", str(2**31)], "--seed", "less than or equal to"),
        (["bench", "recsys", "--data", "{out}", "--protocol-seed", "-1"], "--protocol-seed", "0"),
        (["bench", "index", "--seed", "-1"], "--seed", "greater than or equal to 0"),
        (["train", "align", "--run", "{out}", "--epochs", "0"], "--epochs", "greater than or"),
    ],
)  # fmt: skip
def test_seeds_and_epochs_out_of_range_are_usage_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], option: str, why: str
) -> None:
    # A negative seed once reached NumPy (ValueError, exit 1), or was recorded as is; so did a
    # negative epoch count in `train align`.
    code, out, _ = cli(capsys, *(a.format(out=tmp_path / "out") for a in args))
    assert code == 2 and out["error"].startswith(f"Invalid value for '{option}': "), out
    assert why in out["error"]
    assert not (tmp_path / "out").exists()


def test_unknown_model_lists_the_registered_ones(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    data = str(Path(tiny_demo["run_dir"]) / "data")
    code, out, _ = cli(capsys, "train", "recommender", "--data", data, "--model", "nope")
    assert code == 2 and ", ".join(recommender_names()) in out["error"]


def test_demo_refuses_a_used_directory(
    tiny_demo: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "demo", "--preset", "tiny", "--out", tiny_demo["run_dir"])
    assert code == 2 and "not empty" in out["error"]


def test_describe_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "describe")
    assert code == 0
    names = {c["command"] for c in out["commands"]}
    expected = {
        "pinlab demo",
        "pinlab data synth",
        "pinlab data validate",
        "pinlab data describe",
        "pinlab train visual",
        "pinlab train recommender",
        "pinlab eval visual",
        "pinlab eval recommender",
        "pinlab index build",
        "pinlab search",
        "pinlab recommend",
        "pinlab describe",
        "pinlab doctor",
    }
    assert expected <= names
    demo = next(c for c in out["commands"] if c["command"] == "pinlab demo")
    assert {"--preset", "--out", "--json"} <= {f for p in demo["inputs"] for f in p["flags"]}
    assert "summary.json" in demo["outputs"]["files"]


def test_every_help_shows_its_text_whole() -> None:
    # Help is Markdown: paragraphs reflow to the terminal, and nothing in a docstring or an
    # option's help is read as markup and dropped (rich markup once ate "[env PINLAB_SEED]").
    runner = CliRunner()

    def words(text: str) -> list[str]:
        return text.replace("`", "").split()  # code spans show without their backticks

    commands = list(walk_commands(app, []))
    assert len(commands) > 40
    for command in commands:
        path = command["command"].split()[1:]
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "100", "NO_COLOR": "1"})
        assert result.exit_code == 0, (path, result.output)
        shown = " ".join(words(result.output))
        paragraphs = command["help"].split("\n\n")
        for text in paragraphs[:1] + [p for p in paragraphs[1:] if "\n- " not in p]:
            assert " ".join(words(text)) in shown, (path, text)
        for param in command["inputs"]:
            if param["kind"] == "option" and param["help"]:
                assert all(w in shown for w in words(param["help"])), (path, param["help"])


def test_doctor_reports_versions_and_device(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "doctor")
    assert code == 0
    assert out["libraries"]["torch"] and out["device"]["resolved"] in ("cpu", "cuda")
    assert out["threads"]["torch"] >= 1


def test_bad_settings_from_options_or_the_environment_exit_2_naming_both(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # --threads 0 once reached torch.set_num_threads unchecked: a RuntimeError, exit 1.
    for threads, why in (("0", "greater than or equal to 1"), ("9999", "less than or equal")):
        code, out, _ = cli(capsys, "--threads", threads, "doctor")
        assert code == 2, out
        assert out["error"].startswith("bad value for threads (PINLAB_THREADS, or its option): ")
        assert why in out["error"]
    monkeypatch.setenv("PINLAB_THREADS", "many")
    code, out, _ = cli(capsys, "doctor")
    assert code == 2 and "PINLAB_THREADS" in out["error"] and "valid integer" in out["error"]
    code, out, _ = cli(capsys, "--threads", "1", "doctor")  # the option overrides the variable
    assert code == 0 and out["threads"]["torch"] == 1


def test_the_installed_entry_point_uses_exit_codes(tmp_path: Path) -> None:
    """Through a real process: usage errors exit 2, JSON goes to stdout alone."""
    base = [sys.executable, "-m", "pinlab_tasks"]
    usage = subprocess.run(
        [*base, "demo", "--preset", "huge"], capture_output=True, text=True, check=False
    )
    assert usage.returncode == 2 and "huge" in usage.stderr and not usage.stdout
    # Under --json a usage error is a JSON document too, for agents; the box stays on stderr.
    agent = subprocess.run(
        [*base, "search", "--pin", str(2**63), "--run", str(tmp_path), "--json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert agent.returncode == 2 and "Invalid value for '--pin'" in agent.stderr
    assert json.loads(agent.stdout) == {
        "error": "Invalid value for '--pin': Input should be less than or equal to "
        f"{2**63 - 1} (see `pinlab search --help`)",
        "exit_code": 2,
    }
    missing = subprocess.run(
        [*base, "data", "describe", str(tmp_path / "nope"), "--json"],
        capture_output=True,
        check=False,
        text=True,
    )
    assert missing.returncode == 2
    assert json.loads(missing.stdout)["exit_code"] == 2
    assert "Traceback" not in missing.stderr


def test_error_messages_print_literally(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # An error quoting user input that looks like rich markup must print as it is, not crash.
    odd = tmp_path / "run[" / "b]"  # the path reads `.../run[/b]`, a closing tag
    odd.mkdir(parents=True)
    code = run(["data", "describe", str(odd)])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert "run[/b]" in err and "not a pinlab dataset" in err
