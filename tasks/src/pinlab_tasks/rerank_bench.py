"""`pinlab bench rerank`: what each re-ranker buys in diversity, calibration and exposure, and
what it costs in NDCG@10, over one recommender's candidates.

Per seed r: the stratified split with seed 42 + r; the base model (default settings, never
tuned here) fitted on the validation split's training part, then refitted on the test split's
training part. Each user's top candidates (seen items excluded) are re-ranked to k=10 by every
re-ranker over a sweep of its trade-off (`category_pairs` over each candidate's hit
probability: the base model's score calibrated on the validation lists by centered isotonic
regression). Validation picks, per re-ranker, the trade-off with the most gain inside the
issue's NDCG budget; the test split reports the whole frontier and that choice. Nothing on
the test split chooses anything.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinlab_data import interaction_log, load_dataset, seen_csr
from pinlab_data._synth import TRUTH_FILE, load_truth
from pinlab_data.contracts import Dataset, Int64Array, InteractionLog, PinlabDataError
from pinlab_eval import (
    catalogue_coverage,
    category_diversity_at_k,
    embedding_diversity_at_k,
    exposure_by_group,
    gini_at_k,
    miscalibration_at_k,
    ndcg_at_k,
    protocol_spec,
    relevant_csr,
    seed_std,
    top_k,
)
from pinlab_eval._ranking import _hits
from pinlab_eval.contracts import Csr, Holdout
from pinlab_models import (
    TrainContext,
    build_recommender,
    calibrated,
    category_pairs,
    dpp,
    exposure_boost,
    exposure_constrained,
    in_relevance_order,
    mmr,
)
from pinlab_tasks.recsys import split_for

RERANK_FILE = "rerank.json"
GOLDEN = (math.sqrt(5) - 1) / 2
K = 10
TRADEOFFS = (0.0, 0.01, 0.02, 0.03, 0.05, 0.075, *(round(0.05 * i, 2) for i in range(2, 19)))
"""0 (the base ranking) to 0.9, in steps of 0.05 and finer below 0.1, where DPP's quality
weight alpha = (1 - d) / 2d moves most (at 0.05 it already cost 3.7% NDCG@10 on the synthetic
world); 1 would drop relevance altogether for MMR and calibration."""
EXPOSURE_TARGETS = tuple(round(0.025 * i, 3) for i in range(21))
"""The protected group's least share of every prefix, 0 to 0.5 in steps of 0.025 (at 0.05 a
step moved the emerging creators' share from 19% under their merit to 37% over it)."""
BOOSTS = tuple(round(0.0125 * i, 4) for i in range(81))
"""exposure_boost's bonus, 0 to 1 in steps of 0.0125 (1 lifts every protected candidate level
with the top one): on the synthetic world's first sweep (the shared trade-off grid) one step,
0.15 to 0.2, moved the emerging creators' share from 17% under their merit to 6% over it."""
PRICES = (0.0, *(float(f"{p:.3g}") for p in np.geomspace(1e-5, 0.3, 36)))
"""`category_pairs`' price of a same-category pair, in hit probability: 0, then 1e-5 to 0.3
a factor of 1.34 apart (on MovieLens-100K 0.003-0.005 spent about 1% of NDCG@10; on the
synthetic world, with its rarer hits, 0.001 spent 4%; at 0.3 a second pick of a category
needs 0.3 more hit probability than a new one's)."""
EMBEDDING_DIM = 32
SET_RERANKERS = ("mmr", "dpp", "calibrated", "category_pairs")
"""Re-rankers judged on the set they pick: their picks go back in relevance order."""
BUDGETS = {
    "mmr": 0.01, "dpp": 0.01, "category_pairs": 0.01, "calibrated": 0.02, "exposure": 0.02,
    "exposure_dithered": 0.02, "exposure_boost": 0.02,
}  # fmt: skip
"""The issue's relative NDCG@10 loss allowed per re-ranker when validation picks a setting."""
GOALS = {
    "mmr": "category_diversity",
    "dpp": "category_diversity",
    "category_pairs": "category_diversity",
    "calibrated": "miscalibration",
    "exposure": "exposure_gap",
    "exposure_dithered": "exposure_gap",
    "exposure_boost": "exposure_gap",
}
"""What each re-ranker is picked for on validation (more diversity, less of the others)."""


