"""`pinlab report`: one self-contained HTML page from a bench or run directory.

The page reads only what the run wrote (bench.json, bench_visual.json, eval.json files,
metrics.jsonl logs, user_metrics.npz, PNGs, the cards of `pinlab card`); `write_report` first
writes a run's cards when it has none. Plots are drawn by `pinlab_eval` and embedded
as PNG data URIs; there is no script, font or stylesheet to fetch, so the file opens offline
and travels alone.
"""

from __future__ import annotations

import base64
import html
import json
import re
import shlex
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from pinlab_data import PinlabDataError, open_npz, read_json_object, write_bytes_atomic
from pinlab_eval import Curve, curves_png, difference_matrix_png, distributions_png
from pinlab_tasks.bandit_bench import BANDITS_FILE
from pinlab_tasks.bandit_bench import PLOT_FILE as BANDITS_PLOT
from pinlab_tasks.cards import CARDS_DIR, DATA_CARD, MODEL_CARD, write_cards
from pinlab_tasks.ope_bench import OPE_FILE
from pinlab_tasks.ope_bench import PLOT_FILE as OPE_PLOT
from pinlab_tasks.rerank_bench import RERANK_FILE
from pinlab_tasks.runs import RunLayout, check_output_file, utc_now

ReportKind = Literal[
    "bench recsys",
    "bench visual",
    "bench rerank",
    "bench ope",
    "bench bandits",
    "bench generative",
    "run",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# --- what the page reads: lenient views of the files, so older and newer runs both load ------


class _Loose(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Trial(_Loose):
    number: int = 0
    params: dict[str, Any] = Field(default_factory=dict)
    value: float | None = None
    state: str = "COMPLETE"
    curve: list[tuple[float, float]] = Field(default_factory=list)


class Search(_Loose):
    """One model's search on validation for one seed."""

    space: dict[str, dict[str, Any]] = Field(default_factory=dict)
    trials: list[Trial] = Field(default_factory=list)
    chosen: dict[str, Any] = Field(default_factory=dict)
    valid_value: float | None = None
    boundary: list[str] = Field(default_factory=list)
    budget_hit: bool = False
    note: str = ""

    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.state == "COMPLETE" and t.value is not None]
        return max(done, key=lambda t: t.value or 0.0) if done else None


class Row(_Loose):
    """One model (bench recsys) or recipe (bench visual): means and, over seeds, their spread."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    name: str = Field(validation_alias=AliasChoices("model", "recipe"))
    metrics: dict[str, float | None]
    std: dict[str, float | None] = Field(default_factory=dict)
    per_seed: dict[str, list[float]] = Field(default_factory=dict)
    ci95: dict[str, tuple[float, float]] = Field(default_factory=dict)
    baseline: bool = False
    fit_seconds: float | None = None
    peak_mb: float | None = Field(
        default=None, validation_alias=AliasChoices("fit_peak_mb", "peak_rss_mb")
    )
    train_images_per_s: float | None = None
    embed_images_per_s: float | None = None
    search: list[Search] = Field(default_factory=list)
    curves: list[list[tuple[float, float]]] = Field(default_factory=list)


class Pair(_Loose):
    """Model `a` (ahead) against model `b` on one metric, paired over seeds and users."""

    a: str
    b: str
    metric: str
    difference: float
    ci95: tuple[float, float] | None = Field(
        default=None, validation_alias=AliasChoices("difference_ci95", "ci95")
    )
    p_value: float
    p_holm: float | None = None
    significant: bool
    wins: int | None = None
    test: str = ""


class Published(_Loose):
    model: str
    metrics: dict[str, float | None]
    source: str
    note: str = ""


class RecsysBench(_Loose):
    """RUN/bench.json of `pinlab bench recsys`."""

    dataset: str
    dataset_fingerprint: str | None = None
    protocol: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    validation_metric: str = "ndcg@10"
    trials: int | None = None
    counts: list[dict[str, Any]] = Field(default_factory=list)
    results: list[Row]
    user_metrics: dict[str, dict[str, list[float]]] | str | None = None
    comparisons: list[Pair] = Field(default_factory=list)
    anchors: list[Published] = Field(default_factory=list)
    peers: list[dict[str, Any]] = Field(default_factory=list)
    seconds: float | None = None


class VisualBench(_Loose):
    """RUN/bench_visual.json of `pinlab bench visual`."""

    dataset: str
    protocol: dict[str, Any] = Field(default_factory=dict)
    seeds: list[int] = Field(default_factory=list)
    device: str | None = None
    threads: int | None = None
    results: list[Row]
    targets: dict[str, bool] = Field(default_factory=dict)
    embedding_maps: dict[str, str] = Field(default_factory=dict)
    seconds: float | None = None


class EvalTable(_Loose):
    """An eval.json of a run: metrics by model (recommenders, cold start) or encoder."""

    protocol: str = ""
    models: dict[str, dict[str, float | None]] = Field(default_factory=dict)
    trained: dict[str, float] | None = None
    untrained: dict[str, float] | None = None
    metrics: dict[str, float] | None = None
    num_users: int | None = None
    num_queries: int | None = None
    best: str | None = None


M = TypeVar("M", bound=BaseModel)


def _read(path: Path, model: type[M], what: str) -> M:
    raw = read_json_object(path, f"rerun {what}")
    if model is RecsysBench:
        raw = _upgrade_single_seed_bench(raw)
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "the document"
        raise PinlabDataError(
            f"{path} is not the output of {what} ({where}: {first['msg']})"
        ) from exc


def _upgrade_single_seed_bench(raw: dict[str, Any]) -> dict[str, Any]:
    """bench.json from before seeds: one `comparison`, `tuned` settings, counts as one dict."""
    if "seeds" in raw or not isinstance(raw.get("results"), list):
        return raw
    metric = "ndcg@10"
    old = raw.get("comparison")
    comparisons = []
    if isinstance(old, dict):
        metric = old.get("metric", metric)
        comparisons = [{**old, "a": old.get("best"), "b": old.get("runner_up")}]
    rows = []
    for row in raw["results"]:
        tuned = row.get("tuned") or {}
        search = {"chosen": tuned.get("settings", {}), "valid_value": tuned.get(f"valid_{metric}")}
        rows.append({**row, "search": [search] if tuned else []})
    counts = raw.get("counts")
    return raw | {
        "results": rows,
        "comparisons": comparisons,
        "validation_metric": metric,
        "counts": [counts] if isinstance(counts, dict) else counts or [],
    }


# --- metric names: what each column measures, stated exactly -----------------------------------

Domain = Literal["recsys", "retrieval"]

_HEADERS: dict[str, str] = {
    "ndcg@k": "nDCG@{k}",
    "hr@k": "HR@{k}",
    "recall@k": "Recall@{k}",
    "precision@k": "Precision@{k}",
    "mrr@k": "MRR@{k}",
    "map@k": "MAP@{k} (pinlab map@{k}: Σ precision@i at hits i ≤ {k}, ÷ min(|relevant|, {k}))",
    "map_all@k": "MAP@{k} (map_all@{k}: Σ precision@i at hits i ≤ {k}, ÷ |relevant|; "
    "Microsoft Recommenders' MAP)",
    "novelty@k": "Novelty@{k} (bits)",
    "coverage@k": "Coverage@{k}",
    "gini@k": "Gini@{k}",
    "map@r": "MAP@R (Musgrave et al. 2020)",
    "map": "MAP (full ranking)",
    "linear_probe": "Linear-probe accuracy",
    "taste_recovery": "Taste recovery",
    "zero_shot_accuracy": "Zero-shot accuracy",
}

_RECSYS_DEFINITIONS: dict[str, str] = {
    "ndcg@k": "binary relevance, DCG with a log2(rank + 1) discount over the top {k}, divided by "
    "the DCG of min({k}, |relevant|) hits at the top; mean over users.",
    "hr@k": "share of users with at least one relevant item in the top {k}.",
    "recall@k": "relevant items in the top {k} ÷ |relevant|; mean over users.",
    "precision@k": "relevant items in the top {k} ÷ {k}; mean over users.",
    "mrr@k": "1 / rank of the first relevant item in the top {k} (0 if none); mean over users.",
    "map@k": "per user, AP@{k} = Σ precision@i over the ranks i ≤ {k} that hold a relevant "
    "item, divided by min(|relevant|, {k}), so a perfect ranking scores 1; mean over users "
    "(Spark's meanAveragePrecisionAt, Microsoft Recommenders' map_at_k since PR #2004).",
    "map_all@k": "the same sum divided by |relevant|, all of the user's relevant items (the MAP "
    "column of Microsoft Recommenders' benchmark table, Spark's meanAveragePrecision over a "
    "top-{k} list); never above recall@{k}.",
    "novelty@k": "mean −log2 of each recommended item's share of training interactions, in bits.",
    "coverage@k": "share of the catalogue recommended to at least one user.",
    "gini@k": "inequality of exposure over the whole catalogue: 0 when every item is shown "
    "equally often, near 1 when one item takes every slot.",
    "taste_recovery": "mean cosine between each user's category histogram of recommendations "
    "and their true taste (synthetic worlds only).",
}

_RETRIEVAL_DEFINITIONS: dict[str, str] = {
    "recall@k": "share of queries with at least one image of their class in the top {k} "
    "(Oh Song et al. 2016), every image querying all the others.",
    "map@r": "R = the number of other images of the query's class; Σ precision@i over the "
    "ranks i ≤ R that hold one, divided by R; mean over queries.",
    "map": "mean average precision over the full ranking.",
    "linear_probe": "accuracy of a multinomial logistic regression on frozen embeddings, "
    "fitted on part of the test classes' images and scored on the rest.",
    "zero_shot_accuracy": "each image gets the category whose name, in 'a photo of {name}', "
    "embeds nearest; share correct.",
}


def _family(key: str) -> tuple[str, str]:
    """`ndcg@10` -> (`ndcg@k`, `10`); names without a cut-off (`map@r`, `map`) stay whole."""
    base, at, k = key.removeprefix("text_").partition("@")
    return (f"{base}@k", k) if at and k.isdigit() else (key.removeprefix("text_"), "")


def metric_header(key: str) -> str:
    """A column name that says what is measured; every MAP says which MAP it is."""
    family, k = _family(key)
    text = _HEADERS.get(family, key).replace("{k}", k)
    return f"text→image {text}" if key.startswith("text_") else text


def _th(key: str) -> str:
    """The header cell: the name, and its qualifier in brackets on a second, smaller line."""
    name, _, qualifier = metric_header(key).partition(" (")
    small = f'<br><span class="qual">({esc(qualifier)}</span>' if qualifier else ""
    return f'<th title="{esc(key)}">{esc(name)}{small}</th>'


def metric_definition(key: str, domain: Domain) -> str | None:
    family, k = _family(key)
    table = _RETRIEVAL_DEFINITIONS if domain == "retrieval" else _RECSYS_DEFINITIONS
    found = table.get(family)
    return None if found is None else found.replace("{k}", k)


# --- the page -----------------------------------------------------------------------------------

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1b1f24;
       margin: 0 auto; max-width: 1320px; padding: 0 24px 48px; }
h1 { font-size: 22px; margin: 24px 0 4px; } h2 { font-size: 18px; margin-top: 36px;
     border-bottom: 1px solid #d0d7de; padding-bottom: 4px; } h3 { font-size: 15px; }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e6ea; padding: 4px 8px; vertical-align: top; }
th { background: #f6f8fa; text-align: left; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.published td { background: #fbf7ee; } tr.baseline td { color: #57606a; }
.ci, .seeds, .qual { color: #57606a; font-size: 11px; font-weight: normal; }
.note { color: #57606a; } .wide { overflow-x: auto; }
mark { background: #ffe08a; padding: 0 2px; } .boundary td:first-child::after { content: " *"; }
figure { margin: 12px 0 20px; } .row { display: flex; flex-wrap: wrap; gap: 0 24px; }
.row figure { flex: 1 1 520px; max-width: 640px; } figure img { max-width: 100%; height: auto;
         border: 1px solid #e3e6ea; } figcaption { color: #57606a; font-size: 12px; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 14px; }
dl.meta dt { color: #57606a; } dl.meta dd { margin: 0; word-break: break-word; }
dl.defs dt { font-weight: 600; margin-top: 6px; } dl.defs dd { margin-left: 16px; }
nav ol { columns: 2; } code { font-size: 12px; background: #f6f8fa; padding: 1px 4px; }
details > summary { cursor: pointer; color: #0b5cad; margin: 6px 0; }
"""


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


@dataclass
class _Page:
    """Sections in order, each plot counted and given a unique id."""

    sections: list[tuple[str, str, str]] = field(default_factory=list)
    absent: list[tuple[str, str]] = field(default_factory=list)
    plots: int = 0
    _ids: set[str] = field(default_factory=set)

    def figure(self, png: bytes, name: str, alt: str, caption: str = "") -> str:
        plot_id = f"plot-{_slug(name)}"
        while plot_id in self._ids:
            plot_id += "-2"
        self._ids.add(plot_id)
        self.plots += 1
        data = base64.b64encode(png).decode("ascii")
        caption_html = f"<figcaption>{esc(caption)}</figcaption>" if caption else ""
        return (
            f'<figure><img id="{plot_id}" class="plot" alt="{esc(alt)}" '
            f'src="data:image/png;base64,{data}">{caption_html}</figure>'
        )

    def add(self, section_id: str, title: str, *parts: str) -> None:
        self.sections.append((section_id, title, "\n".join(p for p in parts if p)))

    def missing(self, title: str, why: str) -> None:
        self.absent.append((title, why))

    def render(self, title: str, header: str) -> str:
        contents = "".join(
            f'<li><a href="#{sid}">{esc(name)}</a></li>' for sid, name, _ in self.sections
        )
        absent = "".join(f"<li>{esc(name)}: {esc(why)}</li>" for name, why in self.absent)
        if absent:
            absent = f'<p class="note">Not in this run:</p><ul class="note">{absent}</ul>'
        body = "\n".join(
            f'<section id="{sid}"><h2>{esc(name)}</h2>\n{content}\n</section>'
            for sid, name, content in self.sections
        )
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>\n{header}</header>\n"
            f"<nav><ol>{contents}</ol>{absent}</nav>\n{body}\n"
            f'<footer class="note"><p>Written by <code>pinlab report</code> at {esc(utc_now())}.'
            " Every number comes from the files of the run directory named above.</p></footer>"
            "\n</body></html>\n"
        )


