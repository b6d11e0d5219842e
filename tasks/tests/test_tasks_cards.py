"""`pinlab card`: model and data cards of a run, their numbers checked against the run's files."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from pinlab_data import PinlabDataError, load_dataset
from pinlab_tasks.cards import (
    activity_quartiles,
    age_buckets,
    user_column_groups,
    user_groupings,
)
from pinlab_tasks.cli import run
from pinlab_tasks.report import build_report, markdown_html, write_report


def _copy(tiny_demo: dict[str, Any], tmp_path: Path) -> Path:
    """A private copy of the shared demo run (its data stays where run.json says)."""
    target = tmp_path / "run"
    shutil.copytree(tiny_demo["run_dir"], target, ignore=shutil.ignore_patterns("data"))
    return target


def _card(root: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict[str, Any]:
    assert run(["card", str(root), "--json", *extra]) == 0
    payload: dict[str, Any] = json.loads(capsys.readouterr().out)
    return payload


def test_cards_state_the_runs_own_numbers(
    tiny_demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tiny_demo, tmp_path)
    payload = _card(root, capsys, "--seed", "4")
    cards = root / "cards"
    assert sorted(p.name for p in cards.iterdir()) == ["data_card.md", "model_card.md"]
    model = (cards / "model_card.md").read_text()
    data = (cards / "data_card.md").read_text()
    facts = payload["facts"]
    assert payload["missing"] == [] and facts["bootstrap"]["seed"] == 4

    # Overall numbers are the stored ones, and recomputing them from the saved models agrees.
    stored = json.loads((root / "recommender" / "eval.json").read_text())["models"]
    for name, metrics in stored.items():
        assert f"{metrics['ndcg@10']:.4f}" in model and f"{metrics['recall@10']:.4f}" in model
        assert facts["recommenders"][name]["matches_stored"] is True
    visual = json.loads((root / "visual" / "eval.json").read_text())
    assert f"{visual['trained']['recall@1']:.4f}" in model
    assert facts["visual"]["matches_stored"] is True
    assert facts["visual"]["overall"]["recall@1"] == pytest.approx(visual["trained"]["recall@1"])

    # Per user group: the users add up and the count-weighted group means give the overall.
    for name, rec in facts["recommenders"].items():
        activity, segment = rec["user_groups"]  # the synthetic users' one attribute
        assert segment["names"] == ["broad", "focused"]
        groups = activity["metrics"]["ndcg@10"]["groups"]
        assert sum(g["count"] for g in groups) == rec["counts"]["target_users"]
        weighted = sum(g["count"] * (g["mean"] or 0.0) for g in groups)
        assert weighted / rec["counts"]["target_users"] == pytest.approx(stored[name]["ndcg@10"])
        exposure = rec["exposure"]
        assert sum(g["exposure_share"] for g in exposure["groups"]) == pytest.approx(1.0)
        assert f"{exposure['disparity']:.4f}" in model
        assert f"### {name}: exposure by creator group" in model

    # Visual recall per creator group and per category adds up to the overall recall.
    for column in ("creator_group", "category"):
        report = facts["visual"]["by"][column]["metrics"]["recall@1"]
        weighted = sum(g["count"] * (g["mean"] or 0.0) for g in report["groups"])
        assert weighted / facts["visual"]["num_queries"] == pytest.approx(
            visual["trained"]["recall@1"]
        )
    assert "By the query pin's creator group:" in model and "By the query pin's category:" in model

    # The data card counts the run's dataset.
    summary = tiny_demo["data"]
    for key in ("num_pins", "num_users", "num_interactions"):
        assert f"| {key.removeprefix('num_')} | {summary[key]} |" in data
    categories = facts["data"]["categories"]
    assert sum(c["pins"] for c in categories.values()) == summary["num_pins"]
    assert sum(c["interactions"] for c in categories.values()) == summary["num_interactions"]
    assert "`emerging_exposure`" in data and "0.5000 times the rate" in data
    assert "card" in json.loads((root / "run.json").read_text())["seeds"]


def test_missing_pieces_are_named_not_fatal(
    tiny_demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tiny_demo, tmp_path)
    shutil.rmtree(root / "recommender")
    payload = _card(root, capsys, "--out", str(tmp_path / "elsewhere"))
    model = Path(payload["model_card"]).read_text()
    assert Path(payload["model_card"]).parent == tmp_path / "elsewhere"
    assert "no recommender in this run" in model and "Visual search per group" in model

    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "run.json").write_text(json.dumps({"steps": []}))
    payload = _card(bare, capsys)
    assert any("no dataset" in m for m in payload["missing"])
    assert "no visual encoder in this run" in (bare / "cards" / "model_card.md").read_text()
    assert "No dataset in this run" in (bare / "cards" / "data_card.md").read_text()


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "not a pinlab run (no run.json)"),
        (lambda d: d.write_text("x"), "not a directory"),
        (lambda d: (d.mkdir(), (d / "run.json").write_text("[1]")), "a JSON list, not an object"),
        (lambda d: (d.mkdir(), (d / "run.json").write_text('{"steps": [')), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "run.json").write_bytes(b"\xff\xfe")), "not valid JSON"),
    ],
)
def test_not_a_run_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    target = tmp_path / "d"
    setup(target)
    assert run(["card", str(target), "--json"]) == 2
    assert message in json.loads(capsys.readouterr().out)["error"]


def test_activity_quartiles_by_hand() -> None:
    # Edges 2.75, 4.5, 6.25 over 1..8: two users per quartile.
    group, labels = activity_quartiles(np.arange(1, 9, dtype=np.int64))
    assert group.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert labels == [f"Q{q + 1} ({2 * q + 1}-{2 * q + 2} interactions)" for q in range(4)]
    # All tied: everyone at or below the first edge, the other quartiles empty.
    group, labels = activity_quartiles(np.full(5, 3, dtype=np.int64))
    assert group.tolist() == [0] * 5 and labels[1:] == ["Q2 (no users)", "Q3 (no users)",
                                                       "Q4 (no users)"]  # fmt: skip


def test_user_column_groups_by_hand() -> None:
    # Age: MovieLens-1M's buckets, whatever the values; no value is "missing".
    group, labels = age_buckets([17, 18, 24, 25, 56, 90, None, 49, 50])
    assert labels == ["under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+", "missing"]
    assert group.tolist() == [0, 1, 1, 2, 6, 6, 7, 4, 5]
    ages = [17, 18, 24, 25, 56, 90, None, 49, 50, 33]  # over MAX_LEVELS values: bucketed
    assert user_column_groups("age", ages)[0].tolist() == [0, 1, 1, 2, 6, 6, 7, 4, 5, 2]
    assert user_column_groups("age", [1, 56, 25])[0].tolist() == [0, 6, 2]  # 1M's bucket codes
    # Few levels: the values themselves, sorted as text.
    group, labels = user_column_groups("gender", ["M", "F", None, "M"])
    assert (group.tolist(), labels) == ([1, 0, 2, 1], ["F", "M", "missing"])
    assert user_column_groups("gender", ["M", "F"])[1] == ["F", "M"]  # none missing: no group
    # Another numeric column with many values: quartiles by value.
    group, labels = user_column_groups("income", [float(v) for v in range(1, 13)])
    assert group.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    assert labels == ["Q1 (1-3)", "Q2 (4-6)", "Q3 (7-9)", "Q4 (10-12)"]
    group, labels = user_column_groups("income", [*map(float, range(1, 13)), None])
    assert group.tolist()[-1] == 4 and labels[3:] == ["Q4 (10-12)", "missing"]


def test_user_groupings_read_attribute_columns_and_name_the_ones_that_exist(
    tiny_demo: dict[str, Any],
) -> None:
    ds = load_dataset(Path(tiny_demo["run_dir"]) / "data")
    ids = ds.user_ids()
    parity = pa.array(["a" if u % 2 else "b" for u in ids.tolist()], pa.string())
    ds = dataclasses.replace(ds, users=ds.users.append_column("parity", parity))
    users = ids[::-1][:5]
    activity = np.arange(5, dtype=np.int64)
    ((by, group, labels),) = user_groupings(ds, users, activity, ["parity"])
    assert by == "parity" and labels == ["a", "b"]
    assert group.tolist() == [0 if u % 2 else 1 for u in users.tolist()]
    # The synthetic world's users carry their taste segment.
    assert [g[0] for g in user_groupings(ds, users, activity, None)] == [
        "activity quartile (training interactions)",
        "segment",
        "parity",
    ]
    with pytest.raises(
        PinlabDataError, match=r"'age' is not a user column.*activity, segment, parity"
    ):
        user_groupings(ds, users, activity, ["age"])


def test_card_with_an_unknown_user_group_exits_2(
    tiny_demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = _copy(tiny_demo, tmp_path)
    assert run(["card", str(root), "--user-group", "age", "--json"]) == 2
    assert "choose from activity" in json.loads(capsys.readouterr().out)["error"]
    assert not (root / "cards").exists()
    shutil.rmtree(root / "recommender")  # no group is measured, and the name is still checked
    assert run(["card", str(root), "--user-group", "age", "--json"]) == 2
    assert "choose from activity" in json.loads(capsys.readouterr().out)["error"]


def test_cards_never_go_beside_other_files(
    tiny_demo: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--out DATASET put the cards in it, which changed its fingerprint under every run."""
    root = _copy(tiny_demo, tmp_path)
    data = tmp_path / "data"  # a dataset; a copy, so a failure leaves the shared one alone
    shutil.copytree(Path(tiny_demo["run_dir"]) / "data", data)
    before = sorted(p.name for p in data.iterdir())
    assert run(["card", str(root), "--out", str(data), "--json"]) == 2
    assert "which card did not write" in json.loads(capsys.readouterr().out)["error"]
    assert sorted(p.name for p in data.iterdir()) == before
    for _ in range(2):  # an earlier --out is written again
        _card(root, capsys, "--out", str(tmp_path / "cards"))


