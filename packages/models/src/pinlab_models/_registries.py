"""What every name registry of pinlab_models shares: one name, one entry, one error."""

from __future__ import annotations

from typing import TypeVar

from pinlab_models.contracts import PinlabModelError

T = TypeVar("T")


def add_unique(registry: dict[str, T], kind: str, name: str, entry: T) -> None:
    """Add `entry` under `name`, refusing a name already taken (an accidental overwrite)."""
    if name in registry:
        raise PinlabModelError(f"{kind} {name!r} is already registered; pick another name")
    registry[name] = entry