@dataclass(frozen=True)
class Report:
    """The rendered page and what it holds."""

    kind: ReportKind
    title: str
    html: str
    plots: int
    sections: list[str]


def detect_kind(root: Path) -> ReportKind:
    """Which command wrote this directory, from the files in it."""
    if not root.exists():
        raise PinlabDataError(f"{root} does not exist; pass a run or bench directory")
    if not root.is_dir():
        raise PinlabDataError(f"{root} is not a directory; pass a run or bench directory")
    if (root / "bench.json").is_file():
        return "bench recsys"
    if (root / "bench_visual.json").is_file():
        return "bench visual"
    if (root / RERANK_FILE).is_file():
        return "bench rerank"
    if (root / OPE_FILE).is_file():
        return "bench ope"
    if (root / BANDITS_FILE).is_file():
        return "bench bandits"
    if (root / GENERATIVE_FILE).is_file():
        return "bench generative"
    if RunLayout(root).record.is_file() and any((root / p).is_file() for p in RUN_RESULTS):
        return "run"
    raise PinlabDataError(
        f"{root} holds nothing to report: expected bench.json (`pinlab bench recsys --run DIR`),"
        " bench_visual.json (`pinlab bench visual --run DIR`), rerank.json (`pinlab bench "
        "rerank --run DIR`), ope.json (`pinlab bench ope`), bandits.json (`pinlab bench "
        "bandits`), or run.json with evaluation "
        "rerank --run DIR`), generative.json (`pinlab bench generative --run DIR`), or "
        "run.json with evaluation "
        "results (`pinlab demo --out DIR`)"
    )


RUN_RESULTS = (
    "visual/eval.json",
    "generator/eval.json",
    "visual/align/eval.json",
    "recommender/eval.json",
    "cold_start/eval.json",
)


