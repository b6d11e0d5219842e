"""One place that decides how results reach the terminal: rich for people, JSON for agents."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

stdout = Console()
stderr = Console(stderr=True)
log = logging.getLogger("pinlab")


def configure_logging(level: str) -> None:
    handler = RichHandler(console=stderr, show_path=False, show_time=False)
    logging.basicConfig(level=level, handlers=[handler], format="%(message)s", force=True)


def emit(payload: Mapping[str, Any], as_json: bool, render: Callable[[], None]) -> None:
    """Print exactly one JSON document on stdout, or the rich rendering."""
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        render()


@contextmanager
def busy(message: str, quiet: bool) -> Iterator[None]:
    """A spinner on stderr while a long step runs; none when `quiet` (--json)."""
    if quiet:
        yield
        return
    with stderr.status(message):
        yield


def metrics_table(title: str, rows: Mapping[str, Mapping[str, float]]) -> Table:
    """Rows of metric objects, one column per metric name, in first-seen order."""
    columns: list[str] = []
    for metrics in rows.values():
        columns += [c for c in metrics if c not in columns]
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for column in columns:
        table.add_column(column, justify="right")
    for name, metrics in rows.items():
        table.add_row(name, *(_fmt(metrics.get(c)) for c in columns))
    return table


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