@dataclass(frozen=True)
class Items:
    """Item side information lined up with the log's dense item indexes."""

    category: Int64Array
    category_names: list[str]
    group: Int64Array
    group_names: list[str]
    vectors: np.ndarray  # unit rows from the training interactions (truncated SVD)

    @functools.cached_property
    def kernel(self) -> np.ndarray:
        """The DPP's item features: the behaviour vector and the category one-hot, equally
        weighted, so cosine = (behaviour cosine + same category) / 2. A DPP over behaviour
        alone never sees the categories its diversity is measured on (MMR gets them too)."""
        onehot = np.eye(len(self.category_names))[self.category]
        return np.hstack([self.vectors, onehot]) / math.sqrt(2)


def _column(ds: Dataset, log: InteractionLog, column: str) -> tuple[Int64Array, list[str]]:
    names = ds.pins.column_names
    if column not in names:
        raise PinlabDataError(
            f"--by {column!r} is not a pin column; the pins have: {', '.join(names)}"
        )
    pins = ds.pins.column("pin_id").to_pylist()
    by_pin = dict(zip(pins, ds.pins.column(column).to_pylist(), strict=True))
    values = [str(by_pin[int(p)]) for p in log.item_ids]
    labels = sorted(set(values))
    code = {v: i for i, v in enumerate(labels)}
    return np.asarray([code[v] for v in values], dtype=np.int64), labels