def build_report(root: Path) -> Report:
    """Read a bench or run directory and lay out its page (nothing is written)."""
    root = root.resolve() if root.exists() else root
    kind = detect_kind(root)
    page = _Page()
    record = _json_or_empty(RunLayout(root).record)
    if kind == "bench recsys":
        bench = _read(root / "bench.json", RecsysBench, "`pinlab bench recsys`")
        if not bench.seeds:  # a bench from before --seeds: its one seed is in run.json
            bench = bench.model_copy(update={"seeds": _recorded_seed(record)})
        best_first = sorted(
            bench.results, key=lambda r: -(r.metrics.get(bench.validation_metric) or 0.0)
        )
        bench = bench.model_copy(update={"results": best_first})
        title = f"pinlab bench recsys: {bench.dataset}"
        header = _recsys_header(root, bench, record)
        _recsys_sections(root, bench, page)
    elif kind == "bench visual":
        visual = _read(root / "bench_visual.json", VisualBench, "`pinlab bench visual`")
        title = f"pinlab bench visual: {visual.dataset}"
        header = _visual_header(root, visual, record)
        _visual_sections(root, visual, page)
    elif kind == "bench rerank":
        result = _json_or_empty(root / RERANK_FILE)
        title = f"pinlab bench rerank: {result.get('data')}"
        header = _rerank_header(root, result, record)
        _rerank_sections(root, result, page)
    elif kind == "bench ope":
        result = _json_or_empty(root / OPE_FILE)
        title = "pinlab bench ope: off-policy estimates against the simulator's truth"
        header = _sim_header(root, result, record)
        _ope_sections(root, result, page)
    elif kind == "bench bandits":
        result = _json_or_empty(root / BANDITS_FILE)
        title = "pinlab bench bandits: policies in the simulator"
        header = _sim_header(root, result, record)
        _bandits_sections(root, result, page)
    elif kind == "bench generative":
        result = _json_or_empty(root / GENERATIVE_FILE)
        title = f"pinlab bench generative: {result.get('data')}"
        header = _run_header(root, record)
        _generative_bench_sections(root, result, page)
    else:
        title = f"pinlab run: {root.name}"
        header = _run_header(root, record)
        _run_sections(root, page)
    return Report(
        kind=kind,
        title=title,
        html=page.render(title, header),
        plots=page.plots,
        sections=[sid for sid, _, _ in page.sections],
    )


def _is_report(path: Path) -> bool:
    with path.open("rb") as f:
        return b"<title>pinlab " in f.read(1024)  # every page's title names pinlab first


def write_report(root: Path, out: Path | None = None) -> tuple[Path, Report]:
    """Build the page and write it atomically to `out` (default ROOT/report.html).

    A run without cards gets them first (`pinlab card`, RUN/cards), so the page shows them.
    """
    target = out if out is not None else root / "report.html"
    check_output_file(target, _is_report, "pinlab report")
    if detect_kind(root) == "run" and not _cards(root):
        write_cards(root)
    report = build_report(root)
    write_bytes_atomic(target, report.html.encode("utf-8"))
    return target, report


# --- header: what was run, on what, by whom -----------------------------------------------------


def _meta(items: Iterable[tuple[str, object]]) -> str:
    rows = "".join(
        f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items if v not in (None, "", [])
    )
    return f'<dl class="meta">{rows}</dl>'


def _provenance(root: Path, record: Mapping[str, Any]) -> list[tuple[str, object]]:
    argv = record.get("argv")
    steps = record.get("steps") or []
    return [
        ("run directory", str(root)),
        ("created", record.get("created")),
        ("command line", shlex.join(argv) if isinstance(argv, list) else argv),
        ("steps", "; ".join(f"{s.get('command')} ({s.get('at')})" for s in steps)),
        ("dataset directory", record.get("data_dir")),
        ("python", record.get("python")),
        ("platform", record.get("platform")),
    ]


def _protocol_text(protocol: Mapping[str, Any]) -> str:
    settings = ", ".join(f"{k}={v}" for k, v in protocol.items() if k != "name" and v is not None)
    return f"{protocol.get('name', '?')}({settings})"


def _recsys_header(root: Path, bench: RecsysBench, record: Mapping[str, Any]) -> str:
    seeds = bench.seeds
    items: list[tuple[str, object]] = [
        ("dataset", bench.dataset),
        ("fingerprint", bench.dataset_fingerprint),
        ("protocol", _protocol_text(bench.protocol)),
        ("seeds", f"{len(seeds)}: {', '.join(map(str, seeds))}" if seeds else "not recorded"),
        (
            "chosen on",
            f"validation {bench.validation_metric}"
            + (f", up to {bench.trials} trials per model and seed" if bench.trials else ""),
        ),
        ("bench seconds", bench.seconds),
        *_provenance(root, record),
    ]
    return _meta(items) + _counts_table(bench.counts)


def _recorded_seed(record: Mapping[str, Any]) -> list[int]:
    for step in record.get("steps") or []:
        seed = (step.get("config") or {}).get("seed")
        if isinstance(seed, int):
            return [seed]
    return []


def _counts_table(counts: Sequence[Mapping[str, Any]]) -> str:
    if not counts:
        return ""
    keys = list(dict.fromkeys(k for c in counts for k in c))
    head = "".join(f"<th>{esc(k.replace('_', ' '))}</th>" for k in keys)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="num">{esc(_short(c.get(k, "")))}</td>' for k in keys)
        + "</tr>"
        for c in counts
    )
    return f'<table class="counts"><tr>{head}</tr>{body}</table>'


def _visual_header(root: Path, bench: VisualBench, record: Mapping[str, Any]) -> str:
    protocol = bench.protocol
    classes = protocol.get("test_classes")
    seeds = bench.seeds or _recorded_seed(record)
    items: list[tuple[str, object]] = [
        ("dataset", bench.dataset),
        ("protocol", protocol.get("name")),
        ("train images", protocol.get("train_images")),
        ("test images", protocol.get("test_images")),
        ("test classes", ", ".join(map(str, classes)) if isinstance(classes, list) else None),
        ("seeds", ", ".join(map(str, seeds)) if seeds else "not recorded"),
        ("device", f"{bench.device}, {bench.threads} threads" if bench.device else None),
        ("bench seconds", bench.seconds),
        *_provenance(root, record),
    ]
    return _meta(items)


def _run_header(root: Path, record: Mapping[str, Any]) -> str:
    summary = _json_or_empty(root / "summary.json")
    data = summary.get("data") or {}
    demo = next(
        (s.get("config") or {} for s in record.get("steps") or [] if s.get("command") == "demo"),
        {},
    )
    items: list[tuple[str, object]] = [
        ("preset", summary.get("preset") or demo.get("preset")),
        ("seed", summary.get("seed", demo.get("seed"))),
        ("world", ", ".join(f"{k.removeprefix('num_')} {_short(v)}" for k, v in data.items())),
        ("seconds", summary.get("seconds")),
        ("peak memory MB", summary.get("peak_rss_mb")),
        *_provenance(root, record),
    ]
    return _meta(items)


def _json_or_empty(path: Path) -> dict[str, Any]:
    """An optional JSON object (run.json, summary.json): {} when absent, an error when torn."""
    return read_json_object(path) if path.is_file() else {}


# --- metric tables ------------------------------------------------------------------------------


