"""`pinlab generate`: pin images from a text prompt, with the run's trained generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pinlab_tasks import generative
from pinlab_tasks._app import AutoguidanceOpt, DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, stdout
from pinlab_tasks.runs import RunLayout


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)


def generate(
    run: Annotated[
        Path, typer.Option("--run", help="Run directory with a generator (`train generator`).")
    ],
    text: Annotated[str, typer.Option("--text", help="What to draw (1..200 characters).")],
    out: Annotated[Path, typer.Option("--out", help="Directory for the PNG files (created).")],
    n: Annotated[int, typer.Option("-n", "--n", help="How many images (1..64).")] = 8,
    steps: Annotated[int, typer.Option("--steps", help="Sampling steps (1..200).")] = 25,
    guidance: Annotated[
        float,
        typer.Option("--guidance", help="Classifier-free guidance scale (0..20; 1 is none)."),
    ] = 3.0,
    autoguidance: AutoguidanceOpt = None,
    category: Annotated[
        str | None,
        typer.Option(
            "--category",
            help="Also condition on this category of the dataset (default: the one the "
            "generator's caption prior infers from the text, if it is sure).",
        ),
    ] = None,
    infer_category: Annotated[
        bool,
        typer.Option(
            "--infer-category/--no-infer-category",
            help="Without --category, condition on the category the caption prior infers.",
        ),
    ] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Generate pin images for a prompt; each PNG's metadata says it was generated, by which
    model, from which prompt and seed. The same seed gives the same images.

    Writes: OUT/PROMPT-sSEED-II.png.
    """
    s = settings()
    result = generative.generate(
        RunLayout(run),
        text,
        n=n,
        steps=steps,
        guidance=guidance,
        seed=s.seed if seed is None else seed,
        out=out,
        category=category,
        device=device or s.device,
        autoguidance=autoguidance,
        infer_category=infer_category,
    )

    def render() -> None:
        stdout.print(
            f"generated {result['n']} images in {result['seconds']:.2f} s "
            f"({result['images_per_s']} images/s) with {result['model_id']}"
            + (f", category {result['category']}" if result["category"] else "")
            + (" (inferred from the text)" if result["category_inferred"] else "")
            + ":"
        )
        for path in result["files"]:
            stdout.print(f"  {path}")

    emit(result, as_json, render)
