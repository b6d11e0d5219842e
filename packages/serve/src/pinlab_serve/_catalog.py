"""What the service reads from a run directory, loaded once: pins, images, interactions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pinlab_data import (
    RunPaths,
    dataset_fingerprint,
    interaction_log,
    load_dataset,
    run_data_dir,
    seen_csr,
)
from pinlab_data.contracts import ImageArray, Int64Array
from pinlab_serve.contracts import PinlabServeError, PinNotFoundError, PinOut


@dataclass(frozen=True)
class RunFiles(RunPaths):
    """The run directory the service reads (`RunPaths`, the layout the commands write)."""

    def data_dir(self) -> Path:
        record = self.record
        if not record.is_file():
            if (self.root / "dataset.json").is_file():
                raise PinlabServeError(
                    f"{self.root} is a pinlab dataset, not a run; train on it into a run "
                    f"(`pinlab train ... --data {self.root} --run RUN`) and serve that"
                )
            raise PinlabServeError(
                f"{self.root} is not a pinlab run (no run.json); make one with `pinlab demo`"
            )
        try:
            facts = json.loads(record.read_text())
            data, trained_on = facts.get("data_dir"), facts.get("dataset_fingerprint")
        except (ValueError, AttributeError) as exc:  # not JSON, not text, not an object
            raise PinlabServeError(f"{record} is not a valid run record; remake the run") from exc
        if not data:
            raise PinlabServeError(f"run {self.root} records no dataset; train into it first")
        found = run_data_dir(Path(data), self.root)
        # Models answer in the ids of the data they were trained on: never serve them on other.
        if trained_on and found.is_dir() and dataset_fingerprint(found) != trained_on:
            raise PinlabServeError(
                f"{found} changed since the steps of {self.root} read it (dataset fingerprint "
                f"{trained_on[:12]}); restore it, or train again into a new run"
            )
        return found

    def served_recommenders(self, chosen: str | None) -> list[str]:
        """`ranked_recommenders()` with `chosen` first; a name the run has not trained is
        refused, naming those it has."""
        ranked = self.ranked_recommenders()
        if chosen is None:
            return ranked
        if chosen not in ranked:
            trained = ", ".join(sorted(ranked)) or "none"
            raise PinlabServeError(
                f"run {self.root} has no trained recommender {chosen!r} (trained: {trained}); "
                f"train it with `pinlab train recommender --run {self.root} --model {chosen}`, "
                "or serve one of those"
            )
        return [chosen, *(name for name in ranked if name != chosen)]

    def ranked_recommenders(self) -> list[str]:
        """Trained recommenders, best first: eval.json's best, the rest by its ndcg@10 where
        it has them, then by name from the last."""
        names = self.trained_recommenders()
        evaluation = self.recommenders / "eval.json"
        record: Any = {}
        if evaluation.is_file():
            try:
                record = json.loads(evaluation.read_text())
            except ValueError:  # not JSON, or not text
                record = None
        if not isinstance(record, dict):
            raise PinlabServeError(
                f"{evaluation} is not a JSON object; rerun `pinlab eval recommender` or delete it"
            )
        models = record.get("models", {})
        ndcg = {
            str(name): float(metrics.get("ndcg@10", -1.0))
            for name, metrics in (models.items() if isinstance(models, dict) else [])
            if isinstance(metrics, dict)
        }
        best = record.get("best")
        evaluated = sorted(
            (n for n in names if n in ndcg or n == best),
            key=lambda n: (n != best, -ndcg.get(n, -1.0)),
        )
        # Unevaluated ones keep the old default order: the last trained name first.
        return evaluated + [n for n in reversed(names) if n not in evaluated]

    def check(self) -> None:
        """Refuse a run the service cannot serve, saying what is missing and how to make it."""
        self.data_dir()
        if not self.encoder.is_file():
            raise PinlabServeError(
                f"run {self.root} has no trained encoder ({self.encoder}); run `pinlab demo` "
                "or `pinlab train visual --run RUN`"
            )
        if not (self.index / "index.json").is_file():
            raise PinlabServeError(
                f"run {self.root} has no index; build it with `pinlab index build --run RUN`"
            )


class Catalog:
    """Pins, their packed images and every user's engaged pins, in memory (images mapped)."""

    def __init__(self, data_dir: Path) -> None:
        ds = load_dataset(data_dir)
        pins = ds.pins
        self.pin_ids: Int64Array = ds.pin_ids()
        self.external_ids: list[str | None] = pins.column("external_id").to_pylist()
        self.captions: list[str] = pins.column("caption").to_pylist()
        self.categories: list[str] = pins.column("category").to_pylist()
        self.creator_ids: list[int] = pins.column("creator_id").to_pylist()
        self.creator_groups: list[str] = pins.column("creator_group").to_pylist()
        rows = pins.column("image_row")
        self.image_rows: list[int | None] = rows.to_pylist()
        self.images: ImageArray | None = ds.images
        self.row_of: dict[int, int] = {int(p): i for i, p in enumerate(self.pin_ids.tolist())}
        names = np.asarray(self.categories)
        self.category_names = sorted(set(self.categories))
        self.category_pins: dict[str, Int64Array] = {
            c: self.pin_ids[names == c] for c in self.category_names
        }
        self.log = interaction_log(ds)
        self.item_order: Int64Array = np.argsort(self.log.item_ids, kind="stable")
        self.seen_indptr, self.seen_items = seen_csr(self.log)
        user_ids: list[int] = self.log.user_ids.tolist()  # the order GET /v1/users lists
        self.user_position: dict[int, int] = {u: i for i, u in enumerate(user_ids)}
        users = ds.users.select(["user_id", "external_id"]).to_pydict()
        external = dict(zip(users["user_id"], users["external_id"], strict=True))
        self.user_external_ids: list[str | None] = [external.get(u) for u in user_ids]
        self.user_by_external: dict[str, int] = {
            e: u for u, e in zip(user_ids, self.user_external_ids, strict=True) if e is not None
        }

    def __len__(self) -> int:
        return len(self.pin_ids)

    def row(self, pin_id: int) -> int:
        row = self.row_of.get(int(pin_id))
        if row is None:
            raise PinNotFoundError(
                f"pin {pin_id} is not in the catalogue; ids come from search results or "
                "GET /v1/pins/{id}/similar"
            )
        return row

    def pin(self, pin_id: int) -> PinOut:
        return PinOut.model_validate(self._fields(pin_id))

    def hit(self, pin_id: int, score: float) -> dict[str, Any]:
        """A `PinHit`'s fields: the response validates all its hits in one call, where a
        `PinHit` per hit cost a tenth of a `similar` request's server time."""
        return {**self._fields(pin_id), "score": score}

    def _fields(self, pin_id: int) -> dict[str, Any]:
        row = self.row(pin_id)
        return {
            "pin_id": int(pin_id),
            "external_id": self.external_ids[row],
            "caption": self.captions[row],
            "category": self.categories[row],
            "creator_id": self.creator_ids[row],
            "creator_group": self.creator_groups[row],
            "image_url": None if self.image_rows[row] is None else f"/v1/pins/{pin_id}/image",
        }

    def image(self, pin_id: int) -> ImageArray:
        image_row = self.image_rows[self.row(pin_id)]
        if image_row is None or self.images is None:
            raise PinNotFoundError(f"pin {pin_id} has no packed image in the dataset")
        return np.asarray(self.images[image_row])

    def allowed(self, category: str | None) -> Int64Array | None:
        """Pin ids of `category` (None: no filter); an unknown category is bad input."""
        if category is None:
            return None
        pins = self.category_pins.get(category)
        if pins is None:
            raise PinlabServeError(
                f"unknown category {category!r}; use one of: {', '.join(self.category_names)}"
            )
        return pins

    def user(self, user_id: int) -> int:
        position = self.user_position.get(int(user_id))
        if position is None:
            raise PinNotFoundError(
                f"user {user_id} is not in the dataset; GET /v1/users lists the user ids"
            )
        return position

    def seen(self, position: int) -> Int64Array:
        """Item indexes (pin table rows) the user at `position` engaged with."""
        return self.seen_items[self.seen_indptr[position] : self.seen_indptr[position + 1]]
