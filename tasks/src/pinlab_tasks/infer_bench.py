"""`pinlab bench infer`: eager PyTorch against ONNX Runtime (float32, int8) on the same inputs.

Builds a small world (or reads a run), exports it to ONNX (`exports.export_onnx`, float32 and
int8) unless the run's exports are current, then measures the image encoder and the text
tower: items per second at each batch size, every runtime on the same inputs with the same
thread count. Rounds alternate the runtimes (the order rotates each round), and the speed-up
over eager is taken within each round, its median reported, so drift on a shared machine hits
all runtimes alike. Quality on the same held-out queries: visual search recall@1/@10 (`eval
visual`'s protocol) per runtime, text-to-image recall@10 when the run is aligned, and how far
each runtime's embeddings are from eager's (max |diff|, cosine).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from pinlab_data import Dataset, PinlabDataError, SynthConfig, load_dataset
from pinlab_eval import evaluate_retrieval, evaluate_text_to_image
from pinlab_models import (
    AlignConfig,
    EncoderConfig,
    Runtime,
    agreement,
    load_image_encoder,
    load_image_text,
    load_text_encoder,
)
from pinlab_tasks import exports, visual, workflows
from pinlab_tasks._output import stdout
from pinlab_tasks.runs import RunLayout, trained_seed
from pinlab_tasks.visual import (
    VISUAL_KS,
    captioned,
    pin_images,
    pin_labels,
    text_relevance,
    visual_split,
    visual_test_rows,
)

RUNTIMES: tuple[Runtime, ...] = ("torch", "onnx", "onnx-int8")
TARGET_SPEEDUP = 1.5
"""Issue 15: ONNX or int8 inference at least 1.5x eager PyTorch's CPU image throughput..."""
TARGET_RECALL_DROP = 0.01
"""...with visual search recall@10 lower by at most 0.01."""
IMAGES_PER_PASS = 1024
TEXTS_PER_PASS = 256
"""Items one timed pass embeds (in batches of the batch size; more when a batch is larger)."""
ENCODER = EncoderConfig(epochs=5, patience=3)
"""The default encoder architecture (what `pinlab demo` serves), briefly trained: the epochs
change its weights, not what an image costs."""
ALIGN = AlignConfig(epochs=3, patience=2)

Embed = Callable[[Any, int], np.ndarray]
"""Embeds a batch of inputs (images or texts) in chunks of the given batch size."""


