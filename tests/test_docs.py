"""The docs that list things list all of them: every CLI command in the README, every
registered recommender in the README and AGENTS.md, every package in the AGENTS.md map with
its own AGENTS.md beside its code. A new command, model or package fails here until the
docs say it."""

from __future__ import annotations

from pathlib import Path

import pytest

import pinlab_tasks.cli  # noqa: F401 - importing the CLI registers every command on `app`
from pinlab_models import recommender_names
from pinlab_tasks._app import app
from pinlab_tasks.commands.meta import walk_commands

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
AGENTS = (ROOT / "AGENTS.md").read_text(encoding="utf-8")
PACKAGES = sorted([*(ROOT / "packages").iterdir(), ROOT / "tasks"])


@pytest.mark.parametrize("command", sorted(c["command"] for c in walk_commands(app, [])))
def test_the_readme_lists_every_command(command: str) -> None:
    assert command in README, f"README.md's command list lacks `{command}`"


@pytest.mark.parametrize("name", recommender_names())
def test_the_docs_list_every_registered_recommender(name: str) -> None:
    assert f"`{name}`" in README, f"README.md's recommender table lacks `{name}`"
    assert f"`{name}`" in AGENTS, f"AGENTS.md's model map lacks `{name}`"


@pytest.mark.parametrize("package", [p for p in PACKAGES if (p / "pyproject.toml").is_file()])
def test_every_package_has_its_agents_md_and_is_on_the_map(package: Path) -> None:
    assert (package / "AGENTS.md").is_file(), f"{package.relative_to(ROOT)} has no AGENTS.md"
    assert f"`{package.relative_to(ROOT).as_posix()}`" in AGENTS, (
        f"AGENTS.md's package map lacks `{package.relative_to(ROOT).as_posix()}`"
    )
