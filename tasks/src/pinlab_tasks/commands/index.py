"""`pinlab index`: the FAISS index over a run's pin embeddings or over embedding shards."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import faiss
import typer
from rich.table import Table

from pinlab_serve import INDEX_KINDS, format_bytes
from pinlab_tasks import queries
from pinlab_tasks._app import JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, stderr, stdout
from pinlab_tasks._progress import step_say
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.tracking import tracked

app = typer.Typer(help="Build vector indexes.", no_args_is_help=True)


@app.command("build")
def build(
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Run directory: embeds its pins, writes RUN/index."),
    ] = None,
    vectors: Annotated[
        list[Path] | None,
        typer.Option(
            "--vectors",
            help="Embedding shards to index instead (Parquet pin_id + vector, .npz, .npy) or "
            "a folder of them (`pinlab embed`'s); repeatable.",
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Index directory (default RUN/index).")
    ] = None,
    model_id: Annotated[
        str | None,
        typer.Option("--model-id", help="Model that made the --vectors (default: theirs)."),
    ] = None,
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            help="size (exact below 50k pins, HNSW above), auto (tuned over every kind) or "
            f"one of {', '.join(INDEX_KINDS)} (tuned).",
        ),
    ] = "size",
    target_recall: Annotated[
        float | None,
        typer.Option(
            "--target-recall",
            help="Tune: recall@10 vs exact search to meet on held-out pins (default 0.9 "
            "when tuning).",
        ),
    ] = None,
    max_memory: Annotated[
        str | None,
        typer.Option("--max-memory", help="Tune: memory cap of the index, e.g. 1GB, 512MiB."),
    ] = None,
    prefer: Annotated[
        str,
        typer.Option(
            "--prefer", help="Tune: memory (smallest meeting the target) or latency (p99)."
        ),
    ] = "memory",
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Index a run's pins or embedding shards; with --target-recall/--max-memory/--kind, the
    tuner chooses the kind and its settings and records the measured recall, memory and
    latency in the manifest. A build stopped part-way leaves the previous index in place.

    Writes: RUN/index/ or OUT/ (index.json, `index-<sha>.faiss`).
    """
    layout = RunLayout(run) if run is not None else None
    seed_value = settings().seed if seed is None else seed
    faiss.omp_set_num_threads(settings().threads)  # --threads caps FAISS's training and adds
    config: dict[str, Any] = {
        "kind": kind,
        "target_recall": target_recall,
        "max_memory": max_memory,
        "prefer": prefer,
        "seed": seed_value,
    }
    with tracked("index build", config, run_dir=run) as tracker:
        result = queries.build_index(
            layout,
            vectors=vectors or [],
            out=out,
            model_id=model_id,
            kind=kind,
            target_recall=target_recall,
            max_memory=max_memory,
            prefer=prefer,
            seed=seed_value,
            say=step_say((lambda _: None) if as_json else stderr.print, "index build"),
        )
        metrics = {"count": result["count"], "recall_at_10": result["recall_at_10"]}
        if result["latency"] is not None:
            metrics["p99_ms"] = result["latency"]["p99_ms"]
        tracker.log_metrics({k: v for k, v in metrics.items() if v is not None})
    emit(result, as_json, lambda: _render(result))


def _render(result: dict[str, Any]) -> None:
    stdout.print(f"indexed {result['count']:,} pins ({result['kind']}) -> {result['out']}")
    tuning = result.get("tuning")
    if not tuning:
        return
    table = Table(title=f"tuner: recall@10 >= {tuning['target_recall']} (lower 95% bound)")
    for column in ("candidate", "stage", "memory", "recall@10", "low", "p99 ms", "build s"):
        table.add_column(column)
    for n, c in enumerate(tuning["candidates"]):
        mark = " *" if n == tuning["chosen"] else ""
        latency = c["latency"]["p99_ms"] if c["latency"] else ""
        table.add_row(f"{c['factory']} {c['params']}{mark}", c["stage"],
                      format_bytes(c["memory_bytes"]), f"{c['recall_at_10']:.3f}",
                      f"{c['recall_low']:.3f}", str(latency), str(c["build_seconds"]))  # fmt: skip
    stdout.print(table)
    stdout.print(
        f"chosen: {result['kind']} {result['params']}; fresh pins recall@10 "
        f"{tuning['fresh_recall_at_10']:.3f} (low {tuning['fresh_recall_low']:.3f}); "
        f"about {format_bytes(result['memory_bytes'] or 0)}"
    )
