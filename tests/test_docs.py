"""The docs that list things list all of them: every CLI command in the README, every
registered recommender in the README and AGENTS.md, every package in the AGENTS.md map with
its own AGENTS.md beside its code. A new command, model or package fails here until the
docs say it; an option the docs pass to a command fails here until the command has it."""

from __future__ import annotations

import re
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
DOCS = [ROOT / "README.md", ROOT / "AGENTS.md", *(p / "AGENTS.md" for p in PACKAGES)]
COMMANDS = list(walk_commands(app, []))
# `pinlab` and lowercase words (the command, then any prose), then the rest of the line up to
# the end of the code span, table cell or shell comment.
INVOCATION = re.compile(r"\bpinlab((?: [a-z][a-z-]*)+)([^`|#\n]*)")
FLAG = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")


@pytest.mark.parametrize("command", sorted(c["command"] for c in COMMANDS))
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


def documented_flags(text: str) -> list[tuple[str, str]]:
    """(command, flag) for every flag written after a pinlab command in `text`."""
    known = {c["command"] for c in COMMANDS}
    found = []
    for match in INVOCATION.finditer(text):
        words = match.group(1).split()
        # The longest command the words start with: `pinlab bench serve`, not `pinlab serve`.
        for n in range(len(words), 0, -1):
            command = " ".join(["pinlab", *words[:n]])
            if command in known:
                rest = " ".join(words[n:]) + match.group(2)
                found += [(command, flag) for flag in FLAG.findall(rest)]
                break
    return found


def test_documented_flags_are_read_from_commands_and_code_spans() -> None:
    text = "`pinlab bench serve --run R --json` and `pinlab demo -x`; pinlab serves it --fast"
    assert documented_flags(text) == [
        ("pinlab bench serve", "--run"),
        ("pinlab bench serve", "--json"),
        ("pinlab demo", "-x"),
    ]


def test_every_option_the_docs_pass_to_a_command_exists() -> None:
    # A boolean's declaration "--x/--no-x" names two flags.
    flags = {
        c["command"]: {
            "--help",
            *(f for p in c["inputs"] for d in p["flags"] for f in d.split("/")),
        }
        for c in COMMANDS
    }
    wrong = [
        f"{doc.relative_to(ROOT)}: `{command} {flag}`"
        for doc in DOCS
        if doc.is_file()
        for command, flag in documented_flags(doc.read_text(encoding="utf-8"))
        if flag not in flags[command]
    ]
    assert not wrong, "the docs pass options their commands lack:\n" + "\n".join(wrong)
