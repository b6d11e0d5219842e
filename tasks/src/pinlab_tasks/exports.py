"""`pinlab export onnx`: a run's image encoder, image-text tower and text tower as ONNX files.

The files go to RUN/onnx/ (`encoder`, `image_text` when the run is aligned, `text`; `.onnx`
float32, `.int8.onnx` quantized), each checked against eager PyTorch before it is renamed into
place; RUN/onnx/export.json records the checks. `--runtime onnx|onnx-int8` on `serve` and
`search` read them, refusing a file whose fingerprint is not the run's checkpoint's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from pinlab_data import load_dataset, write_json_atomic
from pinlab_models import (
    OnnxExport,
    PinlabModelError,
    Runtime,
    export_image_checkpoint,
    export_text_tower,
    load_image_encoder,
    load_image_text,
    load_text_encoder,
)
from pinlab_tasks._output import log
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual import pin_images, visual_split

EXPORT_FILE = "export.json"
CHECK_IMAGES = 512
"""Pins whose embeddings each export is compared on (a seeded sample of the catalogue)."""
CALIBRATION_IMAGES = 512
"""Training pins whose activations set the int8 ranges (never the held-out pins)."""
CHECK_TEXTS = 256
"""Distinct captions the text tower's export is compared on."""


def export_onnx(
    run: RunLayout, int8: bool, seed: int, threads: int | None = None
) -> dict[str, Any]:
    """Export the run's models to RUN/onnx/ (and to int8 with `int8`); returns what was
    written and how each file compared with eager PyTorch."""
    if not run.encoder.is_file():
        raise PinlabModelError(
            f"run {run.root} has no trained encoder ({run.encoder}) to export; train one with "
            f"`pinlab train visual --run {run.root}`"
        )
    ds = load_dataset(run.trained_data_dir())
    images = pin_images(ds)
    rng = np.random.default_rng(seed)
    check = np.sort(rng.choice(len(images), min(CHECK_IMAGES, len(images)), replace=False))
    train = visual_split(ds, seed).train
    calibration = (
        images[np.sort(rng.choice(train, min(CALIBRATION_IMAGES, len(train)), replace=False))]
        if int8
        else None
    )
    captions = sorted({c for c in ds.pins.column("caption").to_pylist() if c and c.strip()})
    texts = [captions[i] for i in sorted(rng.permutation(len(captions))[:CHECK_TEXTS])]
    started = time.perf_counter()
    root = str(run.root)
    files: list[OnnxExport] = export_image_checkpoint(
        run.encoder, "image-encoder", run.onnx, images[check], calibration, root, threads
    )
    if run.image_text.is_file():
        files += export_image_checkpoint(
            run.image_text, "image-text-tower", run.onnx, images[check], calibration, root, threads
        )
    files += export_text_tower(run.onnx, texts or ["a pin"], int8, root, threads)
    for exported in files:
        if not exported.within:
            log.warning(
                "%s is further from eager PyTorch than %s (min cosine %.4f); serve it with "
                "--runtime onnx instead, or compare with `pinlab bench infer --run %s`",
                exported.file, exported.bound, exported.agreement.min_cosine, run.root,
            )  # fmt: skip
    result: dict[str, Any] = {
        "run": root,
        "onnx_dir": str(run.onnx),
        "int8": int8,
        "seed": seed,
        "seconds": round(time.perf_counter() - started, 1),
        "files": [f.model_dump() for f in files],
    }
    write_json_atomic(run.onnx / EXPORT_FILE, result)
    run.log_step("export onnx", {"int8": int8, "seed": seed, "files": [f.file for f in files]})
    return result


def check_exports(run: RunLayout, runtimes: tuple[Runtime, ...]) -> str | None:
    """None when every model of the run loads on each of `runtimes`; else the first refusal."""
    try:
        for runtime in runtimes:
            load_image_encoder(run.encoder, runtime, run.onnx, threads=1)
            if run.image_text.is_file():
                load_image_text(run.image_text, runtime, run.onnx, threads=1)
            else:
                load_text_encoder(runtime, run.onnx, threads=1)
    except PinlabModelError as exc:
        return str(exc)
    return None
