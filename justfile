# pinlab tasks: `just --list`

# Install every package and the dev tools into .venv
setup:
    uv sync

# The main job on the built-in synthetic world
demo *ARGS:
    uv run pinlab demo {{ARGS}}

# The default (fast) test suite
test *ARGS:
    uv run pytest {{ARGS}}

# Slow tests too (CI runs these)
test-all:
    uv run pytest -m ""

# Every gate: lint, format, types, tests
check:
    uv run ruff check
    uv run ruff format --check
    uv run mypy
    uv run pytest

# Format and auto-fix
fmt:
    uv run ruff format
    uv run ruff check --fix