def item_vectors(train: InteractionLog, seed: int) -> np.ndarray:
    """Items as unit rows of a rank-32 SVD of the training user-item matrix: similarity from
    behaviour, independent of the category labels the diversity is measured with."""
    matrix = torch.zeros(train.num_users, train.num_items)
    matrix[torch.from_numpy(train.users), torch.from_numpy(train.items)] = 1.0
    torch.manual_seed(seed)
    q = min(EMBEDDING_DIM, min(matrix.shape) - 1)
    _, s, v = torch.svd_lowrank(matrix, q=q, niter=4)
    vectors = (v * s).numpy().astype(np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    # An item nobody trained on has no direction: all such items share one, so cosine is defined.
    vectors[norms[:, 0] == 0] = 1e-6
    return np.asarray(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def merit_share(
    ds_root: Path, log: InteractionLog, users: Int64Array, group: Int64Array
) -> list[float] | None:
    """Each item group's share of true relevance, without the world's exposure bias.

    The synthetic users pick a category by taste, then a pin within it with odds
    appeal x palette-taste^1.5 x (emerging creators' exposure knob); merit drops the knob:
    p(u, i) = taste_end[u, cat i] * w(u, i) / sum of w(u, j) over i's category, averaged over
    the test users. None off the synthetic world (no truth.npz).
    """
    if not (ds_root / TRUTH_FILE).is_file():
        return None
    truth = load_truth(ds_root)
    pins = log.item_ids - 1  # the world's pin ids are 1..n, its truth rows 0..n-1
    cat, pal = truth.pin_category[pins], truth.pin_palette[pins]
    appeal = truth.pin_appeal[pins].astype(np.float64)
    user_rows = log.user_ids[users] - 1
    shares = np.zeros(int(group.max()) + 1)
    for u in user_rows:
        w = appeal * truth.palette_taste[u, pal].astype(np.float64) ** 1.5
        per_cat = np.bincount(cat, weights=w, minlength=truth.taste_end.shape[1])
        p = truth.taste_end[u, cat] * w / per_cat[cat]
        shares += np.bincount(group, weights=p, minlength=len(shares))
    return [float(x) for x in shares / shares.sum()]


def _aligned(csr: Csr, users: Int64Array) -> Csr:
    """Rows `users` of a CSR indexed by user, as a CSR lined up with `users`."""
    indptr, indices = csr
    lengths = indptr[users + 1] - indptr[users]
    rows = [indices[indptr[u] : indptr[u + 1]] for u in users]
    out = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    flat = np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64)
    return out, flat


@dataclass(frozen=True)
class Lists:
    """One holdout's candidates and everything the metrics need about its users."""

    users: Int64Array
    candidates: Int64Array  # (users, n) by the base model's score, best first
    scores: np.ndarray
    relevant: Csr
    history: Csr
    probability: np.ndarray | None = None  # each candidate's hit probability (`hit_calibration`)


def hits(lists: Lists) -> np.ndarray:
    """Whether each candidate is one of its user's held-out items."""
    return _hits(lists.candidates, lists.relevant)[0]  # the ranking metrics' own lookup


def hit_calibration(lists: Lists) -> Callable[[np.ndarray], np.ndarray]:
    """The base model's score mapped to the probability that the candidate is held out, on
    one scale for every user (so one price trades the same expected hits in every list):
    centered isotonic regression of hit on score over `lists` (the validation lists; Oron
    and Flournoy 2017), each of the isotonic fit's levels placed at the mean score of its
    block and joined by straight lines, so it rises strictly between the outermost blocks.
    Plain isotonic regression is flat over each block: there, any price prefers a new
    category over a better-scored candidate that it calls equal, so on the synthetic world the
    smallest price already cost 1.45% of NDCG@10 and validation had to keep 0 on one split.
    """
    from sklearn.isotonic import IsotonicRegression

    x = lists.scores.ravel().astype(np.float64)
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
    level = fit.fit_transform(x, hits(lists).ravel().astype(np.float64))
    # Blocks are runs of x, so their centres rise with their levels.
    levels, block = np.unique(level, return_inverse=True)
    centres = np.bincount(block, weights=x) / np.bincount(block)

    def probability(scores: np.ndarray) -> np.ndarray:
        return np.asarray(np.interp(scores.astype(np.float64), centres, levels))

    return probability


def candidate_lists(name: str, holdout: Holdout, n: int, run_dir: Path, seed: int) -> Lists:
    model = build_recommender(name, {})
    ctx = TrainContext(run_dir=run_dir, seed=seed, progress=False)
    model.fit(holdout.train, ctx, None)
    users, relevant = relevant_csr(holdout.target)
    seen = seen_csr(holdout.train)
    candidates = top_k(model, users, n, seen)
    scores = np.take_along_axis(model.score(users), candidates, axis=1)
    return Lists(users, candidates, scores, relevant, _aligned(seen, users))


def rerank_all(
    lists: Lists, items: Items, method: str, tradeoff: float, protected: int
) -> Int64Array:
    """Every user's top K after re-ranking their candidates."""
    out = np.empty((len(lists.users), K), dtype=np.int64)
    names = [items.category_names[c] for c in items.category]
    kernel = items.kernel if method == "dpp" else items.vectors
    # exposure_dithered: each user's offset of the exposure minimum, spread evenly over [0, 1)
    # (golden-ratio sequence), so the protected share follows the target smoothly over users;
    # exposure: offset 0, the deterministic minimum.
    offsets = (
        np.modf(np.arange(len(lists.users)) * GOLDEN)[0]
        if method == "exposure_dithered"
        else np.zeros(len(lists.users))
    )
    hist_ptr, hist = lists.history
    for row, cands in enumerate(lists.candidates):
        rel = lists.scores[row].tolist()
        if method == "mmr":
            cats = [names[i] for i in cands]
            groups = [items.group_names[items.group[i]] for i in cands]
            order = mmr(rel, items.vectors[cands], cats, groups, K, tradeoff)
        elif method == "dpp":
            order = dpp(rel, kernel[cands], K, tradeoff)
        elif method == "category_pairs":
            if lists.probability is None:
                raise PinlabDataError("category_pairs needs calibrated hit probabilities")
            cats = [names[i] for i in cands]
            order = category_pairs(lists.probability[row].tolist(), cats, K, tradeoff)
        elif method == "calibrated":
            past = [names[i] for i in hist[hist_ptr[row] : hist_ptr[row + 1]]]
            order = calibrated(rel, [names[i] for i in cands], past, K, tradeoff)
        elif method == "exposure_boost":
            order = exposure_boost(rel, (items.group[cands] == protected).tolist(), K, tradeoff)
        else:
            order = exposure_constrained(
                rel, (items.group[cands] == protected).tolist(), K, tradeoff, offsets[row]
            )
        if method in SET_RERANKERS:
            order = in_relevance_order(order, rel)
        out[row] = cands[order]
    return out


def measure(
    ranked: Int64Array,
    lists: Lists,
    items: Items,
    merit: list[float] | None,
    protected: int,
) -> dict[str, float | None]:
    exposure = exposure_by_group(ranked, items.group, lists.relevant, len(items.group_names))
    share = exposure.groups[protected].exposure_share
    out: dict[str, float | None] = {
        "ndcg@10": float(ndcg_at_k(ranked, lists.relevant).mean()),
        "category_diversity": float(category_diversity_at_k(ranked, items.category).mean()),
        "embedding_diversity": float(embedding_diversity_at_k(ranked, items.vectors).mean()),
        "miscalibration": float(
            np.nanmean(miscalibration_at_k(ranked, lists.history, items.category))
        ),
        "coverage": catalogue_coverage(ranked, len(items.category)),
        "gini": gini_at_k(ranked, len(items.category)),
        "protected_exposure_share": share,
        "exposure_disparity": exposure.disparity,
    }
    reference = (
        merit[protected] if merit is not None else exposure.groups[protected].relevance_share
    )
    out["protected_reference_share"] = reference
    out["exposure_gap"] = None if not reference else abs(share - reference) / reference
    return out


def _grid(method: str) -> tuple[float, ...]:
    """Prefix minimums for the constrained re-rankers, the bonus grid for the boost, trade-offs
    for the rest."""
    if method == "exposure_boost":
        return BOOSTS
    if method == "category_pairs":
        return PRICES
    return EXPOSURE_TARGETS if method in ("exposure", "exposure_dithered") else TRADEOFFS


def _sweep(
    lists: Lists, items: Items, merit: list[float] | None, protected: int
) -> dict[str, dict[float, dict[str, float | None]]]:
    out: dict[str, dict[float, dict[str, float | None]]] = {}
    for method in GOALS:
        grid = _grid(method)
        out[method] = {
            t: measure(
                rerank_all(lists, items, method, t, protected),
                lists,
                items,
                merit,
                protected,
            )
            for t in grid
        }
    return out


def pick(points: dict[float, dict[str, float | None]], method: str) -> float:
    """The trade-off with the most gain for `method`'s goal whose relative NDCG@10 loss
    against trade-off 0 stays within its budget (0 when none does)."""
    base = points[0.0]["ndcg@10"] or 0.0
    goal = GOALS[method]
    sign = 1.0 if goal == "category_diversity" else -1.0
    best, best_value = 0.0, -math.inf
    for t, m in points.items():
        value = m[goal]
        loss = (base - (m["ndcg@10"] or 0.0)) / base if base > 0 else 0.0
        if value is None or loss > BUDGETS[method] + 1e-12:
            continue
        if sign * value > best_value + 1e-12:
            best, best_value = t, sign * value
    return best


def bench_rerank(
    data_dir: Path,
    run_dir: Path,
    *,
    by: str | None,
    model: str,
    candidates: int,
    seeds: int,
    seed: int,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    started = time.perf_counter()
    build_recommender(model, {})  # an unknown model fails before the data is read
    ds = load_dataset(data_dir)
    log = interaction_log(ds)
    by = by or ("creator_group" if (data_dir / TRUTH_FILE).is_file() else "category")
    group, group_names = _column(ds, log, by)
    category, category_names = _column(ds, log, "category")
    if seeds < 1:
        raise PinlabDataError(f"--seeds must be at least 1, got {seeds}")
    if candidates < K:
        raise PinlabDataError(f"--candidates must be at least {K}, got {candidates}")
    per_seed: list[dict[str, Any]] = []
    protected = -1  # chosen on the first seed's validation split, then kept
    for r in range(seeds):
        spec = protocol_spec("stratified", {"seed": 42 + r})
        split = split_for(log, spec)
        say(f"seed {seed + r}: fitting {model} (validation, then test training part)")
        sides: dict[str, Any] = {}
        calibration: Callable[[np.ndarray], np.ndarray] | None = None
        for side, holdout in (("valid", split.valid), ("test", split.test)):
            lists = candidate_lists(
                model, holdout, candidates, run_dir / f"seed-{seed + r}" / side, seed + r
            )
            calibration = calibration or hit_calibration(lists)  # fitted on validation
            lists = replace(lists, probability=calibration(lists.scores))
            items = Items(
                category, category_names, group, group_names, item_vectors(holdout.train, seed + r)
            )
            merit = merit_share(data_dir, log, lists.users, group)
            if protected < 0:
                # The group the base lists under-expose most (on validation): against its true
                # merit on the synthetic world, else against its held-out relevance.
                base = exposure_by_group(
                    lists.candidates[:, :K], group, lists.relevant, len(group_names)
                )
                reference = merit or [g.relevance_share or 0.0 for g in base.groups]
                ratios = [
                    g.exposure_share / ref if ref else math.inf
                    for g, ref in zip(base.groups, reference, strict=True)
                ]
                protected = int(np.argmin(ratios))
            say(f"seed {seed + r}: re-ranking {len(lists.users)} {side} users' top {candidates}")
            sides[side] = _sweep(lists, items, merit, protected)
        chosen = {m: pick(sides["valid"][m], m) for m in sides["valid"]}
        per_seed.append(
            {
                "seed": seed + r,
                "protected": group_names[protected],
                "chosen": chosen,
                "test": sides["test"],
            }
        )
    return summarize(per_seed, data_dir, by, model, candidates, started)


def _mean_std(values: Sequence[float | None]) -> dict[str, float | None]:
    real = [v for v in values if v is not None]
    if not real:
        return {"mean": None, "std": None}
    return {
        "mean": float(np.mean(real)),
        "std": seed_std(real),
    }


def summarize(
    per_seed: list[dict[str, Any]],
    data_dir: Path,
    by: str,
    model: str,
    candidates: int,
    started: float,
) -> dict[str, Any]:
    methods = list(per_seed[0]["test"])
    frontier: dict[str, list[dict[str, Any]]] = {}
    for method in methods:
        rows = []
        for t in per_seed[0]["test"][method]:
            metrics = per_seed[0]["test"][method][t]
            rows.append(
                {"tradeoff": t}
                | {
                    name: _mean_std([s["test"][method][t][name] for s in per_seed])
                    for name in metrics
                }
            )
        frontier[method] = rows
    chosen: dict[str, Any] = {}
    for method in methods:
        picks = [s["chosen"][method] for s in per_seed]
        base = [s["test"][method][0.0] for s in per_seed]
        at = [s["test"][method][p] for s, p in zip(per_seed, picks, strict=True)]
        loss = [(b["ndcg@10"] - a["ndcg@10"]) / b["ndcg@10"] for a, b in zip(at, base, strict=True)]
        goal = GOALS[method]
        change = [
            (a[goal] - b[goal]) / b[goal] if a[goal] is not None and b[goal] else None
            for a, b in zip(at, base, strict=True)
        ]
        grid = _grid(method)
        chosen[method] = {
            "tradeoff_per_seed": picks,
            "on_edge": any(p == grid[-1] for p in picks),
            "goal": goal,
            "ndcg_budget": BUDGETS[method],
            "relative_ndcg_loss": _mean_std(loss),
            f"relative_{goal}_change": _mean_std(change),
            "per_seed": {"relative_ndcg_loss": loss, f"relative_{goal}_change": change},
            "at_choice": {name: _mean_std([a[name] for a in at]) for name in at[0]},
        }
    return {
        "data": str(data_dir),
        "by": by,
        "protected": per_seed[0]["protected"],
        "model": model,
        "candidates": candidates,
        "k": K,
        "seeds": [s["seed"] for s in per_seed],
        "item_vectors": f"rank-{EMBEDDING_DIM} SVD of the training user-item matrix (unit rows)",
        "dpp_kernel": "item vectors and category one-hot, equally weighted (Items.kernel)",
        "category_pairs_relevance": "hit probability: the base score calibrated by centered "
        "isotonic regression on the validation lists",
        "chosen_on": "validation split (stratified protocol applied inside the test training part)",
        "frontier": frontier,
        "chosen": chosen,
        "seconds": round(time.perf_counter() - started, 1),
    }


def frontier_plot(result: dict[str, Any], path: Path) -> Path:
    """NDCG@10 against category diversity and against the protected group's exposure share,
    one curve per re-ranker (means over seeds)."""
    from pinlab_data import write_bytes_atomic
    from pinlab_eval import curves_png
    from pinlab_eval.contracts import Curve

    panels = {}
    for x, title in (
        ("category_diversity", "NDCG@10 vs category diversity"),
        ("protected_exposure_share", f"NDCG@10 vs {result['protected']} exposure share"),
        ("miscalibration", "NDCG@10 vs miscalibration"),
    ):
        panels[title] = [
            Curve(
                points=[(row[x]["mean"], row["ndcg@10"]["mean"]) for row in rows],
                label=method,
            )
            for method, rows in result["frontier"].items()
        ]
    write_bytes_atomic(
        path, curves_png(panels, "metric (mean over seeds)", "NDCG@10", whole_x=False)
    )
    return path


def render_rerank(payload: dict[str, Any]) -> None:
    from rich.table import Table

    from pinlab_tasks._output import stdout

    stdout.print(
        f"{payload['model']} top {payload['candidates']} re-ranked to k={payload['k']}, "
        f"seeds {payload['seeds']}, groups by {payload['by']} (protected: "
        f"{payload['protected']}); settings chosen on {payload['chosen_on']}"
    )
    table = Table(title="validation-chosen setting per re-ranker, test split, mean ± std")
    for column in ("re-ranker", "trade-off", "NDCG loss", "goal", "goal change", "ndcg@10",
                   "cat. ILD", "miscal.", "protected share", "reference share"):  # fmt: skip
        table.add_column(column, justify="left" if column == "re-ranker" else "right")

    def fmt(stat: dict[str, float | None], percent: bool = False) -> str:
        if stat["mean"] is None:
            return "n/a"
        scale, unit, digits = (100, "%", 1) if percent else (1, "", 4)
        mean, std = stat["mean"] * scale, (stat["std"] or 0) * scale
        return f"{mean:.{digits}f}{unit} ± {std:.{digits}f}"

    for method, c in payload["chosen"].items():
        at = c["at_choice"]
        table.add_row(
            method,
            ",".join(str(t) for t in c["tradeoff_per_seed"]) + (" (edge)" if c["on_edge"] else ""),
            fmt(c["relative_ndcg_loss"], True),
            c["goal"],
            fmt(c[f"relative_{c['goal']}_change"], True),
            fmt(at["ndcg@10"]),
            fmt(at["category_diversity"]),
            fmt(at["miscalibration"]),
            fmt(at["protected_exposure_share"]),
            fmt(at["protected_reference_share"]),
        )
    stdout.print(table)
    stdout.print(f"frontier plot: {payload.get('plot')}; {payload['seconds']} s")