def _short(value: object) -> str:
    """A compact rendering of a setting or count: 4 significant digits, nested dicts inline."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_short(v) for v in value) + "]"
    return str(value)


def _number(value: float) -> str:
    return f"{value:.4f}" if abs(value) < 100 else f"{value:,.1f}"


def _metric_cell(row: Row, key: str) -> str:
    mean = row.metrics.get(key)
    if mean is None:
        return '<td class="num">–</td>'
    runs = row.per_seed.get(key, [])
    std = row.std.get(key)
    lines = [
        f"<b>{_number(mean)}</b>"
        + (f" ± {_number(std)}" if len(runs) > 1 and std is not None else "")
    ]
    if key in row.ci95:
        lo, hi = row.ci95[key]
        lines.append(f'<span class="ci">95% CI [{_number(lo)}, {_number(hi)}]</span>')
    if len(runs) > 1:
        values = " · ".join(_number(v) for v in runs)
        lines.append(f'<span class="seeds">seeds: {values}</span>')
    return f'<td class="num">{"<br>".join(lines)}</td>'


Extra = tuple[str, Callable[[Row], float | None]]


def _metrics_table(
    rows: Sequence[Row],
    columns: Sequence[str],
    extras: Sequence[Extra] = (),
    published: Sequence[Published] = (),
) -> str:
    """Ours first (mean ± std over seeds, 95% CI, per-seed values), then published rows."""
    head = "<th>model</th>" + "".join(_th(c) for c in columns)
    head += "".join(f"<th>{esc(name)}</th>" for name, _ in extras)
    head += "<th>source</th>" if published else ""
    lines = [f"<tr>{head}</tr>"]
    for row in rows:
        cls = ' class="baseline"' if row.baseline else ""
        cells = "".join(_metric_cell(row, c) for c in columns)
        for _, get in extras:
            value = get(row)
            cells += f'<td class="num">{"–" if value is None else esc(_short(value))}</td>'
        source = "<td>pinlab, this run</td>" if published else ""
        name = esc(row.name) + (" <small>(baseline)</small>" if row.baseline else "")
        lines.append(f"<tr{cls}><td>{name}</td>{cells}{source}</tr>")
    for anchor in published:
        quoted = [anchor.metrics.get(c) for c in columns]
        cells = "".join(f'<td class="num">{"–" if v is None else _number(v)}</td>' for v in quoted)
        cells += '<td class="num">–</td>' * len(extras)
        note = f'<br><span class="note">{esc(anchor.note)}</span>' if anchor.note else ""
        lines.append(
            f'<tr class="published"><td>{esc(anchor.model)} <small>(published)</small></td>'
            f"{cells}<td>{esc(anchor.source)}{note}</td></tr>"
        )
    return f'<div class="wide"><table class="metrics">{"".join(lines)}</table></div>'


def _definitions(keys: Iterable[str], domain: Domain) -> str:
    items = [
        f"<dt>{esc(metric_header(k))} <code>{esc(k)}</code></dt><dd>{esc(d)}</dd>"
        for k in dict.fromkeys(keys)
        if (d := metric_definition(k, domain)) is not None
    ]
    if not items:
        return ""
    return (
        "<details><summary>What each column measures</summary>"
        f'<dl class="defs">{"".join(items)}</dl></details>'
    )


def _all_metrics(rows: Sequence[Row], shown: Sequence[str]) -> str:
    keys = [k for k in dict.fromkeys(k for r in rows for k in r.metrics) if k not in shown]
    if not keys:
        return ""
    head = "<th>model</th>" + "".join(_th(k) for k in keys)
    body = "".join(
        f"<tr><td>{esc(r.name)}</td>"
        + "".join(_metric_cell(r.model_copy(update={"ci95": {}}), k) for k in keys)
        + "</tr>"
        for r in rows
    )
    return (
        f"<details><summary>Every other metric ({len(keys)})</summary>"
        f'<div class="wide"><table class="metrics"><tr>{head}</tr>{body}</table></div></details>'
    )


RECSYS_COLUMNS = ("ndcg@10", "hr@10", "recall@10", "precision@10", "map@10", "map_all@10")
"""The headline columns; the rest (at 20, MRR, novelty, coverage, Gini) fold under the table."""


def _headline(rows: Sequence[Row], published: Sequence[Published], first: str) -> list[str]:
    """The validation metric first, then the usual columns ours or the published rows have."""
    present = {k for r in rows for k in r.metrics}
    quoted = {k for a in published for k, v in a.metrics.items() if v is not None}
    wanted = [first, *RECSYS_COLUMNS, *sorted(quoted)]
    return [k for k in dict.fromkeys(wanted) if k in present or k in quoted]


# --- bench recsys -------------------------------------------------------------------------------


def _recsys_sections(root: Path, bench: RecsysBench, page: _Page) -> None:
    rows = bench.results
    columns = _headline(rows, bench.anchors, bench.validation_metric)
    seeds = len(bench.seeds) or 1
    spread = (
        f"Mean ± standard deviation over {seeds} seeds (each seed a whole split and training run), "
        "the 95% bootstrap interval over every (seed, user) pair, and each seed's value."
        if seeds > 1
        else "One seed: no spread over seeds; the 95% interval is a bootstrap over users."
    )
    extras: list[Extra] = [
        ("fit s", lambda r: r.fit_seconds),
        ("fit peak MB", lambda r: r.peak_mb),
    ]
    anchors_note = (
        '<p class="note">Published rows (shaded) are quoted from their source, not rerun here; '
        "each states its source and how its setting differs.</p>"
        if bench.anchors
        else ""
    )
    page.add(
        "metrics",
        "Metrics",
        f'<p class="note">{esc(spread)} Rows in order of mean {esc(bench.validation_metric)}.</p>',
        _metrics_table(rows, columns, extras, bench.anchors),
        anchors_note,
        _peers(bench.peers),
        _definitions([*columns, *(k for r in rows for k in r.metrics)], "recsys"),
        _all_metrics(rows, columns),
    )
    if not bench.anchors:
        page.missing("published numbers", f"none recorded for {bench.dataset} on this protocol")
    _search_section(bench, page)
    _recsys_curves(root, bench, page)
    _users_section(root, bench, page)
    _significance_section(bench, page)
    _embedding_section(root, page, [])
    _cold_start_section(root, page)


def _peers(peers: Sequence[Mapping[str, Any]]) -> str:
    if not peers:
        return ""
    items = "".join(
        f"<li>{esc(p.get('peer'))}: {esc(_short(p.get('metrics')))}, fit "
        f"{esc(_short(p.get('fit_seconds')))} s; ours ÷ peer {esc(_short(p.get('ours_over_peer')))}"
        f" (settings {esc(_short(p.get('settings')))})</li>"
        for p in peers
    )
    return f"<h3>Peer libraries on the same split</h3><ul>{items}</ul>"


def _space_text(space: Mapping[str, Mapping[str, Any]]) -> str:
    parts = []
    for name, p in space.items():
        kind = p.get("kind")
        if kind in ("float", "int"):
            scale = ", log" if p.get("log") else ""
            parts.append(f"{name} ∈ [{_short(p.get('low'))}, {_short(p.get('high'))}{scale}]")
        elif kind == "choice":
            parts.append(f"{name} ∈ {{{', '.join(_short(v) for v in p.get('values', []))}}}")
        else:
            parts.append(f"{name}: {kind}")
    return "; ".join(parts)


def _settings_html(chosen: Mapping[str, Any], boundary: Sequence[str]) -> str:
    parts = []
    for name, value in chosen.items():
        text = esc(f"{name}={_short(value)}")
        parts.append(
            f'<mark title="on the edge of its search range">{text}</mark>'
            if name in boundary
            else text
        )
    return ", ".join(parts) or '<span class="note">defaults (nothing to search)</span>'


def _seed(seeds: Sequence[int], i: int) -> str:
    """The i-th run's seed, or its position when the bench did not record seeds."""
    return str(seeds[i]) if i < len(seeds) else f"#{i + 1}"


def _search_section(bench: RecsysBench, page: _Page) -> None:
    if not any(r.search for r in bench.results):
        page.missing("search summary", "bench.json records no search")
        return
    head = (
        "<tr><th>model</th><th>seed</th><th>trials (complete / pruned)</th>"
        f"<th>validation {esc(bench.validation_metric)}</th><th>chosen settings</th>"
        "<th>search space</th></tr>"
    )
    lines = [head]
    edges = 0
    for row in bench.results:
        for i, search in enumerate(row.search):
            seed = _seed(bench.seeds, i)
            complete = sum(t.state == "COMPLETE" for t in search.trials)
            pruned = sum(t.state == "PRUNED" for t in search.trials)
            trials = f"{complete} / {pruned}" if search.trials else "–"
            trials += " (budget hit)" if search.budget_hit else ""
            valid = "–" if search.valid_value is None else _number(search.valid_value)
            edges += bool(search.boundary)
            cls = ' class="boundary"' if search.boundary else ""
            lines.append(
                f"<tr{cls}><td>{esc(row.name)}</td><td class='num'>{esc(seed)}</td>"
                f"<td class='num'>{esc(trials)}</td><td class='num'>{valid}</td>"
                f"<td>{_settings_html(search.chosen, search.boundary)}</td>"
                f"<td>{esc(_space_text(search.space)) or esc(search.note)}</td></tr>"
            )
    note = (
        f'<p class="note"><mark>Highlighted</mark> settings ({edges} search(es), rows marked *) '
        "were chosen on the edge of their search range: the best value may lie outside it, so "
        "widen the range before trusting the model's rank.</p>"
        if edges
        else '<p class="note">No chosen setting lies on the edge of its search range.</p>'
    )
    page.add(
        "search",
        "Search on validation",
        '<p class="note">Settings are chosen on the validation split only; the test split '
        "is read once, by the chosen model (refitted, or given the test's histories).</p>",
        f'<table class="search">{"".join(lines)}</table>',
        note,
    )


