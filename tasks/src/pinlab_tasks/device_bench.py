"""`pinlab bench device`: throughput of pinlab's own training and inference steps on one
device, so a GPU's figures and the CPU's come from the same code (README, "On a lent GPU").

Each figure times a real code path: the encoder recipe trainer in float32 and with bfloat16
autocast (CUDA only), `CNNEncoder.embed` in both precisions, the generator's guided
sampling (untrained weights: the cost does not depend on them), and SASRec epochs (full
softmax) on a leave-last-out training part.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pinlab_data import SynthConfig, interaction_log, load_dataset, save_dataset, synthesize
from pinlab_eval import ProtocolSplit, protocol_spec
from pinlab_models import (
    Conditioning,
    EncoderConfig,
    GeneratorConfig,
    GeneratorNet,
    RecipeConfig,
    TextToImage,
    TrainContext,
    build_recommender,
    resolve_device,
    train_with_recipe,
)
from pinlab_models._text import MINILM_DIM
from pinlab_tasks.recsys import split_for

Say = Callable[[str], None]
GENERATOR_CATEGORIES = 12


def _last_out(data_dir: Path) -> ProtocolSplit:
    return split_for(interaction_log(load_dataset(data_dir)), protocol_spec("leave-last-out"))


def bench_device(
    device: str,
    scale: float,
    seed: int,
    work: Path,
    data_dir: Path | None = None,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """Every figure on `device`; `scale` (0 < scale <= 1) shrinks the work for slow machines."""
    device = resolve_device(device)
    cuda = device.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def bf16() -> AbstractContextManager[Any]:
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()

    out: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "scale": scale,
    }
    # A given dataset is read and split first, so a bad one fails before minutes of work.
    sasrec_split = None if data_dir is None else _last_out(data_dir)
    manifest, pins, users, interactions, images, _ = synthesize(SynthConfig(seed=seed))
    labels = np.asarray(pins.column("category").to_pylist())
    epochs = max(2, round(3 * scale))

    say(f"encoder training, {epochs} epochs in each precision")
    encoder = None
    for mixed in (False, True) if cuda else (False,):
        config = EncoderConfig(epochs=epochs, patience=epochs)
        recipe = RecipeConfig(recipe="supcon", mixed_precision=mixed)
        ctx = TrainContext(run_dir=work / f"encoder-{mixed}", seed=seed, device=device,
                           progress=False)  # fmt: skip
        encoder, report = train_with_recipe(images, labels, config, recipe, ctx)
        seconds = min(r.seconds for r in report.history[1:])  # the first warms up
        out[f"encoder_train_images_per_s_{'bf16' if mixed else 'fp32'}"] = round(
            len(images) / seconds, 1
        )
    assert encoder is not None

    n = max(1024, int(100_000 * scale))
    batch = 4096 if cuda else 512
    say(f"embedding {n:,} images, batch {batch}")
    many = np.ascontiguousarray(np.resize(images, (n, *images.shape[1:])))
    encoder.embed(many[:batch], batch_size=batch)
    for mixed in (False, True) if cuda else (False,):
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            with bf16() if mixed else nullcontext():
                encoder.embed(many, batch_size=batch)
            sync()
            best = min(best, time.perf_counter() - start)
        out[f"embed_images_per_s_{'bf16' if mixed else 'fp32'}"] = round(n / best, 1)

    say("generator sampling, 25 guided steps")
    generator = GeneratorConfig()
    model = TextToImage(
        GeneratorNet(generator, GENERATOR_CATEGORIES), generator,
        [f"c{i}" for i in range(GENERATOR_CATEGORIES)], device,
    )  # fmt: skip
    model.sample(_conditioning(8, generator, device), steps=2, guidance=3.0, seed=seed)
    for count in (8, max(8, int(256 * scale))):
        cond = _conditioning(count, generator, device)
        start = time.perf_counter()
        model.sample(cond, steps=25, guidance=3.0, seed=seed, batch_size=256)
        sync()
        seconds = time.perf_counter() - start
        out[f"generate_{count}_seconds"] = round(seconds, 3)
        out[f"generate_{count}_images_per_s"] = round(count / seconds, 1)

    if data_dir is None:  # the synthetic world's own interactions
        data_dir = save_dataset(work / "world", manifest, pins, users, interactions, images)
    sasrec_epochs = max(2, round(4 * scale))
    say(f"SASRec, {sasrec_epochs} epochs")
    split = _last_out(data_dir) if sasrec_split is None else sasrec_split
    sasrec = build_recommender("sasrec", {"epochs": sasrec_epochs})
    ctx = TrainContext(run_dir=work / "sasrec", seed=seed, device=device, progress=False)
    report = sasrec.fit(split.valid.train, ctx, None)
    out["sasrec_data"] = str(data_dir)
    out["sasrec_epoch_seconds"] = [round(r.seconds, 2) for r in report.history]
    return out


def _conditioning(count: int, config: GeneratorConfig, device: str) -> Conditioning:
    """Random caption vectors: sampling costs the same whatever the prompt says."""
    gen = torch.Generator().manual_seed(0)
    tokens = config.text_tokens
    return Conditioning(
        torch.randn(count, tokens, MINILM_DIM, generator=gen),
        torch.ones(count, tokens, dtype=torch.bool),
        torch.randn(count, MINILM_DIM, generator=gen),
        torch.full((count,), GENERATOR_CATEGORIES),
        torch.ones(count, dtype=torch.bool),
    ).to(device)


def render_device(payload: dict[str, Any]) -> None:
    from rich.table import Table

    from pinlab_tasks._output import stdout

    table = Table(title=f"bench device: {payload['device']} (torch {payload['torch']})")
    table.add_column("figure")
    table.add_column("value")
    for key, value in payload.items():
        if key not in ("device", "torch"):
            table.add_row(key, str(value))
    stdout.print(table)
