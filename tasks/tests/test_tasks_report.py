"""`pinlab report`: the page of a bench or run directory, self-contained, every section there."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import BrowserPage
from pinlab_data import PinlabDataError
from pinlab_eval import embedding_map
from pinlab_tasks.cli import run
from pinlab_tasks.report import Report, build_report, detect_kind, metric_header, write_report

EVIL = '<b>evil</b>&"model'
MODELS = ("ease", EVIL, "popularity")
SEEDS = (0, 1)
KEYS = ("ndcg@10", "hr@10", "recall@10", "precision@10", "map@10", "map_all@10", "ndcg@20")


def _row(name: str, level: float) -> dict[str, Any]:
    per_seed = {k: [level + 0.01 * s for s in SEEDS] for k in KEYS}
    trials = [
        {
            "number": n,
            "params": {"l2": 10.0**n},
            "value": level - 0.01 * n if n != 2 else None,
            "state": "PRUNED" if n == 2 else "COMPLETE",
            "curve": [[e, level * e / 4 - 0.01 * n] for e in range(1, 5 - n)],
        }
        for n in range(4)
    ]
    search = {
        "space": {"l2": {"kind": "float", "low": 1.0, "high": 1e4, "log": True}},
        "trials": trials,
        "chosen": {"l2": 1.0, "epochs": 4},
        "valid_value": level,
        "boundary": ["l2"] if name == "ease" else [],
    }
    return {
        "model": name,
        "metrics": {k: float(np.mean(v)) for k, v in per_seed.items()},
        "std": {k: float(np.std(v, ddof=1)) for k, v in per_seed.items()},
        "per_seed": per_seed,
        "ci95": {k: [level - 0.02, level + 0.03] for k in KEYS},
        "fit_seconds": 1.5,
        "peak_rss_mb": 120.0,
        "search": [search for _ in SEEDS],
        "curves": [[[1, level / 2], [2, level]] for _ in SEEDS],
    }


def bench_payload() -> dict[str, Any]:
    """A bench.json in the shape of BENCH_SCHEMA (several seeds, everything present)."""
    levels = dict(zip(MODELS, (0.41, 0.37, 0.2), strict=True))
    rng = np.random.default_rng(0)
    comparisons = [
        {
            "a": a,
            "b": b,
            "metric": "ndcg@10",
            "difference": levels[a] - levels[b],
            "difference_ci95": [levels[a] - levels[b] - 0.01, levels[a] - levels[b] + 0.01],
            "p_value": 0.01,
            "p_holm": 0.03,
            "significant": True,
            "per_seed": [0.04, 0.04],
            "wins": 2,
            "test": "paired bootstrap over (seed, user) pairs",
        }
        for i, a in enumerate(MODELS)
        for b in MODELS[i + 1 :]
    ]
    return {
        "dataset": "ml-100k",
        "dataset_fingerprint": "sha256:abc",
        "protocol": {"name": "stratified", "seed": 42, "ratio": 0.75, "stratify_by": "item"},
        "seeds": list(SEEDS),
        "validation_metric": "ndcg@10",
        "trials": 4,
        "counts": [{"seed": s, "train_interactions": 75000, "target_users": 940} for s in SEEDS],
        "results": [_row(m, levels[m]) for m in MODELS],
        "user_metrics": {
            m: {"ndcg@10": rng.uniform(0, 2 * levels[m], 50).tolist()} for m in MODELS
        },
        "comparisons": comparisons,
        "anchors": [
            {
                "model": "BPR",
                "metrics": {"ndcg@10": 0.442, "map_all@10": 0.132, "recall@10": None},
                "source": "Microsoft Recommenders README, 'Algorithm Comparison' table",
                "note": "their empirical hyperparameters; not tuned per model",
            }
        ],
        "peers": [],
    }


def write_bench(root: Path, payload: dict[str, Any] | None = None) -> Path:
    root.mkdir(parents=True)
    (root / "bench.json").write_text(json.dumps(payload or bench_payload()))
    (root / "run.json").write_text(
        json.dumps(
            {
                "created": "2026-01-01T00:00:00+00:00",
                "argv": ["pinlab", "bench"],
                "steps": [{"command": "bench recsys", "config": {"seed": 0}}],
            }
        )
    )
    for seed in SEEDS:  # the refit's training log of an epoch-trained model
        log = root / "ease" / f"seed-{seed}" / "metrics.jsonl"
        log.parent.mkdir(parents=True)
        lines = [
            {"epoch": e, "train_loss": 1 / e, "valid": None, "seconds": 0.1} for e in (1, 2, 3)
        ]
        log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    rng = np.random.default_rng(1)
    embedding_map(
        rng.normal(size=(30, 4)).astype(np.float32),
        ["a", "b", "c"] * 10,
        root / "embedding_map_untrained.png",
        "untrained",
    )
    cold = root / "cold_start" / "eval.json"
    cold.parent.mkdir()
    cold.write_text(
        json.dumps(
            {
                "protocol": "cold-start(cold_fraction=0.2, seed=0)",
                "features": "text",
                "feature_dim": 384,
                "cold_items": 60,
                "hybrid_epochs": 5,
                "models": {
                    "hybrid": {"hr@10": 0.3, "ndcg@10": 0.12},
                    "popularity": {"hr@10": 0.1, "ndcg@10": 0.05},
                    "random": {"hr@10": 0.08},
                },
                "hr@10_vs_random": 3.75,
                "hr@10_vs_popularity": 3.0,
            }
        )
    )
    return root


def images(page: str) -> list[str]:
    return re.findall(r"<img [^>]*>", page)


@pytest.fixture(scope="module")
def bench_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """The page of the full bench fixture, built once for the tests that only read it."""
    return build_report(write_bench(tmp_path_factory.mktemp("report") / "bench"))


def minimal_bench(root: Path) -> Path:
    """One seed, one model, nothing optional."""
    row = bench_payload()["results"][0]
    payload = {
        "dataset": "ml-100k",
        "protocol": {"name": "stratified"},
        "results": [{"model": row["model"], "metrics": row["metrics"]}],
    }
    root.mkdir(parents=True)
    (root / "bench.json").write_text(json.dumps(payload))
    return root


def test_bench_page_has_every_section_and_is_self_contained(bench_report: Report) -> None:
    report = bench_report
    assert report.kind == "bench recsys"
    expected = ["metrics", "search", "curves", "users", "significance", "embeddings", "cold-start"]
    assert report.sections == expected
    page = report.html
    for section in expected:
        assert f'<section id="{section}">' in page
    # Self-contained: no script, no stylesheet link, nothing fetched over the network.
    assert "<script" not in page and "<link" not in page
    assert not re.findall(r'(?:src|href)="(?!data:image/png;base64,|#)', page)
    tags = images(page)
    # validation curves, search history, training loss, distributions, matrix, embedding map
    assert len(tags) == report.plots == 6
    ids = [re.search(r'id="([^"]+)"', t).group(1) for t in tags]  # type: ignore[union-attr]
    assert len(set(ids)) == len(ids)
    assert all(re.search(r'alt="[^"]{10,}"', t) for t in tags)


def test_bench_page_escapes_names_and_says_which_map(bench_report: Report) -> None:
    page = bench_report.html
    assert EVIL not in page and "<b>evil" not in page
    assert "&lt;b&gt;evil&lt;/b&gt;&amp;&quot;model" in page
    assert "(pinlab map@10: Σ precision@i at hits i ≤ 10, ÷ min(|relevant|, 10))" in page
    assert (
        "(map_all@10: Σ precision@i at hits i ≤ 10, ÷ |relevant|; Microsoft Recommenders&#x27; MAP)"
        in page
    )
    # Published numbers beside ours with their source and note; the missing one as a dash.
    published = page[page.index('<tr class="published">') :].split("</tr>")[0]
    assert "BPR" in published and "0.4420" in published and "0.1320" in published
    assert "Algorithm Comparison" in published and "not tuned per model" in published
    # Mean ± std over seeds, the interval and each seed's value.
    assert "<b>0.4150</b> ± 0.0071" in page
    assert "95% CI [0.3900, 0.4400]" in page
    assert "seeds: 0.4100 · 0.4200" in page
    # The setting chosen on the edge of its range is highlighted.
    assert '<mark title="on the edge of its search range">l2=1</mark>' in page


def test_headers_name_the_map_they_are() -> None:
    assert metric_header("map@10") == (
        "MAP@10 (pinlab map@10: Σ precision@i at hits i ≤ 10, ÷ min(|relevant|, 10))"
    )
    assert "Microsoft Recommenders' MAP" in metric_header("map_all@20")
    assert metric_header("map@r") == "MAP@R (Musgrave et al. 2020)"
    assert metric_header("ndcg@20") == "nDCG@20"
    assert metric_header("map") == "MAP (full ranking)"
    assert metric_header("text_recall@1") == "text→image Recall@1"


def test_one_seed_and_nothing_optional(tmp_path: Path) -> None:
    report = build_report(minimal_bench(tmp_path / "bench"))
    assert report.sections == ["metrics"]
    assert report.plots == 0 and images(report.html) == []
    assert "Not in this run" in report.html
    assert "no comparisons" in report.html
    assert " ± " not in report.html  # no spread is shown for one seed


def test_single_seed_bench_of_before(tmp_path: Path) -> None:
    """bench.json as `bench recsys` wrote it before seeds: `tuned` and one `comparison`."""
    rows = [
        {
            "model": m,
            "num_users": 900,
            "metrics": {"ndcg@10": v},
            "ci95": {"ndcg@10": [v - 0.01, v + 0.01]},
            "fit_seconds": 0.5,
            "peak_rss_mb": 300.0,
            "tuned": {"settings": {"l2": 500.0}, "valid_ndcg@10": v, "grid_points": 3},
        }
        for m, v in (("ease", 0.4), ("popularity", 0.2))
    ]
    payload = {
        "dataset": "ml-100k",
        "protocol": {"name": "stratified", "seed": 42},
        "counts": {"train_interactions": 75000},
        "results": rows,
        "comparison": {
            "best": "ease",
            "runner_up": "popularity",
            "metric": "ndcg@10",
            "difference": 0.2,
            "difference_ci95": [0.18, 0.22],
            "p_value": 1e-4,
            "significant": True,
            "test": "paired bootstrap over users",
        },
        "anchors": [],
        "peers": [],
    }
    report = build_report(write_bench(tmp_path / "bench", payload))
    assert {"metrics", "search", "significance"} <= set(report.sections)
    assert "l2=500" in report.html
    assert "seeds</dt><dd>1: 0" in report.html  # the one seed, from run.json


def test_per_user_values_from_the_npz(tmp_path: Path) -> None:
    """As `bench recsys` keeps them: keys MODEL/METRIC, seed-major, and MODEL/seed."""
    root = minimal_bench(tmp_path / "bench")
    arrays = {f"ease/{m}": np.linspace(0, 1, 20) for m in ("ndcg@10", "recall@10", "seed")}
    np.savez(root / "user_metrics.npz", **arrays)  # type: ignore[arg-type]
    report = build_report(root)
    assert report.sections == ["metrics", "users"]
    assert "Box plots of per-user ndcg@10, recall@10 for ease" in report.html


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (b'{"epoch": 3, "train_lo', ":3 is not JSON (Unterminated string"),
        (b"[3, 0.5]", ":3 holds a JSON list, not an object"),  # was AttributeError, exit 1
        (b"\x94\xff\x00", ":3 is not UTF-8 text (invalid start byte)"),  # UnicodeDecodeError
    ],
    ids=["torn", "not-an-object", "binary"],
)
def test_a_damaged_training_log_is_named_with_its_line(
    tmp_path: Path, damage: bytes, message: str
) -> None:
    root = minimal_bench(tmp_path / "bench")
    log = root / "ease" / "metrics.jsonl"
    log.parent.mkdir(exist_ok=True)
    good = "".join(json.dumps({"epoch": e, "train_loss": 1 / e}) + "\n" for e in (1, 2))
    log.write_bytes(good.encode() + damage + b"\n")
    with pytest.raises(PinlabDataError) as info:
        build_report(root)
    assert str(info.value).startswith(f"{log}{message}")
    assert str(info.value).endswith("; delete that line, or rerun the step that wrote the log")


def test_bench_visual_page(tmp_path: Path) -> None:
    root = tmp_path / "visual"
    root.mkdir()
    rows = [
        {
            "recipe": "raw pixels",
            "baseline": True,
            "metrics": {"recall@1": 0.5, "map@r": 0.1},
            "embed_images_per_s": 9000.0,
            "peak_rss_mb": 500.0,
        },
        {
            "recipe": "supcon",
            "baseline": False,
            "metrics": {"recall@1": 0.9, "map@r": 0.6},
            "std": {"recall@1": 0.01, "map@r": 0.02},
            "per_seed": {"recall@1": [0.89, 0.91], "map@r": [0.58, 0.62]},
            "train_images_per_s": 1500.0,
            "embed_images_per_s": 7000.0,
            "peak_rss_mb": 800.0,
        },
    ]
    embedding_map(
        np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32),
        ["x", "y"] * 10,
        root / "embedding_map_supcon.png",
        "supcon",
    )
    (root / "bench_visual.json").write_text(
        json.dumps(
            {
                "dataset": "synth",
                "protocol": {"name": "held-out-classes"},
                "results": rows,
                "targets": {"recall@1 >= 0.90 (best recipe)": True},
                # recorded where the run used to live: the report finds it in the run
                "embedding_maps": {"supcon": "/elsewhere/embedding_map_supcon.png"},
            }
        )
    )
    log = root / "supcon" / "metrics.jsonl"
    log.parent.mkdir()
    log.write_text("".join(json.dumps({"epoch": e, "train_loss": 3 - e}) + "\n" for e in (1, 2)))
    report = build_report(root)
    assert report.kind == "bench visual"
    assert report.sections == ["metrics", "curves", "embeddings"]
    assert report.plots == len(images(report.html)) == 2
    assert "MAP@R" in report.html and "(Musgrave et al. 2020)" in report.html
    assert "<b>0.9000</b> ± 0.0100" in report.html and "seeds: 0.8900 · 0.9100" in report.html


def test_demo_run_page(tiny_demo: dict[str, Any], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo["run_dir"], run_dir, ignore=shutil.ignore_patterns("data"))
    report = build_report(run_dir)
    assert report.kind == "run"
    assert report.sections == ["metrics", "curves", "embeddings"]
    # training loss and validation per epoch (mf, the encoder), the encoder's embedding map
    assert report.plots == len(images(report.html)) == 3
    assert "Recommenders, leave-last-out" in report.html
    assert "recommender/popularity" in report.html  # named as a one-pass fit without a curve


def test_cli_writes_the_page_and_says_what_it_holds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_bench(tmp_path / "bench")
    out = tmp_path / "pages" / "r.html"
    assert run(["report", str(root), "--out", str(out), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["report"] == str(out) and payload["plots"] == 6
    assert payload["sections"][0] == "metrics"
    assert [p.name for p in out.parent.iterdir()] == ["r.html"]  # no temporary file left
    assert len(images(out.read_text())) == 6
    small = minimal_bench(tmp_path / "small")
    assert run(["report", str(small), "--json"]) == 0  # default: inside the directory
    assert json.loads(capsys.readouterr().out)["report"] == str(small / "report.html")


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "expected bench.json"),
        (lambda d: (d.mkdir(), (d / "bench.json").write_text("{oops")), "not valid JSON"),
        (lambda d: (d.mkdir(), (d / "bench.json").write_text('{"dataset": "x"}')), "results"),
        (lambda d: (d.mkdir(), (d / "run.json").write_text("{}")), "expected bench.json"),
    ],
)
def test_bad_directories_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], setup: Any, message: str
) -> None:
    target = tmp_path / "d"
    setup(target)
    assert run(["report", str(target), "--json"]) == 2
    assert message in json.loads(capsys.readouterr().out)["error"]
    with pytest.raises(PinlabDataError, match=message):
        build_report(target)


def test_out_must_not_be_a_directory(tmp_path: Path) -> None:
    root = minimal_bench(tmp_path / "bench")
    with pytest.raises(PinlabDataError, match="is a directory"):
        write_report(root, tmp_path)
    assert detect_kind(root) == "bench recsys"


def test_out_replaces_an_earlier_report_and_no_other_file(tmp_path: Path) -> None:
    """`--out RUN/run.json` once replaced the run's manifest with the page."""
    root = minimal_bench(tmp_path / "bench")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    for kept in (root / "bench.json", notes):
        before = kept.read_bytes()
        with pytest.raises(PinlabDataError, match="is not an earlier pinlab report"):
            write_report(root, kept)
        assert kept.read_bytes() == before
    page = tmp_path / "r.html"
    write_report(root, page)
    page.write_text(page.read_text().replace("</body>", "<p>old</p></body>"))
    write_report(root, page)  # an earlier page is replaced
    assert "<p>old</p>" not in page.read_text()


@pytest.mark.slow
def test_reports_render_in_headless_chromium(
    browser_page: BrowserPage,
    tiny_demo: dict[str, Any],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`pinlab report RUN --out r.html` for a bench and for the demo run: every plot drawn."""
    pages = {}
    for name, root in (("bench", write_bench(tmp_path / "bench")), ("demo", tiny_demo["run_dir"])):
        out = tmp_path / f"{name}.html"
        assert run(["report", str(root), "--out", str(out), "--json"]) == 0
        pages[out] = json.loads(capsys.readouterr().out)["plots"]
    with browser_page("about:blank") as (page, errors):
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        for out, plots in pages.items():
            page.goto(out.as_uri())
            page.wait_for_load_state("load")
            drawn = page.evaluate(
                "[...document.images].map(img => [img.id, img.alt,"
                " img.complete && img.naturalWidth > 0 && img.naturalHeight > 0])"
            )
            assert len(drawn) == plots > 0, out.name
            assert all(ok and plot_id and alt for plot_id, alt, ok in drawn), drawn
            assert page.locator("section h2").count() >= 3
        assert errors == []
    # The page and its data URIs, nothing over the network.
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
