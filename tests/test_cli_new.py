"""`pinlab new` through the real CLI, on copies of this checkout: what it writes, what it
refuses (writing nothing), and, in the slow tier, that the gates and the tests pass on what it
wrote."""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pinlab_tasks.cli import run
from pinlab_tasks.scaffold import (
    LINE_LENGTH,
    MARKERS,
    MAX_NAME,
    RECOMMENDER_KINDS,
    all_key,
    load_commands,
    member_key,
    module_key,
    plan_loader,
    plan_metric,
    plan_recommender,
)

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("packages/data", "packages/models", "packages/eval", "packages/serve", "tasks")
MODELS = "packages/models/src/pinlab_models"


def copy_checkout(dest: Path) -> Path:
    """This checkout's files as they are now (tracked, and untracked but not ignored)."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=ROOT,
            capture_output=True,
            check=True,
        ).stdout.decode()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("copying the checkout needs git to list its files")
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    }


def new(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    """`pinlab new ARGS --json`: the exit code and the JSON document."""
    code = run(["new", *args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else {}


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A copy of its own, for a test that writes."""
    return copy_checkout(tmp_path / "repo")


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One copy for the tests that must write nothing (each checks that it did not)."""
    return copy_checkout(tmp_path_factory.mktemp("shared") / "repo")


def test_dry_runs_list_every_place_and_write_nothing(
    capsys: pytest.CaptureFixture[str], shared: Path
) -> None:
    checkout = shared
    before = snapshot(checkout)
    root = ["--root", str(checkout), "--dry-run"]
    code, plan = new(capsys, "recommender", "slim-vae", *root)
    assert code == 0 and plan["dry_run"]
    assert plan["created"] == [
        f"{MODELS}/_slim_vae.py",
        "packages/models/tests/test_models_slim_vae.py",
    ]
    assert set(plan["edited"]) == {
        f"{MODELS}/contracts.py",
        f"{MODELS}/registry.py",
        f"{MODELS}/__init__.py",
        "packages/models/tests/test_models_recommenders.py",  # a candidate scorer
        "README.md",
        "AGENTS.md",
    }
    code, plan = new(capsys, "recommender", "cos2", "--kind", "item-item", *root)
    assert code == 0 and "packages/models/tests/test_models_recommenders.py" not in plan["edited"]
    code, plan = new(capsys, "loader", "json-lines", *root)
    assert code == 0
    assert plan["created"][0] == "packages/data/src/pinlab_data/_json_lines_loader.py"
    assert "tasks/src/pinlab_tasks/commands/data.py" in plan["edited"]
    code, plan = new(capsys, "metric", "capped-recall", *root)
    assert code == 0
    assert plan["created"][0] == "packages/eval/src/pinlab_eval/_capped_recall.py"
    assert any("uv run pytest" in step for step in plan["next"])
    assert snapshot(checkout) == before


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["recommender", "ease"], "registered already"),
        (["recommender", "two-tower", "--kind", "closed-form"], "registered already"),
        (["recommender", "text-encoder"], "has a TextEncoder already"),
        (["recommender", "linear"], "_linear.py exists already"),
        (["recommender", "Mult_VAE"], "lower-case letters"),
        (["recommender", "mult--vae"], "lower-case letters"),
        (["recommender", "9lives"], "a letter first"),
        (["recommender", "a" * 33], "32 characters at most"),
        (["recommender", "none"], "class None"),
        (["loader", "movielens"], "has a load_movielens already"),
        (["loader", "images"], "has a load_images already"),
        (["metric", "recall"], "has a recall_at_k already"),
        (["metric", "ranking"], "_ranking.py exists already"),
    ],
)
def test_a_bad_or_taken_name_exits_2_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], shared: Path, args: list[str], says: str
) -> None:
    checkout = shared
    before = snapshot(checkout)
    code, error = new(capsys, *args, "--root", str(checkout))
    assert code == 2
    assert says in error["error"]
    assert snapshot(checkout) == before


def test_an_unknown_kind_is_a_usage_error(capsys: pytest.CaptureFixture[str], shared: Path) -> None:
    code = run(["new", "recommender", "abc", "--kind", "deep", "--root", str(shared)])
    assert code == 2
    assert "is not one of" in capsys.readouterr().err


def test_a_missing_marker_is_named_and_nothing_is_written(
    capsys: pytest.CaptureFixture[str], checkout: Path
) -> None:
    registry = checkout / MODELS / "registry.py"
    registry.write_text(
        "".join(
            line
            for line in registry.read_text().splitlines(keepends=True)
            if "pinlab new:" not in line
        )
    )
    before = snapshot(checkout)
    code, error = new(capsys, "recommender", "abc", "--root", str(checkout))
    assert code == 2
    assert "registrations go above this line" in error["error"] and "restore" in error["error"]
    assert snapshot(checkout) == before


def test_the_root_is_found_from_the_current_folder(
    capsys: pytest.CaptureFixture[str], shared: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(shared / "packages" / "eval")
    code, plan = new(capsys, "metric", "capped-recall", "--dry-run")
    assert code == 0 and plan["root"] == str(shared)
    monkeypatch.chdir(shared.parent)
    code, error = new(capsys, "metric", "capped-recall", "--dry-run")
    assert code == 2 and "pass --root" in error["error"]


def test_the_longest_names_keep_every_line_short() -> None:
    """Lines that carry a name must fit ruff's 100 characters at 32 characters of name."""
    longest = "abcdefghij-klmnopqrst-uvwxyz-0123"[:MAX_NAME]
    plans = [
        *(plan_recommender(ROOT, longest, kind) for kind in RECOMMENDER_KINDS),
        plan_loader(ROOT, longest),
        plan_metric(ROOT, longest),
    ]
    for plan in plans:
        for rel in [*plan.created, *plan.edited]:
            if rel.endswith(".py"):
                for number, line in enumerate(plan.texts[rel].splitlines(), 1):
                    assert len(line) <= LINE_LENGTH, f"{rel}:{number} {line}"