def _recsys_curves(root: Path, bench: RecsysBench, page: _Page) -> None:
    epochs: dict[str, list[Curve]] = {}
    history: dict[str, list[Curve]] = {}
    for row in bench.results:
        by_epoch: list[Curve] = []
        by_trial: list[Curve] = []
        for i, search in enumerate(row.search):
            seed = _seed(bench.seeds, i)
            best = search.best()
            for trial in search.trials:
                if len(trial.curve) > 1 and trial is not best:
                    by_epoch.append(Curve(points=list(trial.curve)))
                if trial.value is not None:
                    by_trial.append(Curve(points=[(trial.number + 1, trial.value)]))
            if best is not None and len(best.curve) > 1:
                label = f"seed {seed}: chosen (trial {best.number + 1})"
                by_epoch.append(Curve(points=list(best.curve), label=label))
            running = _running_best(search.trials)
            if len(running) > 1:
                by_trial.append(Curve(points=running, label=f"seed {seed}: best so far"))
        for i, curve in enumerate(row.curves):
            if len(curve) > 1:
                label = f"seed {_seed(bench.seeds, i)}: refit"
                by_epoch.append(Curve(points=list(curve), label=label))
        if by_epoch:
            epochs[row.name] = by_epoch
        if any(len(search.trials) > 1 for search in row.search):
            history[row.name] = by_trial
    metric = bench.validation_metric
    parts = []
    if epochs:
        png = curves_png(epochs, "epoch", f"validation {metric}")
        parts.append(
            page.figure(
                png,
                "validation-curves",
                f"Validation {metric} per epoch for every trial of "
                f"{', '.join(epochs)}; the chosen trial of each seed in colour",
                "Validation per epoch: every trial of the search in grey, the chosen one per "
                "seed in colour. Pruned trials stop early.",
            )
        )
    if history:
        png = curves_png(history, "trial", f"validation {metric}")
        parts.append(
            page.figure(
                png,
                "search-history",
                f"Validation {metric} of each search trial in order, with the best so far, "
                f"for {', '.join(history)}",
                "Search history: each completed trial's validation value (grey dots) and the "
                "best so far per seed.",
            )
        )
    parts += _log_figures(root, page, validation=not epochs)
    if parts:
        page.add("curves", "Training and validation curves", *parts)
    else:
        page.missing("curves", "no trial curves in bench.json and no metrics.jsonl logs")


def _running_best(trials: Sequence[Trial]) -> list[tuple[float, float]]:
    points: list[tuple[float, float]] = []
    best = -np.inf
    for trial in trials:
        if trial.value is not None and trial.state == "COMPLETE":
            best = max(best, trial.value)
            points.append((trial.number + 1, best))
    return points


# --- training logs (metrics.jsonl), shared by every kind ---------------------------------------

_RUN_PARTS = re.compile(r"^(seed-\d+|trial-\d+|validation|valid)$")


@dataclass(frozen=True)
class _Log:
    panel: str
    label: str | None  # None: a validation trial, drawn faint
    train_loss: list[tuple[float, float]]
    valid: list[tuple[float, float]]


def _read_logs(root: Path) -> list[_Log]:
    """Every metrics.jsonl in the run: one panel per model (seed and trial folders folded in).

    Logs under a validation or trial folder are the search's probes, drawn faint; the others
    are the fits that were kept, labelled by their seed folder.
    """
    logs = []
    for path in sorted(root.rglob("metrics.jsonl")):
        parts = path.parent.relative_to(root).parts
        if parts[:1] == ("data",):
            continue
        kept = [p for p in parts if not _RUN_PARTS.match(p)]
        probe = any(p in ("validation", "valid") or p.startswith("trial-") for p in parts)
        seed = next((p for p in parts if p.startswith("seed-")), None)
        train, valid = [], []
        fix = "delete that line, or rerun the step that wrote the log"
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            at = _line_of(path, exc.start)
            raise PinlabDataError(f"{path}:{at} is not UTF-8 text ({exc.reason}); {fix}") from exc
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PinlabDataError(f"{path}:{number} is not JSON ({exc}); {fix}") from exc
            if not isinstance(record, dict):
                raise PinlabDataError(
                    f"{path}:{number} holds a JSON {type(record).__name__}, not an object; {fix}"
                )
            epoch = record.get("epoch")
            if not isinstance(epoch, int | float):
                continue
            if isinstance(record.get("train_loss"), int | float):
                train.append((float(epoch), float(record["train_loss"])))
            if isinstance(record.get("valid"), int | float):
                valid.append((float(epoch), float(record["valid"])))
        label = None if probe else (seed.replace("-", " ") if seed else "fit")
        logs.append(_Log("/".join(kept) or ".", label, train, valid))
    return logs


def _line_of(path: Path, offset: int) -> int:
    """The 1-based line of a file that holds byte `offset`."""
    with path.open("rb") as file:
        return file.read(offset).count(b"\n") + 1


def _log_figures(root: Path, page: _Page, validation: bool) -> list[str]:
    """Training loss (and, when asked, validation) per epoch from the run's logs.

    A panel whose logs all hold a single epoch (a closed-form or one-pass fit) has no curve
    and is left out.
    """
    logs = _read_logs(root)
    parts = []
    for attribute, ylabel, name in (
        ("train_loss", "training loss", "training-loss"),
        ("valid", "validation metric", "validation-logs"),
    ):
        if attribute == "valid" and not validation:
            continue
        panels: dict[str, list[Curve]] = {}
        for log in logs:
            points: list[tuple[float, float]] = getattr(log, attribute)
            if points:
                panels.setdefault(log.panel, []).append(Curve(points=points, label=log.label))
        curved = {k: v for k, v in panels.items() if any(len(c.points) > 1 for c in v)}
        flat = sorted(set(panels) - set(curved))
        if not curved:
            continue
        caption = f"{ylabel.capitalize()} per epoch from each metrics.jsonl."
        if any(c.label is None for curves in curved.values() for c in curves):
            caption += " Grey: the search's probes on validation."
        if flat:
            caption += f" One-pass fits without a curve: {', '.join(flat)}."
        alt = f"{ylabel.capitalize()} per epoch for {', '.join(curved)}"
        png = curves_png(curved, "epoch", ylabel)
        parts.append(page.figure(png, name, alt, caption))
    return parts


# --- per-user distributions, significance -------------------------------------------------------

USER_METRICS_SHOWN = 3


def _user_values(root: Path, bench: RecsysBench) -> dict[str, dict[str, np.ndarray]]:
    """model -> metric -> every (seed, user) value, from bench.json or RUN/user_metrics.npz."""
    if isinstance(bench.user_metrics, dict):
        return {
            model: {m: np.asarray(v, dtype=np.float64) for m, v in metrics.items()}
            for model, metrics in bench.user_metrics.items()
        }
    name = bench.user_metrics if isinstance(bench.user_metrics, str) else "user_metrics.npz"
    path = root / name
    if not path.is_file():
        return {}
    values: dict[str, dict[str, np.ndarray]] = {}
    with open_npz(path, "rerun the bench") as arrays:
        wanted = set(_distribution_metrics(bench, {k.rpartition("/")[2] for k in arrays}))
        for key in arrays.files:
            model, _, metric = key.rpartition("/")
            if model and metric in wanted:
                values.setdefault(model, {})[metric] = np.asarray(arrays[key], np.float64)
    return values


def _distribution_metrics(bench: RecsysBench, available: Iterable[str]) -> list[str]:
    have = set(available)
    wanted = [bench.validation_metric, "recall@10", "map@10", "ndcg@10", "recall@20"]
    return [m for m in dict.fromkeys(wanted) if m in have][:USER_METRICS_SHOWN]


def _users_section(root: Path, bench: RecsysBench, page: _Page) -> None:
    values = _user_values(root, bench)
    order = [r.name for r in bench.results if r.name in values]
    metrics = _distribution_metrics(bench, {m for v in values.values() for m in v})
    if not order or not metrics:
        page.missing(
            "per-user distributions", "no user_metrics in bench.json and no user_metrics.npz"
        )
        return
    panels = {
        m: {model: values[model][m] for model in order if m in values[model]} for m in metrics
    }
    png = distributions_png(panels)
    figure = page.figure(
        png,
        "per-user-distributions",
        f"Box plots of per-user {', '.join(metrics)} for {', '.join(order)}",
        "Each box: quartiles over every (seed, user) pair, whiskers at 1.5 IQR, red diamond the "
        "mean. A mean far above the median says a few users carry it.",
    )
    page.add("users", "Per-user metric distributions", figure)


def _significance_section(bench: RecsysBench, page: _Page) -> None:
    if not bench.comparisons:
        page.missing("significance matrix", "bench.json has no comparisons (one model?)")
        return
    order = [r.name for r in bench.results]
    parts = []
    for metric in dict.fromkeys(c.metric for c in bench.comparisons):
        pairs = [c for c in bench.comparisons if c.metric == metric]
        names = [n for n in order if any(n in (c.a, c.b) for c in pairs)]
        names += sorted({n for c in pairs for n in (c.a, c.b)} - set(names))
        index = {n: i for i, n in enumerate(names)}
        n = len(names)
        difference = np.full((n, n), np.nan)
        p_value = np.full((n, n), np.nan)
        significant = np.zeros((n, n), dtype=bool)
        for c in pairs:
            i, j = index[c.a], index[c.b]
            p = c.p_holm if c.p_holm is not None else c.p_value
            difference[i, j], difference[j, i] = c.difference, -c.difference
            p_value[i, j] = p_value[j, i] = p
            significant[i, j] = significant[j, i] = c.significant
        adjusted = "Holm-adjusted " if any(c.p_holm is not None for c in pairs) else ""
        png = difference_matrix_png(names, difference, p_value, significant, metric)
        parts.append(
            page.figure(
                png,
                f"significance-{metric}",
                f"Matrix of paired {metric} differences between {', '.join(names)}, "
                f"with {adjusted}p-values",
                f"Cell (row a, column b): mean {metric} of a minus b over the same (seed, user) "
                f"pairs, with its {adjusted}p-value; * and bold: significant. "
                f"{pairs[0].test}",
            )
        )
    parts.append(_pairs_table(bench.comparisons, len(bench.seeds)))
    page.add("significance", "Significance matrix", *parts)


