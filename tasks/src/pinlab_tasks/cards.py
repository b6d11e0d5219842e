"""Model and data cards of a run: what was trained on what, how well, for whom, and its limits.

The model card follows Mitchell et al. 2019 ("Model Cards for Model Reporting"), the data card
Gebru et al. 2021 ("Datasheets for Datasets") and Pushkarna et al. 2022 ("Data Cards"). Every
number is read from the run (run.json, eval.json, train.json, the dataset) or recomputed from
its saved models on the run's own test split; nothing is typed in. A piece the run lacks is
named in the card, never guessed.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from pinlab_data import (
    Dataset,
    Int64Array,
    PinlabDataError,
    describe_dataset,
    interaction_log,
    load_dataset,
    load_truth,
    read_json_object,
    seen_csr,
    write_bytes_atomic,
)
from pinlab_eval import (
    Float64Array,
    GroupQualityReport,
    evaluate_holdout,
    exposure_by_group,
    quality_by_group,
    relevant_csr,
    retrieval_by_group,
    retrieval_per_query,
    top_k,
)
from pinlab_models import CNNEncoder, load_recommender
from pinlab_tasks.recsys import RANKING_KS, split_for, stored_protocol
from pinlab_tasks.runs import DATA_CHANGED_FIX, RunLayout, check_output_folder, utc_now
from pinlab_tasks.visual import VISUAL_KS, pin_images, pin_labels, visual_test_rows

CARDS_DIR = "cards"
MODEL_CARD = "model_card.md"
DATA_CARD = "data_card.md"

GROUP_K = 10
"""The cut-off of the per-group recommender metrics and of the exposure table."""

GROUP_METRICS = (f"ndcg@{GROUP_K}", f"recall@{GROUP_K}")
VISUAL_GROUP_METRICS = tuple(f"recall@{k}" for k in VISUAL_KS)
OVERALL_SHOWN = (
    "ndcg@10", "recall@10", "hr@10", "mrr@10", "coverage@10", "gini@10", "taste_recovery",
)  # fmt: skip
LEVEL = 0.95
TOLERANCE = 1e-9
"""How far a recomputed mean may sit from the stored one before the card says they differ."""


@dataclass(frozen=True)
class Cards:
    model_card: Path
    data_card: Path
    facts: dict[str, Any]


def write_cards(
    run_dir: Path,
    out: Path | None = None,
    seed: int = 0,
    resamples: int = 1000,
    user_columns: Sequence[str] | None = None,
) -> Cards:
    """Measure the run, then write both cards atomically to `out` (default RUN/cards)."""
    run = open_run(run_dir)
    directory = out if out is not None else run.root / CARDS_DIR
    check_output_folder(directory, lambda name: name in (MODEL_CARD, DATA_CARD), "--out", "card")
    facts = card_facts(run, seed, resamples, user_columns)
    model, data = directory / MODEL_CARD, directory / DATA_CARD
    write_bytes_atomic(model, model_card(facts).encode("utf-8"))
    write_bytes_atomic(data, data_card(facts).encode("utf-8"))
    run.log_step("card", {"seed": seed, "resamples": resamples, "out": str(directory)})
    return Cards(model_card=model, data_card=data, facts=facts)


def open_run(run_dir: Path) -> RunLayout:
    """The run at `run_dir`, or a PinlabDataError saying why it is not one."""
    if not run_dir.exists():
        raise PinlabDataError(f"{run_dir} does not exist; pass a run directory (`pinlab demo`)")
    if not run_dir.is_dir():
        raise PinlabDataError(f"{run_dir} is not a directory; pass a run directory")
    run = RunLayout(run_dir)
    run.read_record()  # no run.json, or not a JSON object: PinlabDataError
    return run


# --- measuring ----------------------------------------------------------------------------------


def card_facts(
    run: RunLayout,
    seed: int = 0,
    resamples: int = 1000,
    user_columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Everything the cards state, as JSON-able values; `missing` names what the run lacks."""
    record = run.read_record()
    missing: list[str] = []
    ds = _dataset(run, record)
    if ds is not None:
        user_group_columns(ds, user_columns)  # before any measuring, and without a recommender
    if ds is None:
        missing.append("no dataset in this run (run.json names none, and RUN/data is absent)")
    facts: dict[str, Any] = {
        "run": _run_facts(run, record),
        "bootstrap": {"resamples": resamples, "seed": seed, "level": LEVEL},
        "data": None if ds is None else _data_facts(ds),
        "visual": _visual_facts(run, ds, record, seed, resamples, missing),
        "recommenders": _recommender_facts(run, ds, seed, resamples, missing, user_columns),
        "missing": missing,
    }
    return facts