def test_the_load_commands_are_read_from_the_decorators() -> None:
    text = (ROOT / "tasks/src/pinlab_tasks/commands/data.py").read_text()
    assert load_commands(text) >= {"movielens", "interactions", "sequences", "images"}


def test_every_marker_is_in_place() -> None:
    for marker in MARKERS:
        text = (ROOT / marker.file).read_text()
        assert text.count(marker.text) == 1, f"{marker.file} lacks {marker.text!r}"


def test_the_orders_agree_with_ruff_on_this_checkout() -> None:
    """Imports and `__all__` here pass ruff, so sorting them again must change nothing."""
    sources = [*ROOT.glob("packages/*/src/*/**/*.py"), *ROOT.glob("tasks/src/*/**/*.py")]
    assert len(sources) > 50
    for source in sources:
        tree = ast.parse(source.read_text())
        froms = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module]
        for node in froms:
            names = [alias.name for alias in node.names]
            assert names == sorted(names, key=member_key), f"{source}: {names}"
        firsts = [str(n.module) for n in froms if str(n.module).startswith("pinlab_")]
        assert firsts == sorted(firsts, key=module_key), source
        for statement in tree.body:
            if (
                isinstance(statement, ast.Assign)
                and isinstance(statement.value, ast.List)
                and [getattr(t, "id", None) for t in statement.targets] == ["__all__"]
            ):
                listed = [str(getattr(e, "value", "")) for e in statement.value.elts]
                assert listed == sorted(listed, key=all_key), source


@pytest.mark.slow
def test_skeletons_pass_the_gates_and_their_tests(
    capsys: pytest.CaptureFixture[str], checkout: Path
) -> None:
    """Every kind scaffolded into a copy; there, ruff, mypy --strict and the tests pass."""
    long_name = "closed-form-with-a-long-name-xyz"  # the longest name allowed: line lengths
    scaffolds = [
        ["recommender", "scaf-mf"],
        ["recommender", "scaf-knn2", "--kind", "item-item"],
        ["recommender", f"scaf-{long_name[5:]}", "--kind", "closed-form"],
        ["loader", "scaf-jsonl"],
        ["metric", "scaf-recall"],
    ]
    written: set[str] = set()
    for args in scaffolds:
        code, plan = new(capsys, *args, "--root", str(checkout))
        assert code == 0, plan
        written |= {*plan["created"], *plan["edited"]}
    python = sorted(rel for rel in written if rel.endswith(".py"))
    if (ROOT / ".mypy_cache").is_dir():  # a warm cache saves a minute of stub reading
        shutil.copytree(ROOT / ".mypy_cache", checkout / ".mypy_cache")
    paths = os.pathsep.join(str(checkout / s / "src") for s in SOURCES)
    env = {**os.environ, "PYTHONPATH": paths, "MYPYPATH": paths}

    def check(*command: str) -> str:
        done = subprocess.run(
            [sys.executable, *command],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, f"{' '.join(command)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    where = check("-c", "import pinlab_models, pinlab_tasks; print(pinlab_models.__file__)")
    assert where.startswith(str(checkout)), "the copy's code must be the code under test"
    check("-m", "ruff", "check", *python)
    check("-m", "ruff", "format", "--check", *python)
    check("-m", "mypy", *python)
    tests = [rel for rel in python if "/tests/" in rel and "scaf" in rel]
    assert len(tests) == 5
    out = check(
        *["-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "scaf"],
        *tests,
        "packages/models/tests/test_models_recommenders.py",
        "packages/models/tests/test_models_search_space.py",
        "packages/models/tests/test_models_parallel.py",  # the epochs skeleton steps via Steps
        "tests/test_docs.py",
    )
    # Per model at least: its own test, the spec's, the contract suite's 3 (more as it grows);
    # the loader's 2, the metric's 3, the docs naming the 3 models and the load command (4).
    passed = re.search(r"(\d+) passed", out)
    assert passed is not None and int(passed.group(1)) >= 3 * 5 + 9, out
    assert "failed" not in out and "error" not in out, out