def _pairs_table(pairs: Sequence[Pair], seeds: int) -> str:
    head = (
        "<tr><th>a</th><th>b</th><th>metric</th><th>a − b</th><th>95% CI</th><th>p</th>"
        "<th>Holm p</th><th>a ahead on seeds</th><th>significant</th></tr>"
    )
    body = "".join(
        f"<tr><td>{esc(c.a)}</td><td>{esc(c.b)}</td><td>{esc(c.metric)}</td>"
        f'<td class="num">{c.difference:+.4f}</td>'
        f'<td class="num">{"–" if c.ci95 is None else f"[{c.ci95[0]:+.4f}, {c.ci95[1]:+.4f}]"}</td>'
        f'<td class="num">{c.p_value:.3g}</td>'
        f'<td class="num">{"–" if c.p_holm is None else f"{c.p_holm:.3g}"}</td>'
        f'<td class="num">{"–" if c.wins is None else f"{c.wins} of {seeds}"}</td>'
        f"<td>{'yes' if c.significant else 'no'}</td></tr>"
        for c in pairs
    )
    return (
        f"<details><summary>Every pair ({len(pairs)})</summary>"
        f'<table class="pairs">{head}{body}</table></details>'
    )


# --- embedding maps and cold start, shared ------------------------------------------------------


def _embedding_section(root: Path, page: _Page, named: Sequence[Path]) -> None:
    found = [
        *named,
        *sorted(root.glob("embedding_map*.png")),
        *sorted(root.glob("*/embedding_map*.png")),
    ]
    paths = [p for p in dict.fromkeys(found) if p.is_file()]
    parts = []
    for path in paths:
        png = path.read_bytes()
        if not png.startswith(PNG_MAGIC):
            raise PinlabDataError(f"{path} is not a PNG; remove it or rerun the step that drew it")
        where = path.relative_to(root) if path.is_relative_to(root) else path
        title = path.stem.removeprefix("embedding_map").strip("_") or "encoder"
        parts.append(
            page.figure(
                png,
                f"embedding-map-{title}",
                f"Embedding map ({title}): 2-D PCA of test-image embeddings coloured by class",
                f"{where}: the first two principal components of the embeddings, one colour "
                "per class.",
            )
        )
    if parts:
        page.add("embeddings", "Embedding maps", f'<div class="row">{"".join(parts)}</div>')
    else:
        page.missing("embedding maps", "no embedding_map*.png in the run")


def _cold_start_section(root: Path, page: _Page) -> None:
    path = root / "cold_start" / "eval.json"
    if not path.is_file():
        page.missing("cold start", "no cold_start/eval.json (`pinlab eval cold-start --run`)")
        return
    result = _read(path, EvalTable, "`pinlab eval cold-start`")
    raw = _json_or_empty(path)
    rows = [Row(name=name, metrics=metrics) for name, metrics in result.models.items()]
    present = {k for r in rows for k in r.metrics}
    columns = [k for k in ("hr@10", "hr@20", "ndcg@10", "recall@10", "map@10") if k in present]
    facts = _meta(
        [
            ("protocol", result.protocol),
            ("features", f"{raw.get('features')} ({raw.get('feature_dim')} dimensions)"),
            ("cold items", raw.get("cold_items")),
            ("hybrid epochs", raw.get("hybrid_epochs")),
            ("hybrid hr@10 ÷ random", _short(raw.get("hr@10_vs_random"))),
            ("hybrid hr@10 ÷ popularity", _short(raw.get("hr@10_vs_popularity"))),
        ]
    )
    page.add(
        "cold-start",
        "Cold start",
        '<p class="note">Pins nobody engaged with in training, ranked among the cold pins '
        "only; the hybrid sees them through their features. Random is the exact expectation "
        "of a uniformly random ranking.</p>",
        facts,
        _metrics_table(rows, columns),
        _definitions(columns, "recsys"),
    )


# --- bench visual -------------------------------------------------------------------------------


def _visual_sections(root: Path, bench: VisualBench, page: _Page) -> None:
    rows = bench.results
    columns = list(dict.fromkeys(k for r in rows for k in r.metrics))
    seeds = max((len(v) for r in rows for v in r.per_seed.values()), default=1)
    extras: list[Extra] = [
        ("train images/s", lambda r: r.train_images_per_s),
        ("embed images/s", lambda r: r.embed_images_per_s),
        ("peak MB", lambda r: r.peak_mb),
    ]
    targets = "".join(
        f"<li>{esc(name)}: <b>{'met' if ok else 'NOT met'}</b></li>"
        for name, ok in bench.targets.items()
    )
    spread = (
        f"Mean ± standard deviation over {seeds} seeds, then each seed's value."
        if seeds > 1
        else "One seed: no spread over seeds."
    )
    page.add(
        "metrics",
        "Metrics",
        f'<p class="note">Retrieval among test images of classes never trained on. {spread} '
        "Baselines (raw pixels, the untrained encoder) in grey.</p>",
        _metrics_table(rows, columns, extras),
        f"<ul>{targets}</ul>" if targets else "",
        _definitions(columns, "retrieval"),
    )
    curves = _log_figures(root, page, validation=True)
    if curves:
        page.add("curves", "Training and validation curves", *curves)
    else:
        page.missing("curves", "no metrics.jsonl logs under the run")
    named = [_inside(root, p) for p in bench.embedding_maps.values()]
    _embedding_section(root, page, named)


def _rerank_header(root: Path, result: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    items: list[tuple[str, object]] = [
        ("data", result.get("data")),
        ("model", result.get("model")),
        ("candidates", result.get("candidates")),
        ("k", result.get("k")),
        ("item groups by", result.get("by")),
        ("protected group", result.get("protected")),
        ("seeds", ", ".join(map(str, result.get("seeds") or []))),
        ("settings chosen on", result.get("chosen_on")),
        ("item vectors", result.get("item_vectors")),
        ("DPP kernel", result.get("dpp_kernel")),
        ("bench seconds", result.get("seconds")),
        *_provenance(root, record),
    ]
    return _meta(items)


def _spread(value: Mapping[str, Any] | None, scale: float = 1.0, unit: str = "") -> str:
    if not value or value.get("mean") is None:
        return "n/a"
    return f"{value['mean'] * scale:+.1f}{unit} ± {(value.get('std') or 0.0) * scale:.1f}{unit}"


def _rerank_sections(root: Path, result: Mapping[str, Any], page: _Page) -> None:
    chosen = result.get("chosen") or {}
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in (
            "re-ranker", "chosen per seed", "on the grid's edge", "goal", "NDCG@10 budget",
            "relative NDCG@10 change", "relative goal change",
        )
    )  # fmt: skip
    body = "".join(
        "<tr>"
        f"<td>{esc(method)}</td>"
        f"<td>{esc(', '.join(map(str, c['tradeoff_per_seed'])))}</td>"
        f"<td>{'yes' if c['on_edge'] else 'no'}</td>"
        f"<td>{esc(c['goal'])}</td>"
        f"<td>{c['ndcg_budget'] * 100:.0f}%</td>"
        f"<td>{esc(_spread(c['relative_ndcg_loss'], -100, '%'))}</td>"
        f"<td>{esc(_spread(c.get('relative_' + c['goal'] + '_change'), 100, '%'))}</td>"
        "</tr>"
        for method, c in chosen.items()
    )
    page.add(
        "chosen",
        "Settings chosen on validation",
        '<p class="note">Per seed, the trade-off with the most gain for the goal inside the '
        "NDCG@10 budget on the validation split; changes are on the test split against the "
        "same seed's unre-ranked list, mean ± standard deviation over seeds.</p>",
        f'<div class="wide"><table class="metrics"><tr>{head}</tr>{body}</table></div>',
    )
    plot = root / "frontier.png"
    if plot.is_file():
        page.add(
            "frontier",
            "Utility-diversity frontier",
            page.figure(
                plot.read_bytes(),
                "frontier",
                "NDCG@10 against each beyond-accuracy metric, one curve per re-ranker",
                "Test split, means over seeds; each point is one trade-off.",
            ),
        )
    else:
        page.missing("frontier", "no frontier.png in the directory")