def _dataset(run: RunLayout, record: Mapping[str, Any]) -> Dataset | None:
    recorded = record.get("data_dir")
    # A moved run still finds its own data/ beside run.json.
    for path in ([Path(recorded)] if isinstance(recorded, str) else []) + [run.data]:
        if (path / "dataset.json").is_file():
            run.check_dataset(path, fix=DATA_CHANGED_FIX)
            return load_dataset(path)
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    return read_json_object(path) if path.is_file() else None


def _run_facts(run: RunLayout, record: Mapping[str, Any]) -> dict[str, Any]:
    provenance = record.get("provenance") or {}
    steps = record.get("steps") or []
    return {
        "dir": str(run.root),
        "name": run.root.resolve().name,
        "created": record.get("created"),
        "argv": record.get("argv"),
        "git_commit": provenance.get("git_commit"),
        "git_dirty": provenance.get("git_dirty"),
        "versions": provenance.get("versions") or {},
        "seeds": record.get("seeds") or {},
        "steps": [s.get("command") for s in steps if isinstance(s, dict)],
        "dataset_fingerprint": record.get("dataset_fingerprint"),
        "generated": utc_now(),
    }


def _codes(values: Sequence[str]) -> tuple[Int64Array, list[str]]:
    """String labels as 0..G-1 codes over their sorted distinct values."""
    names = sorted(set(values))
    index = {name: i for i, name in enumerate(names)}
    return np.array([index[v] for v in values], dtype=np.int64), names


def _data_facts(ds: Dataset) -> dict[str, Any]:
    described = describe_dataset(ds)
    log = interaction_log(ds)
    category, categories = _codes(ds.pins.column("category").to_pylist())
    group, groups = _codes(ds.pins.column("creator_group").to_pylist())
    per_category = np.bincount(category[log.items], minlength=len(categories))
    per_group = np.bincount(group[log.items], minlength=len(groups))
    pins_per_group = np.bincount(group, minlength=len(groups))
    appeal = load_truth(ds.root).pin_appeal if ds.manifest.source == "synth" else None
    described_groups = cast(dict[str, dict[str, int]], described["creator_groups"])
    creator_groups = {}
    for g, name in enumerate(groups):
        creator_groups[name] = {
            "pins": int(pins_per_group[g]),
            "creators": int(described_groups[name]["creators"]),
            "interactions": int(per_group[g]),
            "pin_share": float(pins_per_group[g] / max(len(group), 1)),
            "interaction_share": float(per_group[g] / max(len(log), 1)),
            "interactions_per_pin": float(per_group[g] / max(pins_per_group[g], 1)),
            "mean_true_appeal": None if appeal is None else float(appeal[group == g].mean()),
        }
    return {
        "describe": described,
        "manifest_config": ds.manifest.config,
        "categories": {
            name: {"pins": int((category == c).sum()), "interactions": int(per_category[c])}
            for c, name in enumerate(categories)
        },
        "creator_groups": creator_groups,
    }


def _encoder_step(record: Mapping[str, Any]) -> dict[str, Any] | None:
    """The last step that trained the run's encoder: its seed picks the held-out pins."""
    steps = [
        s
        for s in record.get("steps") or []
        if isinstance(s, dict) and s.get("command") in ("train visual", "train encoder")
    ]
    return steps[-1] if steps else None


