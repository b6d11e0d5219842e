"""`pinlab data load|download` and `pinlab bench data` through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pinlab_data import write_movielens_like
from pinlab_tasks.cli import run


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any, str]:
    """Run pinlab in-process with --json; returns (exit code, parsed stdout, stderr)."""
    code = run([*args, "--json"])
    captured = capsys.readouterr()
    return code, json.loads(captured.out) if captured.out.strip() else None, captured.err


def test_load_movielens_then_validate(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = write_movielens_like(tmp_path / "ml-20m", rows=4000, seed=0)
    out = tmp_path / "ds"
    code, report, err = cli(
        capsys, "data", "load", "movielens", str(source), "--out", str(out), "--min-rating", "3"
    )
    assert code == 0, err
    assert report["kind"] == "movielens" and report["layout"] == "csv"
    assert report["rows_read"] == 4000
    assert report["filters"][0]["name"] == "min-rating"
    assert report["filters"][0]["rows_after"] == report["num_interactions"]
    code, result, _ = cli(capsys, "data", "validate", str(out))
    assert code == 0 and result["ok"]


def test_load_interactions_with_a_mapping_and_a_bad_line_report(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "clicks.tsv"
    log.write_text("who\twhat\twhen\nu1\tp9\t1700000000\nu2\tp9\tsoon\nu1\tp3\t1700000500\n")
    out = tmp_path / "ds"
    code, report, _ = cli(
        capsys,
        *["data", "load", "interactions", str(log), "--out", str(out)],
        "--user-col",
        "who",
        "--item-col",
        "what",
        "--time-col",
        "when",
        "--on-bad-lines",
        "report",
    )
    assert code == 0
    assert (report["rows_read"], report["bad_lines"], report["num_users"]) == (2, 1, 1)
    assert (out / "bad_lines.csv").read_text().splitlines()[1].startswith("3,")
    code, result, _ = cli(capsys, "data", "validate", str(out))
    assert code == 0 and result["ok"]


def test_bad_input_is_one_line_and_exit_2_with_nothing_written(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    log = tmp_path / "log.csv"
    log.write_text("user,item\na,x\nb,x\n")
    out = tmp_path / "ds"
    code, result, err = cli(capsys, "data", "load", "interactions", str(log), "--out", str(out))
    assert code == 2
    assert result["error"] == (
        f"{log} has no column 'user_id' (--user-col), 'item_id' (--item-col); its columns are "
        "user, item; pass --user-col NAME --item-col NAME"
    )
    assert "Traceback" not in err
    args = ["data", "load", "interactions", str(log), "--out", str(out), "--user-col", "user"]
    code, result, _ = cli(capsys, *args, "--item-col", "item", "--k-core", "3")
    assert code == 2 and result["error"].startswith("filter --k-core 3 removed all 2")
    assert not out.exists()


def test_load_sequences(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    source = tmp_path / "Steam.txt"
    source.write_text("1 1\n1 2\n2 1\n2 3\n")
    code, report, _ = cli(
        capsys, "data", "load", "sequences", str(source), "--out", str(tmp_path / "ds")
    )
    assert code == 0 and (report["num_users"], report["num_pins"]) == (2, 3)


def test_recommend_names_the_source_ids_of_loaded_data(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Loaded ids become dense pinlab ids; results carry the source's ids to join them back."""
    source = tmp_path / "log.txt"
    source.write_text("ann p7 p9 p4\nbob p9 p5\ncid p7 p9\n")
    assert (
        cli(capsys, "data", "load", "sequences", str(source), "--out", str(tmp_path / "ds"))[0] == 0
    )
    run = ["--run", str(tmp_path / "run")]
    args = ("train", "recommender", "--data", str(tmp_path / "ds"), "--model", "popularity")
    assert cli(capsys, *args, *run)[0] == 0
    code, result, _ = cli(capsys, "recommend", "--user", "1", "-k", "1", *run)
    assert code == 0, result
    assert result["user_external_id"] == "bob"
    assert [(p["pin_id"], p["external_id"]) for p in result["recent"]] == [(1, "p9"), (3, "p5")]
    assert [p["external_id"] for p in result["items"]] == ["p7"]  # popular, and unseen by bob
    code, named, _ = cli(capsys, "recommend", "--external-user", "bob", "-k", "1", *run)
    assert code == 0 and named == result  # the source's id names the same user
    for given, message in (
        (["--external-user", "zed"], "no user has the source's id 'zed'; the source's ids are"),
        (["--external-user", "bob", "--user", "1"], "exactly one of --user ID, --external-user"),
    ):
        code, out, _ = cli(capsys, "recommend", *given, *run)
        assert code == 2 and message in out["error"], (given, out)
    numeric = tmp_path / "numeric.txt"  # the source's user 7 is pinlab's user 0
    numeric.write_text("7 1 2 3\n8 2 3 4\n")
    assert (
        cli(capsys, "data", "load", "sequences", str(numeric), "--out", str(tmp_path / "n"))[0] == 0
    )
    args = ("train", "recommender", "--data", str(tmp_path / "n"), "--model", "popularity")
    assert cli(capsys, *args, "--run", str(tmp_path / "nrun"))[0] == 0
    code, result, _ = cli(capsys, "recommend", "--user", "7", "--run", str(tmp_path / "nrun"))
    assert code == 2
    assert result["error"].endswith(
        "; the source's user '7' is pinlab user 0 (or pass --external-user 7)"
    )
    code, result, _ = cli(
        capsys, "recommend", "--external-user", "7", "--run", str(tmp_path / "nrun")
    )
    assert code == 0 and (result["user"], result["user_external_id"]) == (0, "7")


def test_download_offline_says_how_to_load_a_local_copy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A proxy that refuses connections: offline, whatever network this machine has.
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:1")
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:1")
    out, cache = tmp_path / "ds", tmp_path / "cache"
    code, result, _ = cli(
        capsys, "data", "download", "movielens-100k", "--out", str(out), "--cache", str(cache)
    )
    assert code == 2
    assert result["error"].startswith("cannot reach files.grouplens.org (")
    assert result["error"].endswith(
        "download ml-100k.zip elsewhere and run `pinlab data load movielens PATH --out DIR`"
    )
    assert not out.exists()


def test_bench_data_measures_a_small_conversion(capsys: pytest.CaptureFixture[str]) -> None:
    code, result, err = cli(capsys, "bench", "data", "--rows", "3000")
    assert code == 0, err
    assert set(result) == {"rows", "seconds", "rows_per_s", "peak_rss_mb", "file_mb"}
    assert result["rows"] == 3000 and result["peak_rss_mb"] > 0


def test_describe_lists_the_new_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "describe")
    assert code == 0
    commands = {c["command"]: c for c in out["commands"]}
    for name in ("movielens", "interactions", "sequences"):
        assert f"pinlab data load {name}" in commands
    assert {"pinlab data download", "pinlab bench data"} <= set(commands)
    flags = {f for p in commands["pinlab data load interactions"]["inputs"] for f in p["flags"]}
    assert {"--user-col", "--item-col", "--on-bad-lines", "--k-core", "--format"} <= flags
