"""Rules review would otherwise have to guard: the layout and the direction of imports."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
PACKAGES = {
    "pinlab_data": ROOT / "packages/data/src/pinlab_data",
    "pinlab_models": ROOT / "packages/models/src/pinlab_models",
    "pinlab_eval": ROOT / "packages/eval/src/pinlab_eval",
    "pinlab_serve": ROOT / "packages/serve/src/pinlab_serve",
    "pinlab_tasks": ROOT / "tasks/src/pinlab_tasks",
}
ALLOWED = {
    "pinlab_data": set(),
    "pinlab_models": {"pinlab_data"},
    "pinlab_eval": {"pinlab_data"},
    "pinlab_serve": {"pinlab_data", "pinlab_models"},
    "pinlab_tasks": {"pinlab_data", "pinlab_models", "pinlab_eval", "pinlab_serve"},
}


def imported_pinlab_packages(source: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(source.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        found |= {n.split(".")[0] for n in names if n.startswith("pinlab_")}
    return found


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_imports_point_one_way(package: str) -> None:
    for source in PACKAGES[package].rglob("*.py"):
        illegal = imported_pinlab_packages(source) - ALLOWED[package] - {package}
        assert not illegal, f"{source.relative_to(ROOT)} imports {illegal}"


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_every_package_has_contracts_types_and_a_public_surface(package: str) -> None:
    folder = PACKAGES[package]
    assert (folder / "py.typed").is_file()
    if package != "pinlab_tasks":
        assert (folder / "contracts.py").is_file()
    module = importlib.import_module(package)
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{package}.__all__ names missing {name}"
    assert (folder.parent.parent / "tests").is_dir()


def test_the_import_checker_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("from pinlab_tasks.cli import run\nimport pinlab_eval.contracts\n")
    assert imported_pinlab_packages(bad) == {"pinlab_tasks", "pinlab_eval"}