def _visual_facts(
    run: RunLayout,
    ds: Dataset | None,
    record: Mapping[str, Any],
    seed: int,
    resamples: int,
    missing: list[str],
) -> dict[str, Any] | None:
    if not run.encoder.is_file():
        missing.append("no visual encoder in this run (RUN/visual/encoder.pt)")
        return None
    step = _encoder_step(record)
    facts: dict[str, Any] = {
        "train": _read_json(run.visual / "train.json"),
        "config": None if step is None else step.get("config"),
        "stored": _read_json(run.visual / "eval.json"),
    }
    if ds is None or ds.images is None or step is None:
        why = "no dataset" if ds is None else "no images" if ds.images is None else "no step"
        missing.append(f"visual search per group not measured ({why} in this run)")
        return facts
    encoder_seed = int(step.get("config", {}).get("seed", 0))
    protocol, test = visual_test_rows(run, ds, encoder_seed)
    embeddings = CNNEncoder.load(run.encoder).embed(pin_images(ds)[test])
    result = retrieval_per_query(embeddings, pin_labels(ds)[test], ks=VISUAL_KS, protocol=protocol)
    facts |= {"protocol": protocol, "encoder_seed": encoder_seed, "num_pins": len(test)}
    facts["overall"] = result.report().metrics
    facts["num_queries"] = len(result.queries)
    stored = (facts["stored"] or {}).get("trained")
    facts["matches_stored"] = None if stored is None else _same(facts["overall"], stored)
    by: dict[str, Any] = {}
    for column in ("creator_group", "category"):
        codes, names = _codes(ds.pins.column(column).to_pylist())
        by[column] = {
            "names": names,
            "items": np.bincount(codes[test], minlength=len(names)).tolist(),
            "metrics": {
                metric: retrieval_by_group(
                    result, codes[test], metric, len(names), resamples, seed, LEVEL
                ).model_dump(mode="json")
                for metric in VISUAL_GROUP_METRICS
            },
        }
    facts["by"] = by
    return facts


def _same(recomputed: Mapping[str, float], stored: Mapping[str, Any]) -> bool:
    shared = [k for k in recomputed if isinstance(stored.get(k), int | float)]
    return all(abs(recomputed[k] - float(stored[k])) <= TOLERANCE for k in shared)


def activity_quartiles(activity: Int64Array) -> tuple[Int64Array, list[str]]:
    """Users' activity quartile 0..3 (by value, so tied users share one) and each one's label.

    Quartile q holds the users above the q-th quartile edge and at or below the next: with
    heavy ties a quartile can be empty, and it is then reported empty.
    """
    return quartiles(activity.astype(np.float64), " interactions")


def quartiles(values: Float64Array, unit: str = "") -> tuple[Int64Array, list[str]]:
    """Quartile 0..3 of each value by the quartile edges of the non-NaN ones, labelled with
    the span it holds; a NaN lands past the last quartile (group 4)."""
    nan = np.isnan(values)
    edges = np.quantile(values[~nan], [0.25, 0.5, 0.75])
    group = np.searchsorted(edges, values, side="left").astype(np.int64)
    group[nan] = 4
    labels = []
    for q in range(4):
        members = values[group == q]
        span = f"{members.min():g}-{members.max():g}{unit}" if len(members) else "no users"
        labels.append(f"Q{q + 1} ({span})")
    return group, labels


ACTIVITY = "activity"
"""The user grouping every card has: quartile of training interactions."""
AGE_EDGES = (18, 25, 35, 45, 50, 56)
"""MovieLens-1M's age buckets (its README), used for any user column named `age`."""
MAX_LEVELS = 8
"""A numeric user column with more distinct values than this is bucketed."""


AGE_LABELS = [
    f"under {AGE_EDGES[0]}",
    *(f"{lo}-{hi - 1}" for lo, hi in itertools.pairwise(AGE_EDGES)),
    f"{AGE_EDGES[-1]}+",
]


def age_buckets(ages: Sequence[float | None]) -> tuple[Int64Array, list[str]]:
    """MovieLens-1M's seven age buckets (under 18, 18-24, ..., 56+), and 'missing' last when
    a user has no age."""
    labels = list(AGE_LABELS)
    known = np.asarray([-1 if a is None else a for a in ages], dtype=np.float64)
    group = np.searchsorted(np.asarray(AGE_EDGES, np.float64), known, side="right")
    return _with_missing(group.astype(np.int64), labels, ages)


def _with_missing(
    group: Int64Array, labels: list[str], values: Sequence[Any]
) -> tuple[Int64Array, list[str]]:
    """Users without a value in one more group, 'missing', when there are any."""
    absent = np.asarray([v is None for v in values], dtype=np.bool_)
    if not absent.any():
        return group, labels
    group[absent] = len(labels)
    return group, [*labels, "missing"]


def user_column_groups(column: str, values: Sequence[Any]) -> tuple[Int64Array, list[str]]:
    """Each user's group by one users-table column: its values as they are, or buckets for a
    numeric column with more than MAX_LEVELS values (quartiles), and MovieLens-1M's age buckets
    for a numeric `age`. Users with no value are the group 'missing' (last, if any)."""
    present = [v for v in values if v is not None]
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in present)
    if numeric and column == "age":  # 100K's ages, or 1M's bucket lower bounds
        return age_buckets(values)
    if numeric and len(set(present)) > MAX_LEVELS:
        known = np.asarray([np.nan if v is None else v for v in values], np.float64)
        return _with_missing(*quartiles(known), values)
    names = sorted({str(v) for v in present})
    code = {name: i for i, name in enumerate(names)}
    codes = [0 if v is None else code[str(v)] for v in values]
    return _with_missing(np.asarray(codes, dtype=np.int64), names, values)