def _sim_header(root: Path, result: Mapping[str, Any], record: Mapping[str, Any]) -> str:
    world = result.get("world") or {}
    sim = result.get("sim") or {}
    return _meta(
        [
            ("world", world.get("data")),
            ("users x items", f"{world.get('users')} x {world.get('items')}"),
            ("true preference", world.get("truth")),
            ("what policies see", f"{world.get('recommender')}'s {world.get('dim')} factors"),
            ("click model", sim.get("click_model")),
            ("slate size", sim.get("slate_size")),
            ("fatigue, recovery, drift",
             f"{sim.get('fatigue')}, {sim.get('recovery')}, {sim.get('drift')}"),
            ("rounds", result.get("rounds")),
            ("seeds", ", ".join(map(str, result.get("seeds") or []))),
            ("bench seconds", result.get("seconds")),
            *_provenance(root, record),
        ]
    )  # fmt: skip


def _pct(value: object, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value * 100:+.1f}%" if signed else f"{value * 100:.1f}%"


def _ope_sections(root: Path, result: Mapping[str, Any], page: _Page) -> None:
    targets = result.get("targets") or {}
    page.add(
        "target",
        "The issue's target",
        f"<p>DR from {esc(result.get('rounds'))} epsilon-greedy rounds, mean relative error "
        f"{esc(_pct(targets.get('dr_mean_relative_error')))} (target under 10%: "
        f"{'met' if targets.get('dr_within_10pct') else 'not met'}); its "
        f"{esc(_pct(1 - (result.get('alpha') or 0.05)))} interval covered the truth in "
        f"{esc(_pct(targets.get('dr_coverage')))} of seeds (Wilson 95% interval of that share: "
        f"{esc(targets.get('dr_coverage_ci95'))}).</p>",
        f'<p class="note">Truth: {esc(result.get("truth"))}. Reward model: '
        f"{esc(result.get('reward_model'))}.</p>",
    )
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ("estimator", "mean", "relative bias", "mean |relative error|",
                  "relative RMSE", "coverage", "relative width", "unsupported")
    )  # fmt: skip
    for pair in result.get("pairs") or []:
        body = "".join(_ope_row(name, s) for name, s in (pair.get("estimators") or {}).items())
        page.add(
            _slug(pair.get("pair", "pair")),
            str(pair.get("pair")),
            f"<p>{esc(pair.get('why'))}; truth {pair.get('truth_per_impression', 0):.4f} "
            "clicks per impression.</p>",
            f'<div class="wide"><table class="metrics"><tr>{head}</tr>{body}</table></div>',
        )
    plot = root / OPE_PLOT
    if plot.is_file():
        page.add(
            "errors",
            "Errors per seed",
            page.figure(
                plot.read_bytes(),
                "ope errors",
                "relative error of every estimator per seed, one panel per pair",
                "One dot per seed, the mean as a red diamond; the band is +-10%.",
            ),
        )
    else:
        page.missing("errors", f"no {OPE_PLOT} in the directory")
    peers = result.get("peers") or {}
    if peers:
        items = []
        for name, peer in peers.items():
            if not peer.get("available"):
                items.append(f"<li>{esc(name)}: skipped ({esc(peer.get('reason'))})</li>")
            elif name == "obp_agreement":
                items.append(
                    f"<li>obp {esc(peer.get('obp'))} on identical inputs ({esc(peer.get('pair'))}):"
                    f" largest difference {esc(peer.get('max_abs_diff'))}</li>"
                )
            else:
                rows = {e["name"]: e for e in peer.get("estimates") or []}
                dr = rows.get("dr") or {}
                items.append(
                    f"<li>Open Bandit Dataset ({esc(peer.get('campaign'))}): BTS's logged click "
                    f"rate {esc(peer.get('on_policy', {}).get('value'))}; DR from the random "
                    f"policy's logs {esc(dr.get('value'))} (relative error "
                    f"{esc(_pct(dr.get('relative_error')))})</li>"
                )
        page.add("peers", "Peers", f"<ul>{''.join(items)}</ul>")


def _ope_row(name: str, s: Mapping[str, Any]) -> str:
    mean, coverage = s.get("mean"), s.get("coverage")
    unsupported = f"{s.get('unsupported')}/{s.get('runs')}" if s.get("unsupported") else ""
    cells = (
        name,
        "-" if mean is None else f"{mean:.4f}",
        _pct(s.get("relative_bias"), signed=True),
        _pct(s.get("mean_relative_error")),
        _pct(s.get("relative_rmse")),
        "-" if coverage is None else f"{coverage:.2f}",
        _pct(s.get("mean_relative_width")),
        unsupported,
    )
    return "<tr>" + "".join(f"<td>{esc(c)}</td>" for c in cells) + "</tr>"


def _bandits_sections(root: Path, result: Mapping[str, Any], page: _Page) -> None:
    head = "".join(
        f"<th>{esc(h)}</th>"
        for h in ("policy", "cumulative regret", "regret per round", "expected clicks per round",
                  "seconds")
    )  # fmt: skip
    ordered = sorted((result.get("policies") or {}).items(), key=lambda kv: kv[1]["regret"]["mean"])
    body = "".join(
        "<tr>"
        f"<td>{esc(name)}</td>"
        f"<td>{p['regret']['mean']:,.0f} ± {p['regret']['std']:,.0f}</td>"
        f"<td>{p['regret_per_round']['mean']:.4f}</td>"
        f"<td>{p['reward_per_round']['mean']:.4f}</td>"
        f"<td>{p['seconds']['mean']:.1f}</td>"
        "</tr>"
        for name, p in ordered
    )
    targets = "".join(
        f"<li>{esc(name)}: {'met' if ok else 'not met'}</li>"
        for name, ok in (result.get("targets") or {}).items()
    )
    page.add(
        "policies",
        "Policies, best first",
        f'<p class="note">{esc(result.get("regret"))}; mean ± standard deviation over seeds.</p>',
        f'<div class="wide"><table class="metrics"><tr>{head}</tr>{body}</table></div>',
        f"<ul>{targets}</ul>",
    )
    plot = root / BANDITS_PLOT
    if plot.is_file():
        page.add(
            "curves",
            "Regret and reward curves",
            page.figure(
                plot.read_bytes(),
                "bandits",
                "cumulative regret and running expected clicks per round of every policy",
                "Means over seeds.",
            ),
        )
    else:
        page.missing("curves", f"no {BANDITS_PLOT} in the directory")
    rf = result.get("reinforce") or {}
    speed = result.get("simulator_speed") or {}
    page.add(
        "reinforce",
        "REINFORCE against its logger",
        f"<p>Trained on {esc(rf.get('train_rounds'))} rounds logged by {esc(rf.get('logger'))} "
        f"({esc(rf.get('logger_settings'))}): {esc(rf.get('reinforce_reward_per_round'))} "
        f"expected clicks per round against the logger's {esc(rf.get('logger_reward_per_round'))}"
        f" ({esc(_pct(rf.get('relative_improvement'), signed=True))}).</p>",
        f"<p>Simulator: {esc(speed.get('impressions'))} impressions in "
        f"{esc(speed.get('seconds'))} s.</p>",
    )


def _inside(root: Path, recorded: str) -> Path:
    """A path the run recorded, or the same file name in the run (a moved run directory)."""
    path = Path(recorded)
    return path if path.is_file() else root / path.name


# --- a run directory (pinlab demo, train, eval) -------------------------------------------------