def build_world(out: Path, pins: int, seed: int) -> RunLayout:
    """A synthetic world with a briefly trained encoder and image-text alignment."""
    run = RunLayout(out)
    config = SynthConfig(num_pins=pins, num_users=max(200, pins // 10), seed=seed)
    run.log_step("bench infer world", {"synth": config.model_dump(), "seed": seed})
    workflows.synth(run.data, config, overwrite=True)
    visual.train_visual(run, run.data, ENCODER, seed, "cpu", progress=False)
    visual.train_align(run, run.data, ALIGN, seed, "cpu", progress=False)
    return run


def parse_batch_sizes(text: str) -> tuple[int, ...]:
    """'1,32,256' -> (1, 32, 256); each a positive integer up to 4096."""
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        sizes = ()
    if not sizes or any(not 1 <= size <= 4096 for size in sizes):
        raise PinlabDataError(
            f"--batch-sizes takes comma-separated integers in 1..4096, like 1,32,256; got {text!r}"
        )
    return sizes


def time_runtimes(
    embed: dict[Runtime, Embed], inputs: np.ndarray | list[str], batch_size: int, rounds: int
) -> dict[str, Any]:
    """Items per second of each runtime over the same `inputs`, `rounds` alternated passes.

    Wall-clock rates are what a caller sees; rates per CPU-second (all of the process's
    threads) say what the work costs, which other processes on the cores move far less.
    """
    names = list(embed)
    for name in names:  # warm up: first calls allocate and plan
        embed[name](inputs[:batch_size], batch_size)
    wall: dict[Runtime, list[float]] = {name: [] for name in names}
    cpu: dict[Runtime, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started, cpu_started = time.perf_counter(), time.process_time()
            embed[name](inputs, batch_size)
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(max(time.process_time() - cpu_started, 1e-9))
    row: dict[str, Any] = {"batch_size": batch_size, "items": len(inputs)}
    for name in names:
        rates = [len(inputs) / s for s in wall[name]]
        row[name] = {
            "per_s": round(statistics.median(rates), 1),
            "min_per_s": round(min(rates), 1),
            "max_per_s": round(max(rates), 1),
            "per_cpu_s": round(statistics.median(len(inputs) / s for s in cpu[name]), 1),
        }
        if name != "torch":
            ratios = [t / s for t, s in zip(wall["torch"], wall[name], strict=True)]
            cpu_ratios = [t / s for t, s in zip(cpu["torch"], cpu[name], strict=True)]
            row[name]["speedup"] = round(statistics.median(ratios), 2)
            row[name]["cpu_speedup"] = round(statistics.median(cpu_ratios), 2)
    return row


def _image_quality(
    run: RunLayout, ds: Dataset, images: np.ndarray, seed: int, embed: dict[Runtime, Embed]
) -> dict[str, Any]:
    protocol, test = visual_test_rows(run, ds, seed)
    labels = pin_labels(ds)[test]
    vectors = {name: f(images[test], 512) for name, f in embed.items()}
    rows: dict[str, Any] = {"protocol": protocol, "queries": len(test)}
    for name, emb in vectors.items():
        metrics = evaluate_retrieval(emb, labels, ks=VISUAL_KS, protocol=protocol).metrics
        rows[name] = {
            "recall@1": metrics["recall@1"],
            "recall@10": metrics["recall@10"],
            "vs_torch": agreement(emb, vectors["torch"]).model_dump(),
        }
    return rows


def _text_quality(
    run: RunLayout, ds: Dataset, images: np.ndarray, texts: list[str], runtimes: Sequence[Runtime]
) -> dict[str, Any]:
    """Text-to-image recall@k on the alignment's held-out pins, per runtime (both towers)."""
    seed = trained_seed(run.visual / "align" / "train.json", "pinlab train align")
    test = captioned(ds, visual_split(ds, seed).test)
    keys, relevance = text_relevance(ds, test)
    captions = [texts[r] for r in test]
    rows: dict[str, Any] = {"relevance": relevance, "queries": len(test)}
    reference: np.ndarray | None = None
    for name in runtimes:
        model = load_image_text(run.image_text, name, run.onnx)
        text_vectors = model.embed_texts(captions)
        reference = text_vectors if reference is None else reference
        report = evaluate_text_to_image(
            text_vectors, keys, model.embed_images(images[test]), keys, ks=VISUAL_KS
        )
        rows[name] = {
            **{f"text_{k}": v for k, v in report.metrics.items() if k.startswith("recall")},
            "vs_torch": agreement(text_vectors, reference).model_dump(),
        }
    return rows


def check_targets(speed: list[dict[str, Any]], quality: dict[str, Any]) -> dict[str, Any]:
    """Per runtime: its smallest image speed-up over the batch sizes, its recall@10 change."""
    checks: dict[str, Any] = {}
    for name in RUNTIMES[1:]:
        slowest = min(row[name]["speedup"] for row in speed)
        drop = round(quality["torch"]["recall@10"] - quality[name]["recall@10"], 4)
        checks[f"image_{name}"] = {
            "min_speedup": slowest,
            "speedup_target": TARGET_SPEEDUP,
            "recall@10_drop": drop,
            "drop_target": TARGET_RECALL_DROP,
            "met": slowest >= TARGET_SPEEDUP and drop <= TARGET_RECALL_DROP,
        }
    checks["image_onnx_or_int8"] = {"met": any(c["met"] for c in checks.values())}
    return checks


def bench_infer(
    pins: int,
    batch_sizes: tuple[int, ...],
    rounds: int,
    seed: int,
    run_dir: Path | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """Build (or reuse) a run, export it, and compare the runtimes' speed and quality."""
    with tempfile.TemporaryDirectory(prefix="pinlab-bench-infer-") as tmp:
        if run_dir is None:
            say(f"building a world of {pins:,} pins (encoder, image-text alignment)")
            started = time.perf_counter()
            run = build_world(Path(tmp) / "run", pins, seed)
            build_seconds: float | None = round(time.perf_counter() - started, 1)
        else:
            run, build_seconds = RunLayout(run_dir), None
        stale = exports.check_exports(run, RUNTIMES[1:])
        if stale is not None:
            say(f"exporting to ONNX, float32 and int8 ({stale})")
            exports.export_onnx(run, int8=True, seed=seed)
        ds = load_dataset(run.data_dir())
        images = pin_images(ds)
        captions = [c if c.strip() else "a pin" for c in ds.pins.column("caption").to_pylist()]
        threads = torch.get_num_threads()
        encoders = {name: load_image_encoder(run.encoder, name, run.onnx) for name in RUNTIMES}
        texts = {name: load_text_encoder(name, run.onnx) for name in RUNTIMES}
        embed_images: dict[Runtime, Embed] = {n: e.embed for n, e in encoders.items()}
        embed_texts: dict[Runtime, Embed] = {n: e.encode for n, e in texts.items()}
        encoder = encoders["torch"]
        payload: dict[str, Any] = {
            "world": {
                "pins": len(images),
                "run": str(run_dir) if run_dir is not None else None,
                "build_seconds": build_seconds,
                "exported": stale is not None,
                "encoder": {
                    "model_id": encoder.model_id,
                    "image_size": encoder.image_size,
                    "embedding_dim": encoder.embedding_dim,
                },
                "cpu_cores": os.cpu_count(),
                "threads": threads,
                "rounds": rounds,
                # Other processes share the cores: the load average says how much.
                "load_average_before": round(os.getloadavg()[0], 2),
            }
        }
        say(f"timing the image encoder at batch sizes {batch_sizes}")
        payload["images"] = [
            time_runtimes(
                embed_images,
                images[np.arange(max(IMAGES_PER_PASS, size)) % len(images)],
                size,
                rounds,
            )
            for size in batch_sizes
        ]
        say(f"timing the text tower at batch sizes {batch_sizes}")
        payload["texts"] = [
            time_runtimes(
                embed_texts,
                [captions[i % len(captions)] for i in range(max(TEXTS_PER_PASS, size))],
                size,
                rounds,
            )
            for size in batch_sizes
        ]
        say("visual search quality on the held-out pins, per runtime")
        payload["image_quality"] = _image_quality(run, ds, images, seed, embed_images)
        if run.image_text.is_file():
            say("text-to-image quality on the alignment's held-out pins, per runtime")
            payload["text_quality"] = _text_quality(run, ds, images, captions, RUNTIMES)
        payload["world"]["load_average_after"] = round(os.getloadavg()[0], 2)
        payload["targets"] = check_targets(payload["images"], payload["image_quality"])
    return payload


def render_infer(payload: dict[str, Any]) -> None:
    world = payload["world"]
    encoder = world["encoder"]
    stdout.print(
        f"{world['pins']:,} pins, encoder {encoder['model_id']} ({encoder['image_size']}px -> "
        f"{encoder['embedding_dim']}-d), {world['threads']} threads on {world['cpu_cores']} "
        f"cores, {world['rounds']} alternated rounds, load average {world['load_average_before']}"
        f" -> {world['load_average_after']}"
    )
    for key, what in (("images", "images/s"), ("texts", "texts/s")):
        table = Table(title=f"{what} (median; speed-up over torch per round)", title_justify="left")
        table.add_column("batch", justify="right")
        for name in RUNTIMES:
            table.add_column(name, justify="right")
        for row in payload[key]:
            cells = [str(row["batch_size"])]
            for name in RUNTIMES:
                speed = f" ({row[name]['speedup']}x)" if "speedup" in row[name] else ""
                cells.append(f"{row[name]['per_s']:,.0f}{speed}")
            table.add_row(*cells)
        stdout.print(table)
    quality = payload["image_quality"]
    table = Table(
        title=f"visual search, {quality['protocol']} ({quality['queries']} queries)",
        title_justify="left",
    )
    for column in ("runtime", "recall@1", "recall@10", "min cos vs torch", "max |diff|"):
        table.add_column(column, justify="left" if column == "runtime" else "right")
    for name in RUNTIMES:
        row = quality[name]
        table.add_row(
            name,
            f"{row['recall@1']:.4f}",
            f"{row['recall@10']:.4f}",
            f"{row['vs_torch']['min_cosine']:.5f}",
            f"{row['vs_torch']['max_abs_diff']:.1e}",
        )
    stdout.print(table)
    if "text_quality" in payload:
        text = payload["text_quality"]
        parts = [
            f"{name} {row['text_recall@10']:.4f} (min cos {row['vs_torch']['min_cosine']:.4f})"
            for name, row in ((name, text[name]) for name in RUNTIMES)
        ]
        stdout.print(f"text-to-image recall@10 ({text['queries']} queries): " + ", ".join(parts))
    for name, check in payload["targets"].items():
        mark = "[green]met[/]" if check["met"] else "[red]not met[/]"
        detail = ", ".join(f"{k} {v}" for k, v in check.items() if k != "met")
        stdout.print(f"target {name}: {mark} {detail}")