def test_report_shows_the_cards(tiny_demo: dict[str, Any], tmp_path: Path) -> None:
    root = _copy(tiny_demo, tmp_path)
    assert "cards" not in build_report(root).sections  # reading alone writes nothing
    assert not (root / "cards").exists()
    _, report = write_report(root)
    assert (root / "cards" / "model_card.md").is_file()
    assert report.sections[-1] == "cards"
    assert "<h3>Model card: pinlab run run</h3>" in report.html
    assert "<th>creator group</th>" in report.html


def test_markdown_html_escapes_and_keeps_structure() -> None:
    html = markdown_html(
        "# T <x>\n\nsome `code` and\nmore\n\n- a\n- b\n\n| h | i |\n| --- | --- |\n| 1 | a\\|b |\n"
    )
    assert html.split("\n") == [
        "<h3>T &lt;x&gt;</h3>",
        "<p>some <code>code</code> and more</p>",
        "<ul><li>a</li><li>b</li></ul>",
        '<div class="wide"><table><tr><th>h</th><th>i</th></tr>'
        "<tr><td>1</td><td>a|b</td></tr></table></div>",
    ]


def test_describe_lists_the_card_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["describe", "--json"]) == 0
    commands = json.loads(capsys.readouterr().out)["commands"]
    card = next(c for c in commands if c["command"] == "pinlab card")
    assert "model_card.md" in card["outputs"]["files"]
    assert {"--out", "--seed", "--json"} <= {f for p in card["inputs"] for f in p["flags"]}