def _run_sections(root: Path, page: _Page) -> None:
    parts = []
    run = RunLayout(root)
    visual_path = run.visual / "eval.json"
    if visual_path.is_file():
        visual = _read(visual_path, EvalTable, "`pinlab eval visual`")
        rows = [
            Row(name=f"encoder ({name})", metrics=dict(metrics), baseline=name == "untrained")
            for name, metrics in (("trained", visual.trained), ("untrained", visual.untrained))
            if metrics
        ]
        columns = list(dict.fromkeys(k for r in rows for k in r.metrics))
        parts += [
            f"<h3>Visual search, {esc(visual.protocol)} "
            f"({esc(_short(visual.num_queries))} queries)</h3>",
            _metrics_table(rows, columns),
            _definitions(columns, "retrieval"),
        ]
    align_path = run.visual / "align" / "eval.json"
    if align_path.is_file():
        align = _read(align_path, EvalTable, "`pinlab eval align`")
        rows = [Row(name="aligned encoder", metrics=dict(align.metrics or {}))]
        columns = list(rows[0].metrics)
        parts += [
            f"<h3>Text to image, {esc(align.protocol)}</h3>",
            _metrics_table(rows, columns),
            _definitions(columns, "retrieval"),
        ]
    rec_path = run.recommenders / "eval.json"
    if rec_path.is_file():
        rec = _read(rec_path, EvalTable, "`pinlab eval recommender`")
        rows = [Row(name=name, metrics=metrics) for name, metrics in rec.models.items()]
        columns = [k for k in RECSYS_COLUMNS if any(k in r.metrics for r in rows)]
        best = f"; best by ndcg@10: {rec.best}" if rec.best else ""
        parts += [
            f"<h3>Recommenders, {esc(rec.protocol)} ({esc(_short(rec.num_users))} users"
            f"{esc(best)})</h3>",
            _metrics_table(rows, columns),
            _definitions([*columns, *(k for r in rows for k in r.metrics)], "recsys"),
            _all_metrics(rows, columns),
        ]
    if parts:
        page.add(
            "metrics",
            "Metrics",
            '<p class="note">One training run at one seed: no spread or interval. For means '
            "over seeds with intervals, run <code>pinlab bench recsys --seeds N</code>.</p>",
            *parts,
        )
    curves = _log_figures(root, page, validation=True)
    if curves:
        page.add("curves", "Training and validation curves", *curves)
    else:
        page.missing("curves", "no metrics.jsonl logs under the run")
    page.missing(
        "per-user distributions", "a run keeps means only; `pinlab bench recsys` keeps users"
    )
    _embedding_section(root, page, [])
    _cold_start_section(root, page)
    _generator_section(root / "generator", page)
    _cards_section(root, page)


GENERATOR_SETS = ("generated", "baseline", "real")
GENERATIVE_FILE = "generative.json"


def _generative_bench_sections(root: Path, result: Mapping[str, Any], page: _Page) -> None:
    """The targets, every figure's mean and std over seeds, then each seed's evaluation."""
    targets = {
        key: {"wanted": t["target"], "mean": t["mean"], "met": "yes" if t["met"] else "no"}
        for key, t in result.get("targets", {}).items()
    }
    spread = {
        key: {"mean": v["mean"], "std": v["std"]} for key, v in result.get("summary", {}).items()
    }
    page.add(
        "targets",
        "Targets (means over seeds)",
        f'<p class="note">Seeds {esc(result.get("seeds"))} (the generator\'s training seed; '
        f"split seed {esc(result.get('split_seed'))}), device {esc(result.get('device'))}, "
        f"{esc(result.get('seconds'))} s in all.</p>",
        _plain_table(targets),
    )
    page.add("summary", "Every figure, mean and std over seeds", _plain_table(spread))
    for seed in result.get("seeds", []):
        _generator_section(root / "generative" / f"seed-{seed}", page, f"Seed {seed}")


def _generator_rows(result: Mapping[str, Any]) -> dict[str, dict[str, object]]:
    """One row per image set of `pinlab eval generator`: every figure it reports."""
    rows: dict[str, dict[str, object]] = {}
    for name in GENERATOR_SETS:
        row: dict[str, object] = dict(result["fidelity"][name])
        row |= result["conditional"][name]
        if result.get("text_image_agreement"):
            row["text agreement"] = result["text_image_agreement"][name]
        if result.get("retrieval"):
            k = result["retrieval"]["k"]
            row[f"search precision@{k}"] = result["retrieval"][f"{name}_precision@{k}"]
        memo = result["memorisation"][name]
        row["near-duplicate share"] = memo["near_duplicate_share"]
        row |= {f"NN pixel RMS {q}": v for q, v in memo["nn_pixel_rms"].items()}
        rows[name] = row
    return rows


def _plain_table(rows: Mapping[str, Mapping[str, object]]) -> str:
    columns = list(dict.fromkeys(k for row in rows.values() for k in row))
    head = "".join(f"<th>{esc(c)}</th>" for c in ["", *columns])
    body = "".join(
        f"<tr><th>{esc(name)}</th>"
        + "".join(f"<td>{esc(_short(row.get(c, '-')))}</td>" for c in columns)
        + "</tr>"
        for name, row in rows.items()
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _generator_section(directory: Path, page: _Page, title: str = "Generated pins") -> None:
    """`pinlab eval generator`'s figures and its grid of samples, when the run has them."""
    result = _json_or_empty(directory / "eval.json")
    if not result:
        page.missing("generated pins", "no generator/eval.json (`pinlab eval generator --run`)")
        return
    agreement = result.get("text_image_agreement") or {}
    prior = result.get("category_prior") or {}  # absent from evaluations before the prior
    named = (
        f"each also conditioned on the category the generator's caption prior inferred "
        f"(inferred for {esc(prior['inferred_share'])} of them, the pin's own category for "
        f"{esc(prior['accuracy'])}); "
        if prior.get("infer_category")
        else "the caption alone; "
    )
    parts = [
        f'<p class="note">{esc(result["prompts"])} prompts: {esc(result["prompts_are"])}, '
        f"{named}{esc(result['steps'])} sampling steps, guidance {esc(result['guidance'])}, "
        f"autoguidance {esc(result.get('autoguidance', 1.0))}, seed "
        f"{esc(result['seed'])}. <b>real</b>: held-out pins of the same captions (FD against the "
        "other half of the held-out pins: the real-vs-real floor); <b>baseline</b>: the "
        "prompted category's mean training image plus per-pixel noise (no learning). "
        f"Text agreement of shuffled real pairs: {esc(agreement.get('real_shuffled', '-'))}."
        "</p>",
        _plain_table(_generator_rows(result)),
    ]
    samples = directory / "samples.png"
    if samples.is_file():
        parts.append(
            page.figure(
                samples.read_bytes(), f"samples {directory.name}", "generated samples per prompt",
                "Each row a held-out prompt: real pins of that caption (green), then generated.",
            )
        )  # fmt: skip
    page.add(f"generator-{_slug(directory.name)}", title, *parts)


def _cards(root: Path) -> list[Path]:
    """The run's model and data cards, or nothing unless both are there."""
    paths = [root / CARDS_DIR / MODEL_CARD, root / CARDS_DIR / DATA_CARD]
    return paths if all(p.is_file() for p in paths) else []


def _cards_section(root: Path, page: _Page) -> None:
    cards = _cards(root)
    if not cards:
        page.missing("cards", f"no {CARDS_DIR}/ (`pinlab card {root}`)")
        return
    page.add(
        "cards",
        "Model and data cards",
        f'<p class="note">From <code>{esc(CARDS_DIR)}/</code>, written by '
        "<code>pinlab card</code>.</p>",
        *(markdown_html(path.read_text()) for path in cards),
    )


_INLINE_CODE = re.compile(r"`([^`]+)`")
_CELL = re.compile(r"(?<!\\)\|")  # a cell's own | is escaped as \|


def markdown_html(text: str) -> str:
    """The Markdown the cards use, as HTML: headings, pipe tables, bullets and paragraphs.

    Everything is escaped first; headings drop two levels to sit under the section's h2.
    """
    out: list[str] = []
    block: list[str] = []
    kind = ""

    def inline(line: str) -> str:
        return _INLINE_CODE.sub(r"<code>\1</code>", esc(line))

    def flush() -> None:
        if kind == "table":
            rows = [
                [c.strip().replace("\\|", "|") for c in _CELL.split(line.strip()[1:-1])]
                for line in block
                if not re.fullmatch(r"\|( *-+ *\|)+", line.strip())
            ]
            head = "".join(f"<th>{inline(c)}</th>" for c in rows[0])
            body = "".join(
                "<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
            )
            out.append(f'<div class="wide"><table><tr>{head}</tr>{body}</table></div>')
        elif kind == "list":
            out.append("<ul>" + "".join(f"<li>{inline(i)}</li>" for i in block) + "</ul>")
        elif kind == "para":
            out.append(f"<p>{inline(' '.join(block))}</p>")
        block.clear()

    for line in text.splitlines():
        heading = re.match(r"(#{1,6}) (.*)", line)
        now = (
            "heading" if heading
            else "table" if line.startswith("|")
            else "list" if line.startswith("- ")
            else "" if not line.strip()
            else "para"
        )  # fmt: skip
        if now != kind or now == "heading":
            flush()
            kind = now
        if heading:
            level = min(len(heading.group(1)) + 2, 6)
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif now == "list":
            block.append(line[2:])
        elif now:
            block.append(line)
    flush()
    return "\n".join(out)
