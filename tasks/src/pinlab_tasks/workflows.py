"""The demo: the whole pipeline on a synthetic world, one call per stage.

The stages live by domain: `visual` (encoder, alignment), `recsys` (recommenders),
`queries` (index, search, recommend).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path
from typing import Any

import torch

from pinlab_data import (
    PinlabDataError,
    SynthConfig,
    describe_dataset,
    load_dataset,
    write_json_atomic,
    write_synth,
)
from pinlab_models import AlignConfig, TrainProgress
from pinlab_tasks.presets import PRESETS
from pinlab_tasks.queries import build_index, recommend, search
from pinlab_tasks.recsys import Say, eval_recommenders, train_recommender
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.visual import (
    eval_align,
    eval_visual,
    train_align,
    train_visual,
    visual_split,
)


def synth(out: Path, config: SynthConfig, overwrite: bool = False) -> dict[str, Any]:
    start = time.perf_counter()
    write_synth(out, config, overwrite=overwrite)
    return {
        "dataset": str(out),
        "seconds": round(time.perf_counter() - start, 2),
        **describe_dataset(load_dataset(out)),
    }


def _demo_align(
    run: RunLayout, config: AlignConfig, seed: int, device: str, progress: TrainProgress
) -> dict[str, Any]:
    trained = train_align(run, run.data, config, seed, device, progress)
    evaluation = eval_align(run)
    ds = load_dataset(run.data)
    query = ds.pins.column("caption")[int(visual_split(ds, seed).test[0])].as_py()
    return {
        "align": {
            "protocol": evaluation["protocol"],
            "relevance": evaluation["relevance"],
            "metrics": evaluation["metrics"],
            "train_seconds": round(trained["seconds"], 2),
            "model_id": trained["model_id"],
        },
        "search_text": search(run, k=5, text=query),
    }


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def demo(
    preset_name: str,
    out: Path,
    seed: int,
    device: str,
    progress: TrainProgress = True,
    align: bool = False,
    say: Say = lambda _: None,
) -> dict[str, Any]:
    """The whole pipeline on a synthetic world: data, encoder, recommenders, index, queries.

    `align` adds image-text alignment, its text metrics and a text search (about two more
    minutes on 2 CPU cores at the default preset).
    """
    start = time.perf_counter()
    preset = PRESETS[preset_name]
    if out.exists() and any(out.iterdir()):
        raise PinlabDataError(f"{out} already exists and is not empty; pass a new --out directory")
    run = RunLayout(out)
    synth_config = preset.synth.model_copy(update={"seed": seed})
    run.log_step(
        "demo", {"preset": preset_name, "seed": seed, "with_align": align, **preset.model_dump()}
    )
    say(f"generating the {preset_name} world")
    data = synth(run.data, synth_config, overwrite=True)
    say("training the image encoder")
    visual_train = train_visual(run, run.data, preset.encoder, seed, device, progress)
    visual = eval_visual(run, seed)
    for name, overrides in preset.recommenders.items():
        say(f"training recommender {name}")
        train_recommender(run, run.data, name, overrides, seed, device, progress)
    say("evaluating recommenders, building the index")
    rec = eval_recommenders(run)
    index = build_index(run)
    if align:
        say("aligning images to text")

    ds = load_dataset(run.data)
    query_pin = int(ds.pin_ids()[visual_split(ds, seed).test[0]])
    query_user = int(ds.user_ids()[0])
    result = {
        "run_dir": str(out),
        "preset": preset_name,
        "seed": seed,
        "data": {k: data[k] for k in ("num_pins", "num_users", "num_interactions")},
        "visual": {
            "protocol": visual["protocol"],
            "trained": visual["trained"],
            "untrained": visual["untrained"],
            "train_seconds": round(visual_train["seconds"], 2),
            "model_id": visual_train["model_id"],
        },
        "recommender": rec["models"],
        "best_recommender": rec["best"],
        "index": index,
        "search": search(run, k=5, pin=query_pin),
        "recommend": recommend(run, query_user, k=5),
        **(_demo_align(run, preset.align, seed, device, progress) if align else {}),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - start, 2),
    }
    write_json_atomic(out / "summary.json", result)
    return result
