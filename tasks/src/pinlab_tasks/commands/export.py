"""`pinlab export`: a run's models in formats other runtimes read."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from pinlab_tasks import exports
from pinlab_tasks._app import JsonFlag, SeedOpt, settings
from pinlab_tasks._output import busy, emit, stdout
from pinlab_tasks.runs import RunLayout
from pinlab_tasks.tracking import tracked

app = typer.Typer(help="Export a run's models for other runtimes.", no_args_is_help=True)


@app.command("onnx")
def onnx(
    run: Annotated[Path, typer.Option("--run", help="Run directory with a trained encoder.")],
    int8: Annotated[
        bool,
        typer.Option(
            "--int8/--no-int8",
            help="Also write int8 files: the image models statically quantized (calibrated on "
            "the run's training images), the text tower dynamically.",
        ),
    ] = False,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Export the run's image encoder, its image-text tower (if aligned) and the MiniLM text
    tower to ONNX, each checked against eager PyTorch before it is written.

    Every file records the SHA-256 of the weights it came from and its input spec in its
    metadata; `--runtime onnx|onnx-int8` on `serve` and `search` refuse a file whose fingerprint
    is not the run's. Use the seed the encoder was trained with: it keeps the held-out pins out
    of the int8 calibration.
    Writes: RUN/onnx/{encoder,image_text,text}[.int8].onnx, RUN/onnx/export.json.
    """
    seed = settings().seed if seed is None else seed
    layout = RunLayout(run)
    with (
        tracked("export onnx", {"run": str(run), "int8": int8, "seed": seed}, run_dir=run) as tr,
        busy(f"exporting {run} to ONNX", as_json),
    ):
        result = exports.export_onnx(layout, int8, seed)
        tr.log_metrics(
            {
                f"{Path(f['file']).name}.{key}": f["agreement"][key]
                for f in result["files"]
                for key in ("max_abs_diff", "min_cosine")
            }
        )
        tr.log_artifact(layout.onnx / exports.EXPORT_FILE)

    def render() -> None:
        table = Table(title=f"ONNX exports of {run} ({result['seconds']} s)", title_justify="left")
        for column in ("file", "MiB", "max |diff|", "min cos", "check"):
            table.add_column(column, justify="left" if column in ("file", "check") else "right")
        for f in result["files"]:
            agree = f["agreement"]
            table.add_row(
                Path(f["file"]).name,
                f"{f['bytes'] / 2**20:.1f}",
                f"{agree['max_abs_diff']:.1e}",
                f"{agree['min_cosine']:.4f}",
                f["bound"] if f["within"] else f"[red]not {f['bound']}[/]",
            )
        stdout.print(table)

    emit(result, as_json, render)
