"""`pinlab bench embed`: images/s of the local and the Ray engine on the same data, and
whether their vectors are identical.

One local Ray cluster is started for the whole bench (its start is timed on its own); each
repetition then runs both engines end to end, alternating which goes first (the machine is
shared and noisy), each writing its shards to a temporary folder. A Ray repetition is a whole
Ray Data job, so its time includes starting the workers and loading the encoder in each, as
the local engine's includes loading it once. Throughput is also given from the first shard's
arrival on, where start-up no longer counts.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from rich.table import Table

from pinlab_data import (
    SynthConfig,
    load_dataset,
    read_embeddings,
    save_dataset,
    synthesize,
)
from pinlab_models import CNNEncoder, EncoderConfig, seed_everything
from pinlab_tasks._output import stdout
from pinlab_tasks.embedding import Say, embed_dataset, ray_cluster
from pinlab_tasks.runs import RunLayout

TARGET_RATIO = 0.8
"""Ray's images/s over the local engine's, at least (issue 15)."""
WORLD_PINS = 5_000
"""Distinct images rendered; a larger bench repeats them (rendering costs more than encoding,
and an image's content does not change what encoding it costs)."""


def bench_embed(
    pins: int,
    repeats: int,
    workers: int,
    threads: int,
    shard_rows: int,
    seed: int,
    run_dir: Path | None = None,
    data_dir: Path | None = None,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Both engines `repeats` times each on one dataset: `data_dir` with the encoder of
    `run_dir`, or a world of `pins` pins and an untrained demo-size CNN (its weights do not
    change its cost). `threads` is the CPU budget: the local engine's torch threads, split
    between the Ray workers."""
    per_worker = max(1, threads // workers)
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-embed-") as tmp:
        if run_dir is None:
            say(f"building a world of {pins:,} pins and an untrained CNN")
            run, data = _bench_world(Path(tmp), pins, seed)
        else:
            run = RunLayout(run_dir)
            data = data_dir if data_dir is not None else run.data_dir()
        # Read before the cluster starts, so a run without an encoder fails in a second.
        encoder = CNNEncoder.load(run.encoder)
        n = int(load_dataset(data).pins.num_rows)
        times: dict[str, list[dict[str, Any]]] = {"local": [], "ray": []}
        load_before = os.getloadavg()
        with ray_cluster(None, workers * per_worker, say) as cluster:
            say(f"local Ray cluster up in {cluster.seconds:.1f} s")
            for r in range(repeats):
                order = ("local", "ray") if r % 2 == 0 else ("ray", "local")
                for engine in order:
                    result = embed_dataset(
                        run,
                        data,
                        engine=engine,  # type: ignore[arg-type]  # one of the two engines
                        out=Path(tmp) / f"{engine}-{r}",
                        workers=workers,
                        threads=threads if engine == "local" else per_worker,
                        shard_rows=shard_rows,
                        captions=False,
                        cluster=cluster,
                    )
                    times[engine].append(result)
                    rate = result["images_per_s"]
                    say(f"repeat {r + 1}/{repeats} {engine}: {rate:,.0f} images/s")
            cluster_start = cluster.seconds
        load_after = os.getloadavg()
        vectors = _compare(Path(tmp), repeats)
    summary = {engine: _summary(rows) for engine, rows in times.items()}
    ratio = summary["ray"]["images_per_s"] / summary["local"]["images_per_s"]
    after = [summary[e]["after_first_shard_images_per_s"] for e in ("ray", "local")]
    steady = after[0] / after[1] if None not in after else None
    return {
        "pins": n,
        "data": str(data) if run_dir is not None else f"synthetic ({WORLD_PINS:,} distinct images)",
        "encoder": {
            "arch": encoder.config.arch,
            "image_size": encoder.image_size,
            "dim": encoder.embedding_dim,
            "model_id": encoder.model_id,
        },
        "repeats": repeats,
        "shard_rows": shard_rows,
        "threads": threads,
        "workers": workers,
        "threads_per_worker": per_worker,
        "cluster_start_s": cluster_start,
        "local": summary["local"],
        "ray": summary["ray"],
        "ratio": ratio,
        "ratio_after_first_shard": steady,
        "ray_with_cluster_start_images_per_s": n
        / (cluster_start + statistics.median(r["seconds"] for r in times["ray"])),
        "vectors": vectors,
        "target": {"ratio": TARGET_RATIO, "met": ratio >= TARGET_RATIO and vectors["identical"]},
        "machine": {
            "cpus": os.cpu_count(),
            "load_before": list(load_before),
            "load_after": list(load_after),
            "torch_threads": torch.get_num_threads(),
        },
    }


def _bench_world(root: Path, pins: int, seed: int) -> tuple[RunLayout, Path]:
    """A dataset of `pins` pins whose images repeat a synthetic world's, and a run holding an
    untrained CNN of the demo's default size."""
    config = SynthConfig(num_pins=min(pins, WORLD_PINS), num_users=50, seed=seed)
    manifest, world_pins, users, interactions, images, _ = synthesize(config)
    rows = np.arange(pins) % world_pins.num_rows
    table = world_pins.take(pa.array(rows)).set_column(
        0, "pin_id", pa.array(np.arange(pins, dtype=np.int64))
    )
    table = table.set_column(
        table.schema.get_field_index("image_row"), "image_row", pa.array(np.arange(pins))
    )
    data = root / "data"
    save_dataset(
        data,
        manifest.model_copy(update={"num_pins": pins, "name": "bench-embed"}),
        table,
        users,
        interactions,
        images=images[world_pins.column("image_row").to_numpy()[rows]],
    )
    run = RunLayout(root / "run")
    seed_everything(seed)
    CNNEncoder(EncoderConfig(image_size=config.image_size)).save(run.encoder)
    return run, data


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    steady = [
        (r["pins"] - r["first_shard_rows"]) / (r["seconds"] - r["first_shard_s"])
        for r in rows
        if r["pins"] > r["first_shard_rows"]  # one shard: nothing after the first
    ]
    return {
        "seconds": [r["seconds"] for r in rows],
        "images_per_s_each": [r["images_per_s"] for r in rows],
        "images_per_s": statistics.median(r["images_per_s"] for r in rows),
        "first_shard_s": [r["first_shard_s"] for r in rows],
        "after_first_shard_images_per_s": statistics.median(steady) if steady else None,
    }


def _compare(root: Path, repeats: int) -> dict[str, Any]:
    """Every Ray repetition's vectors against the first local one's, exactly."""
    ids, reference = read_embeddings(root / "local-0")
    identical, worst = True, 0.0
    for r in range(repeats):
        for engine in ("local", "ray"):
            other_ids, other = read_embeddings(root / f"{engine}-{r}")
            same_ids = np.array_equal(ids, other_ids)
            identical &= same_ids and np.array_equal(reference, other)
            if same_ids and len(other):
                worst = max(worst, float(np.abs(reference - other).max()))
    return {"identical": identical, "max_abs_diff": worst, "compared": "exact (bit for bit)"}


def render_embed(payload: dict[str, Any]) -> None:
    table = Table(
        title=f"bench embed: {payload['pins']:,} pins, {payload['encoder']['arch']} "
        f"{payload['encoder']['image_size']}px -> {payload['encoder']['dim']}, "
        f"{payload['repeats']} runs each",
        title_justify="left",
    )
    for column in ("engine", "images/s", "each", "after 1st shard", "1st shard s"):
        table.add_column(column, justify="left" if column == "engine" else "right")
    for engine in ("local", "ray"):
        row = payload[engine]
        where = (
            f"ray ({payload['workers']} x {payload['threads_per_worker']} threads)"
            if engine == "ray"
            else f"local ({payload['threads']} threads)"
        )
        table.add_row(
            where,
            f"{row['images_per_s']:,.0f}",
            ", ".join(f"{v:,.0f}" for v in row["images_per_s_each"]),
            _rate(row["after_first_shard_images_per_s"]),
            ", ".join(f"{v:.1f}" for v in row["first_shard_s"]),
        )
    stdout.print(table)
    vectors = payload["vectors"]
    machine = payload["machine"]
    steady = payload["ratio_after_first_shard"]
    stdout.print(
        f"ray / local: {payload['ratio']:.2f} (after the first shard "
        f"{'-' if steady is None else f'{steady:.2f}'}); "
        f"cluster start {payload['cluster_start_s']:.1f} s, not counted "
        f"(with it: {payload['ray_with_cluster_start_images_per_s']:,.0f} images/s)"
    )
    stdout.print(
        f"vectors identical: {vectors['identical']} (max |diff| {vectors['max_abs_diff']:.3g}); "
        f"load average {machine['load_before'][0]:.1f} -> {machine['load_after'][0]:.1f} on "
        f"{machine['cpus']} CPUs"
    )
    target = payload["target"]
    verdict = "met" if target["met"] else "NOT met"
    stdout.print(f"target ray >= {target['ratio']}x local, same vectors: {verdict}")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"
