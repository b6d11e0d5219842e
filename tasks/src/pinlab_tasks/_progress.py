"""`--progress`: what a long command says on stderr while it runs, for people or agents."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from pinlab_models import ProgressEvent, TrainProgress
from pinlab_tasks._app import settings
from pinlab_tasks._output import stderr
from pinlab_tasks.recsys import Say


@dataclass(frozen=True)
class JsonProgress:
    """Writes each event as one JSON line on stderr, flushed at once (stdout stays the single
    `--json` document)."""

    command: str

    def __call__(self, event: ProgressEvent) -> None:
        line = event.model_copy(update={"command": self.command}).model_dump_json(exclude_none=True)
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    def step(self, message: str) -> None:
        self(ProgressEvent(event="step", message=message))


def train_progress(human: bool, command: str) -> TrainProgress:
    """`TrainContext.progress` under `--progress`; `human` is what `command` (its words, e.g.
    "train recommender") chose before the option existed (`auto`), usually `not as_json`."""
    mode = settings().progress
    if mode == "json":
        return JsonProgress(command)
    return {"auto": human, "rich": True, "off": False}[mode]


def _quiet(_: str) -> None:
    return None


def step_say(human: Say, command: str) -> Say:
    """Where `command`'s stage messages go under `--progress`; `human` is the `auto` choice."""
    mode = settings().progress
    if mode == "json":
        return JsonProgress(command).step
    return {"auto": human, "rich": _print, "off": _quiet}[mode]


def _print(message: str) -> None:
    stderr.print(message, markup=False, highlight=False, soft_wrap=True)


def progress_description() -> dict[str, Any]:
    """`describe`'s account of `--progress`, the event schema generated from the model."""
    return {
        "option": "--progress auto|rich|json|off [env PINLAB_PROGRESS]",
        "auto": "a bar on a terminal, plain lines elsewhere; commands silent under --json stay so",
        "rich": "as auto, but also under --json (on stderr)",
        "json": "one event per line on stderr, flushed at once; stdout stays the --json document",
        "off": "nothing",
        "events": "start and end per fit, epoch per epoch (ETA in eta_s), step per stage",
        "event_schema": ProgressEvent.model_json_schema(),
    }