def user_group_columns(ds: Dataset, columns: Sequence[str] | None) -> list[str]:
    """`columns` (None: activity and every user attribute column); an unknown name is an
    error that lists the ones that exist."""
    attributes = [c for c in ds.users.column_names if c not in ("user_id", "external_id")]
    known = [ACTIVITY, *attributes]
    wanted = known if columns is None else list(columns)
    unknown = [c for c in wanted if c not in known]
    if unknown:
        raise PinlabDataError(
            f"--user-group {unknown[0]!r} is not a user column of this run's data; choose from "
            f"{', '.join(known)}"
        )
    return wanted


def user_groupings(
    ds: Dataset, user_ids: Int64Array, activity: Int64Array, columns: Sequence[str] | None
) -> list[tuple[str, Int64Array, list[str]]]:
    """(what, each user's group, group labels) for `columns` (`user_group_columns`)."""
    wanted = user_group_columns(ds, columns)
    row_of = {int(u): r for r, u in enumerate(ds.user_ids().tolist())}
    rows = [row_of.get(int(u)) for u in user_ids]
    out = []
    for column in wanted:
        if column == ACTIVITY:
            group, labels = activity_quartiles(activity)
            out.append(("activity quartile (training interactions)", group, labels))
            continue
        table = ds.users.column(column).to_pylist()
        values = [None if r is None else table[r] for r in rows]
        group, labels = user_column_groups(column, values)
        bucketed = " (MovieLens-1M age buckets)" if labels[: len(AGE_LABELS)] == AGE_LABELS else ""
        out.append((f"{column}{bucketed}", group, labels))
    return out


def _recommender_facts(
    run: RunLayout,
    ds: Dataset | None,
    seed: int,
    resamples: int,
    missing: list[str],
    user_columns: Sequence[str] | None = None,
) -> dict[str, Any]:
    names = run.trained_recommenders()
    if not names:
        missing.append("no recommender in this run (RUN/recommender/*/model.pt)")
        return {}
    stored_eval = _read_json(run.recommenders / "eval.json") or {}
    stored_models = stored_eval.get("models") or {}
    if not stored_models:
        missing.append("no stored recommender results (RUN/recommender/eval.json)")
    log = None if ds is None else interaction_log(ds)
    item_group, group_names = _codes(
        [] if ds is None else ds.pins.column("creator_group").to_pylist()
    )
    splits: dict[str, Any] = {}
    out: dict[str, Any] = {}
    for name in names:
        train = _read_json(run.recommender(name).parent / "train.json") or {}
        facts: dict[str, Any] = {
            "config": train.get("config"),
            "epochs": train.get("epochs"),
            "fit_seconds": train.get("fit_seconds"),
            "protocol": train.get("protocol"),
            "stored": stored_models.get(name),
        }
        out[name] = facts
        protocol = train.get("protocol")
        if log is None or not isinstance(protocol, dict):
            why = "no dataset in this run" if log is None else "its train.json has no protocol"
            missing.append(f"{name}: per-group metrics and exposure not measured ({why})")
            continue
        key = json.dumps(protocol, sort_keys=True)
        if key not in splits:
            splits[key] = split_for(log, stored_protocol(protocol))
        split = splits[key]
        model = load_recommender(run.recommender(name))
        measured = evaluate_holdout(model, split.test, ks=RANKING_KS)
        recomputed = measured.means()
        stored = facts["stored"]
        per_user = np.bincount(split.test.train.users, minlength=log.num_users)
        activity = per_user[measured.users].astype(np.int64)
        assert ds is not None  # a log comes from the dataset
        groupings = user_groupings(ds, log.user_ids[measured.users], activity, user_columns)
        users, relevant = relevant_csr(split.test.target)
        ranked = top_k(model, users, GROUP_K, seen_csr(split.test.train))
        exposure = exposure_by_group(ranked, item_group, relevant, len(group_names))
        facts |= {
            "counts": split.test.counts.model_dump(),
            "recomputed": recomputed,
            "matches_stored": None if stored is None else _same(recomputed, stored),
            "user_groups": [
                {
                    "by": by,
                    "names": labels,
                    "metrics": {
                        metric: _quality(
                            measured.per_user[metric], group, len(labels), metric, resamples, seed
                        )
                        for metric in GROUP_METRICS
                        if metric in measured.per_user
                    },
                }
                for by, group, labels in groupings
            ],
            "exposure": {"names": group_names, **exposure.model_dump(mode="json")},
        }
    return out


def _quality(
    values: Float64Array,
    group: Int64Array,
    num_groups: int,
    metric: str,
    resamples: int,
    seed: int,
) -> dict[str, Any]:
    report: GroupQualityReport = quality_by_group(
        values, group, metric, num_groups=num_groups, resamples=resamples, seed=seed, level=LEVEL
    )
    return report.model_dump(mode="json")


# --- writing ------------------------------------------------------------------------------------


def _num(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "n/a" if value is None else str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(_num(v).replace("|", "\\|") for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _settings(config: Mapping[str, Any] | None) -> str:
    if not config:
        return "n/a"
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in config.items())


def _group_table(names: Sequence[str], reports: Mapping[str, Mapping[str, Any]]) -> str:
    """One row per group: its count, then each metric's mean and interval (empty: no values)."""
    metrics = list(reports)
    header = ["group", "count", *(f"{m} [{int(LEVEL * 100)}% CI]" for m in metrics)]
    rows = []
    for g, name in enumerate(names):
        cells: list[object] = [name, reports[metrics[0]]["groups"][g]["count"]]
        for metric in metrics:
            row = reports[metric]["groups"][g]
            cells.append(
                "empty"
                if row["empty"]
                else f"{row['mean']:.4f} [{row['ci'][0]:.4f}, {row['ci'][1]:.4f}]"
            )
        rows.append(cells)
    return _table(header, rows)


def _gaps(names: Sequence[str], reports: Mapping[str, Mapping[str, Any]]) -> str:
    lines = []
    for metric, r in reports.items():
        worst = r["groups"][r["worst_group"]]
        low, high = worst["ci"]
        lines.append(
            f"- {metric}: worst {names[r['worst_group']]} {worst['mean']:.4f} "
            f"[{low:.4f}, {high:.4f}] ({worst['count']} users), best "
            f"{names[r['best_group']]}, gap {r['gap']:.4f}."
        )
    return "\n".join(lines)


def _document(parts: Iterable[str]) -> str:
    """Blocks apart by a blank line, except that consecutive bullets stay one list."""
    text, previous = "", ""
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if text:
            text += "\n" if part.startswith("- ") and previous.startswith("- ") else "\n\n"
        text, previous = text + part, part
    return text + "\n"


def _missing(facts: Mapping[str, Any]) -> str:
    missing = facts["missing"]
    if not missing:
        return ""
    return "Not in this run:\n\n" + "\n".join(f"- {m}" for m in missing) + "\n"


def model_card(facts: Mapping[str, Any]) -> str:
    run, data = facts["run"], facts["data"]
    visual, recs = facts["visual"], facts["recommenders"]
    boot = facts["bootstrap"]
    parts = [
        f"# Model card: pinlab run {run['name']}",
        f"Written by `pinlab card` at {run['generated']} from the files of `{run['dir']}`, "
        'after Mitchell et al. 2019, "Model Cards for Model Reporting". Every number is read '
        "from the run or recomputed from its saved models on the run's own test split.",
        _missing(facts),
        "## Model details",
        _table(
            ["fact", "value"],
            [
                ["run created", run["created"] or "n/a"],
                ["command line", " ".join(run["argv"]) if run["argv"] else "n/a"],
                ["steps", ", ".join(str(s) for s in run["steps"]) or "n/a"],
                ["git commit", run["git_commit"] or "n/a"],
                ["uncommitted changes", run["git_dirty"]],
                ["versions", _settings(run["versions"])],
                ["seeds", _settings(run["seeds"])],
                ["dataset fingerprint", run["dataset_fingerprint"] or "n/a"],
            ],
        ),
    ]
    if visual is not None:
        train = visual.get("train") or {}
        encoder = (visual.get("config") or {}).get("encoder")
        parts += [
            "### Visual encoder",
            f"`visual/encoder.pt`, model id {train.get('model_id', 'n/a')}, trained on "
            f"{train.get('train_pins', 'n/a')} pins by category (retrieval by category).",
            f"Settings: {_settings(encoder)}.",
        ]
    if recs:
        parts += [
            "### Recommenders",
            _table(
                ["model", "settings", "epochs", "protocol", "fit seconds"],
                [
                    [
                        n,
                        _settings(r["config"]),
                        r["epochs"],
                        _settings(r["protocol"]),
                        r["fit_seconds"],
                    ]
                    for n, r in recs.items()
                ],
            ),
        ]
    parts += [
        "## Intended use",
        "- Offline research in pinlab: comparing visual-search encoders and recommenders under "
        "named, seeded protocols on this dataset, and checking how quality and exposure differ "
        "across groups before anything is trusted more widely.",
        "- Demonstrations of the pipeline (index, search, recommend) on the dataset it was "
        "trained on.",
        "## Out-of-scope use",
        "- Decisions about real people or real creators: the models were tuned and measured on "
        "this one dataset only" + (" (a synthetic world)" if _synthetic(data) else "") + ".",
        "- Serving a live product without its own audit: one seed, one split, no online "
        "measurement, no safety or content filtering.",
        "- Reading the numbers as properties of other datasets or of the algorithms in general.",
        "## Factors",
        f"Recommendation quality is broken down by user activity quartile (training interactions "
        f"of each test user) and by each user attribute the data has (MovieLens: age in "
        f"MovieLens-1M's buckets, gender, occupation), or the `--user-group` columns; "
        f"exposure by the pins' creator group; visual search by the query pin's creator group "
        f"and category. Intervals are {int(LEVEL * 100)}% percentile "
        f"bootstrap over the group's users or queries ({boot['resamples']} resamples, seed "
        f"{boot['seed']}).",
        "## Training and evaluation data",
        _data_summary(data),
        "See `data_card.md` beside this card for composition, splits and known biases.",
        "## Quantitative analyses",
    ]
    parts += _overall_section(visual, recs)
    parts += _recommender_group_sections(recs)
    parts += _visual_group_sections(visual)
    parts += [
        "## Ethical considerations",
        *_exposure_findings(recs, data),
        "## Caveats and limitations",
        "- One training run at one seed: the overall numbers carry no spread over seeds "
        "(`pinlab bench recsys --seeds N` gives it); the group intervals cover only the "
        "resampling of users or queries within this run.",
        "- Small groups give wide intervals; an empty group has no estimate at all.",
        "- Exposure uses the DCG position weight of the top "
        f"{GROUP_K} over the full catalogue; real attention may differ.",
        "- Relevance is the held-out interactions, which inherit any exposure bias of the "
        "logging policy that produced them (see the data card).",
    ]
    return _document(parts)


def _synthetic(data: Mapping[str, Any] | None) -> bool:
    return data is not None and data["describe"].get("source") == "synth"


def _data_summary(data: Mapping[str, Any] | None) -> str:
    if data is None:
        return "No dataset in this run, so nothing about the data can be stated."
    d = data["describe"]
    return (
        f"Dataset `{d['name']}` (source {d['source']}, seed {_num(d.get('seed'))}): "
        f"{d['num_pins']} pins, {d['num_users']} users, {d['num_interactions']} interactions."
    )


def _overall_section(visual: Mapping[str, Any] | None, recs: Mapping[str, Any]) -> list[str]:
    parts = ["### Overall (the run's stored results)"]
    stored_visual = None if visual is None else visual.get("stored")
    if stored_visual:
        rows = [
            [
                f"encoder ({name})",
                *(stored_visual[name].get(f"recall@{k}") for k in VISUAL_KS),
                stored_visual[name].get("map@r"),
            ]
            for name in ("trained", "untrained")
            if isinstance(stored_visual.get(name), dict)
        ]
        parts += [
            f"Visual search, {stored_visual.get('protocol', 'n/a')}, "
            f"{stored_visual.get('num_queries', 'n/a')} queries (`visual/eval.json`):",
            _table(["encoder", *(f"recall@{k}" for k in VISUAL_KS), "map@r"], rows),
        ]
    else:
        parts.append("No stored visual search results (`visual/eval.json`).")
    stored = {n: r["stored"] for n, r in recs.items() if r.get("stored")}
    if stored:
        shown = [m for m in OVERALL_SHOWN if any(m in s for s in stored.values())]
        parts += [
            "Recommenders on their test split (`recommender/eval.json`):",
            _table(["model", *shown], [[n, *(s.get(m) for m in shown)] for n, s in stored.items()]),
        ]
    elif recs:
        parts.append("No stored recommender results (`recommender/eval.json`).")
    checks = [
        f"{n}: {'matches' if r['matches_stored'] else 'DIFFERS FROM'} the stored means"
        for n, r in recs.items()
        if r.get("matches_stored") is not None
    ]
    if visual is not None and visual.get("matches_stored") is not None:
        checks.append(
            f"visual encoder: {'matches' if visual['matches_stored'] else 'DIFFERS FROM'} "
            "the stored metrics"
        )
    if checks:
        parts.append("Recomputed for this card from the saved models: " + "; ".join(checks) + ".")
    return parts


def _recommender_group_sections(recs: Mapping[str, Any]) -> list[str]:
    parts: list[str] = []
    for name, r in recs.items():
        groupings = r.get("user_groups")
        if not groupings:
            continue
        counts = r["counts"]
        for groups in groupings:
            parts += [
                f"### {name}: quality per user group, by {groups['by']}",
                f"{counts['target_users']} test users; {counts['train_interactions']} "
                f"training and {counts['target_interactions']} held-out interactions.",
                _group_table(groups["names"], groups["metrics"]),
                _gaps(groups["names"], groups["metrics"]),
            ]
        parts += [
            f"### {name}: exposure by creator group (top {r['exposure']['k']})",
            _exposure_table(r["exposure"]),
            f"Disparity (total variation between exposure and relevance shares): "
            f"{r['exposure']['disparity']:.4f}.",
        ]
    return parts


def _exposure_table(exposure: Mapping[str, Any]) -> str:
    return _table(
        ["creator group", "pins", "exposure share", "relevance share", "ratio"],
        [
            [
                exposure["names"][g["group"]],
                g["num_items"],
                g["exposure_share"],
                "empty" if g["empty"] else g["relevance_share"],
                "empty" if g["empty"] else g["ratio"],
            ]
            for g in exposure["groups"]
        ],
    )


def _visual_group_sections(visual: Mapping[str, Any] | None) -> list[str]:
    if visual is None or "by" not in visual:
        return []
    parts = [
        "### Visual search per group",
        f"The trained encoder on {visual['num_pins']} held-out pins ({visual['protocol']}, "
        f"encoder seed {visual['encoder_seed']}), each querying the others; relevant = same "
        f"category. {visual['num_queries']} queries; overall "
        + ", ".join(f"{k} {v:.4f}" for k, v in visual["overall"].items())
        + ".",
    ]
    for column, title in (("creator_group", "creator group"), ("category", "category")):
        by = visual["by"][column]
        parts += [f"By the query pin's {title}:", _group_table(by["names"], by["metrics"])]
    return parts


def _exposure_findings(recs: Mapping[str, Any], data: Mapping[str, Any] | None) -> list[str]:
    lines = []
    for name, r in recs.items():
        exposure = r.get("exposure")
        if not exposure:
            continue
        for g in exposure["groups"]:
            if g["empty"]:
                continue
            verdict = "less than" if g["ratio"] < 1 else "at least"
            lines.append(
                f"- {name} gives {exposure['names'][g['group']]} creators' pins "
                f"{g['exposure_share']:.4f} of the exposure for {g['relevance_share']:.4f} of "
                f"the relevance: {verdict} their share (ratio {g['ratio']:.4f})."
            )
    if _synthetic(data):
        assert data is not None
        knob = data["manifest_config"].get("emerging_exposure")
        lines.append(
            f"- The synthetic world shows emerging creators' pins at {_num(knob)} times the rate "
            "of established ones (`emerging_exposure`), so the held-out relevance itself "
            "understates them; equal ratios here do not mean equal treatment of equal appeal."
        )
    if not lines:
        lines.append("- No recommender could be measured, so no exposure statement is made.")
    return lines


def data_card(facts: Mapping[str, Any]) -> str:
    run, data = facts["run"], facts["data"]
    head = [
        f"# Data card: pinlab run {run['name']}",
        f"Written by `pinlab card` at {run['generated']} from `{run['dir']}`, after Gebru et "
        'al. 2021, "Datasheets for Datasets", and Pushkarna et al. 2022, "Data Cards". Every '
        "number is counted from the run's dataset.",
        _missing(facts),
    ]
    if data is None:
        body = ["No dataset in this run: nothing to describe."]
        return _document(head + body)
    d, config = data["describe"], data["manifest_config"]
    synthetic = _synthetic(data)
    time_range = d.get("time_range") or {}
    images = d.get("images") or {}
    body = [
        "## Source and motivation",
        f"`{d['name']}`, source `{d['source']}`, seed {_num(d.get('seed'))}, schema version "
        f"{d['schema_version']}, fingerprint {run['dataset_fingerprint'] or 'n/a'}.",
        (
            "Generated by `pinlab_data` (`pinlab data synth` / `pinlab demo`) to test "
            "pipelines against a known truth: every pin's category, palette and appeal and every "
            "user's taste are recorded (`truth.npz`)."
            if synthetic
            else "Loaded by `pinlab data load`; see the loader for the original source."
        ),
        "## Composition",
        _table(
            ["quantity", "value"],
            [
                ["pins", d["num_pins"]],
                ["users", d["num_users"]],
                ["interactions", d["num_interactions"]],
                ["creators", d["num_creators"]],
                ["density", d["density"]],
                ["events", _settings(d.get("events"))],
                ["interactions per user", _settings(d.get("interactions_per_user"))],
                ["interactions per pin", _settings(d.get("interactions_per_pin"))],
                ["time range", f"{time_range.get('start')} to {time_range.get('end')}"],
                ["packed images", images.get("packed")],
            ],
        ),
        "Per category:",
        _table(
            ["category", "pins", "interactions"],
            [[name, c["pins"], c["interactions"]] for name, c in data["categories"].items()],
        ),
        "Per creator group:",
        _table(
            [
                "creator group",
                "pins",
                "creators",
                "interactions",
                "pin share",
                "interaction share",
                "interactions per pin",
                "mean true appeal",
            ],
            [
                [
                    name,
                    g["pins"],
                    g["creators"],
                    g["interactions"],
                    g["pin_share"],
                    g["interaction_share"],
                    g["interactions_per_pin"],
                    g["mean_true_appeal"],
                ]
                for name, g in data["creator_groups"].items()
            ],
        ),
        "## Splits",
        *_split_lines(facts),
        "## Known biases",
        *_bias_lines(data, config, synthetic),
        "## Limitations",
        "- "
        + (
            "Synthetic: images are drawn shapes, captions templated, behaviour a generative "
            "model; conclusions transfer to real data only as hypotheses."
            if synthetic
            else "The card describes the loaded copy, after the loader's filters."
        ),
        "- Creator groups and categories are the dataset's labels; no demographic attribute "
        "of users or creators is recorded, so no fairness statement about people is possible.",
    ]
    return _document(head + body)


def _split_lines(facts: Mapping[str, Any]) -> list[str]:
    lines = []
    visual = facts["visual"]
    if visual is not None and "protocol" in visual:
        lines.append(
            f"- Visual search: {visual['protocol']} (encoder seed {visual['encoder_seed']}); "
            f"{visual['num_pins']} held-out pins never trained on, {visual['num_queries']} of "
            "them queries (a pin alone in its category is a distractor only)."
        )
    for name, r in facts["recommenders"].items():
        counts = r.get("counts")
        if counts is None:
            continue
        lines.append(
            f"- {name}: {_settings(r['protocol'])}; {counts['train_interactions']} training, "
            f"{counts['target_interactions']} held-out interactions of "
            f"{counts['target_users']} users ({counts['skipped_users']} skipped: no training "
            "data). Settings were chosen on a validation split inside the training part."
        )
    return lines or ["- No split was recorded in this run."]


def _bias_lines(data: Mapping[str, Any], config: Mapping[str, Any], synthetic: bool) -> list[str]:
    groups = data["creator_groups"]
    lines = [
        f"- {name}: {g['pin_share']:.4f} of pins, {g['interaction_share']:.4f} of interactions "
        f"({g['interactions_per_pin']:.4f} per pin)."
        for name, g in groups.items()
    ]
    if synthetic:
        lines.append(
            f"- By construction: each creator is emerging with probability "
            f"{_num(config.get('emerging_share'))}, and emerging creators' pins are shown at "
            f"{_num(config.get('emerging_exposure'))} times the rate of established ones "
            "(`emerging_exposure`), whatever their appeal. Interaction counts, and any model or "
            "relevance judgement learned from them, carry that exposure bias."
        )
        appeal = {n: g["mean_true_appeal"] for n, g in groups.items()}
        if all(v is not None for v in appeal.values()):
            lines.append(
                "- Mean true appeal per group (`truth.npz`): "
                + ", ".join(f"{n} {v:.4f}" for n, v in appeal.items())
                + "; compare with interactions per pin above."
            )
    per_pin = data["describe"].get("interactions_per_pin") or {}
    if per_pin:
        lines.append(
            f"- Popularity is skewed: interactions per pin median {_num(per_pin.get('median'))}"
            f", 90th percentile {_num(per_pin.get('p90'))}, max {_num(per_pin.get('max'))}."
        )
    return lines
