"""`pinlab data`: make, check and summarise dataset directories."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from pinlab_data import (
    BAD_LINES_FILE,
    DEFAULT_MAX_PIXELS,
    ColumnMapping,
    ImageColumns,
    InteractionFilters,
    InteractionFormat,
    LoadReport,
    MovieLensName,
    OnBadLines,
    SequenceLayout,
    describe_dataset,
    fetch_movielens,
    load_dataset,
    load_images,
    load_interactions,
    load_movielens,
    load_sequences,
    validate_dataset,
)
from pinlab_tasks import visual, workflows
from pinlab_tasks._app import DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._output import busy, emit, stderr, stdout
from pinlab_tasks.presets import PRESETS
from pinlab_tasks.runs import RunLayout

app = typer.Typer(help="Make, load, check and describe datasets.", no_args_is_help=True)
load_app = typer.Typer(
    help="Convert data you have into a pinlab dataset (check it with `pinlab data validate`).",
    no_args_is_help=True,
)
app.add_typer(load_app, name="load")

DataDir = Annotated[Path, typer.Argument(help="A pinlab dataset directory.")]
OutDir = Annotated[Path, typer.Option("--out", help="Dataset directory to create.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace an existing dataset.")]
MinRating = Annotated[
    float | None,
    typer.Option(
        "--min-rating", help="Filter 1: keep ratings >= X (ratings to implicit positives)."
    ),
]
Dedupe = Annotated[
    bool,
    typer.Option(
        "--dedupe", help="Filter 2: keep the earliest interaction of each user-item pair."
    ),
]
KCore = Annotated[
    int | None,
    typer.Option(
        "--k-core", min=1, help="Filter 3: drop users and items with < K interactions, repeatedly."
    ),
]
BadLinesOpt = Annotated[
    OnBadLines,
    typer.Option(
        "--on-bad-lines",
        help=f"error: stop at the first; skip: drop them; report: drop them, list them in "
        f"OUT/{BAD_LINES_FILE}.",
    ),
]
LOAD_WRITES = "OUT/{dataset.json, pins/users/interactions.parquet}"


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option("--out", help="Dataset directory to create.")],
    preset: Annotated[
        Literal["tiny", "default"], typer.Option(help="Base sizes, from the demo presets.")
    ] = "default",
    pins: Annotated[int | None, typer.Option(help="Number of pins (20..200000).")] = None,
    users: Annotated[int | None, typer.Option(help="Number of users.")] = None,
    categories: Annotated[int | None, typer.Option(help="Number of categories (2..16).")] = None,
    image_size: Annotated[int | None, typer.Option(help="Image side in pixels.")] = None,
    seed: SeedOpt = None,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing dataset.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Generate a seeded synthetic pin world.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet, images.npy, truth.npz}.
    """
    updates: dict[str, Any] = {
        "num_pins": pins,
        "num_users": users,
        "num_categories": categories,
        "image_size": image_size,
        "seed": settings().seed if seed is None else seed,
    }
    base = PRESETS[preset].synth
    config = base.model_validate(
        base.model_dump() | {k: v for k, v in updates.items() if v is not None}
    )
    result = workflows.synth(out, config, overwrite=overwrite)
    emit(result, as_json, lambda: _render_description(result))


@app.command("validate")
def validate(path: DataDir, as_json: JsonFlag = False) -> None:
    """Check types, dangling ids, duplicates, empty users and timestamps. Exit 2 on errors."""
    report = validate_dataset(path)
    payload = {"ok": report.ok, **report.model_dump()}

    def render() -> None:
        table = Table(title=f"{path}: {'valid' if report.ok else 'INVALID'}", title_justify="left")
        for column in ("severity", "code", "where", "message"):
            table.add_column(column)
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{style}]{p.severity}[/]", p.code, p.where, p.message)
        stdout.print(table if report.problems else f"{path}: valid, no problems found")

    emit(payload, as_json, render)
    if not report.ok:
        raise typer.Exit(2)


@app.command("describe")
def describe(path: DataDir, as_json: JsonFlag = False) -> None:
    """Counts, categories, activity and time range of a dataset."""
    result = describe_dataset(load_dataset(path))
    emit(result, as_json, lambda: _render_description(result))


def _render_description(result: dict[str, Any]) -> None:
    table = Table(show_header=False, title="dataset", title_justify="left")
    for key, value in result.items():
        table.add_row(key, str(value))
    stdout.print(table)


@load_app.command("movielens")
def load_movielens_command(
    source: Annotated[
        Path, typer.Argument(help="A MovieLens folder or .zip (any size, 100K to 32M).")
    ],
    out: OutDir,
    min_rating: MinRating = None,
    dedupe: Dedupe = False,
    k_core: KCore = None,
    overwrite: Overwrite = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert a MovieLens download from GroupLens, read straight from its folder or .zip.

    Movies become pins captioned "Title (Year) | Genres", ratings become "rating" events.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet}.
    """
    filters = _filters(min_rating, dedupe, k_core)
    with busy(f"converting {source}", as_json):
        report = load_movielens(source, out, filters=filters, overwrite=overwrite)
    emit(report.model_dump(), as_json, lambda: _render_load(report))


@load_app.command("interactions")
def load_interactions_command(
    source: Annotated[
        Path,
        typer.Argument(
            help="A CSV, TSV or Parquet log (.gz or .bz2 too), or a folder of Parquet part "
            "files (Spark's, Hive's: read in path order)."
        ),
    ],
    out: OutDir,
    user_col: Annotated[str, typer.Option("--user-col", help="Column of user ids.")] = "user_id",
    item_col: Annotated[str, typer.Option("--item-col", help="Column of item ids.")] = "item_id",
    time_col: Annotated[
        str | None,
        typer.Option(
            "--time-col",
            help="Column of times: unix s or ms, ISO 8601, or a Parquet timestamp, date or "
            "duration (default: 'timestamp' if there, else the row order).",
        ),
    ] = None,
    rating_col: Annotated[
        str | None, typer.Option("--rating-col", help="Column of ratings (the weights).")
    ] = None,
    text_col: Annotated[
        str | None, typer.Option("--text-col", help="Column of item text (pin captions).")
    ] = None,
    category_col: Annotated[
        str | None, typer.Option("--category-col", help="Column of item categories.")
    ] = None,
    file_format: Annotated[
        InteractionFormat | None,
        typer.Option("--format", help="csv, tsv or parquet (default: from the file name)."),
    ] = None,
    on_bad_lines: BadLinesOpt = "error",
    min_rating: MinRating = None,
    dedupe: Dedupe = False,
    k_core: KCore = None,
    overwrite: Overwrite = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert an interaction log (CSV, TSV or Parquet); ids of any kind get dense ids.

    The log's own ids are kept as external_id. A folder is read as Parquet part files: every
    .parquet or .pq file below it, in path order, but _-prefixed and hidden ones (_SUCCESS);
    key=value folder names are not read as columns.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet, bad_lines.csv with report}.
    """
    columns = ColumnMapping(
        user=user_col,
        item=item_col,
        time=time_col,
        rating=rating_col,
        text=text_col,
        category=category_col,
    )
    with busy(f"converting {source}", as_json):
        report = load_interactions(
            source,
            out,
            columns=columns,
            file_format=file_format,
            on_bad_lines=on_bad_lines,
            filters=_filters(min_rating, dedupe, k_core),
            overwrite=overwrite,
        )
    emit(report.model_dump(), as_json, lambda: _render_load(report))


@load_app.command("sequences")
def load_sequences_command(
    source: Annotated[
        Path,
        typer.Argument(help="`user item` or `user item item ...` lines, items in time order."),
    ],
    out: OutDir,
    layout: Annotated[
        SequenceLayout,
        typer.Option(
            "--layout",
            help="user-item (SASRec's files), user-items (S3-Rec/ICLRec's Amazon files), or "
            "auto: read from the first lines.",
        ),
    ] = "auto",
    on_bad_lines: BadLinesOpt = "error",
    min_rating: MinRating = None,
    dedupe: Dedupe = False,
    k_core: KCore = None,
    overwrite: Overwrite = False,
    as_json: JsonFlag = False,
) -> None:
    """Convert a sequence file (SASRec's or ICLRec's layout); a user's k-th item gets time k.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet, bad_lines.csv with report}.
    """
    with busy(f"converting {source}", as_json):
        report = load_sequences(
            source,
            out,
            layout=layout,
            on_bad_lines=on_bad_lines,
            filters=_filters(min_rating, dedupe, k_core),
            overwrite=overwrite,
        )
    emit(report.model_dump(), as_json, lambda: _render_load(report))


@load_app.command("images")
def load_images_command(
    source: Annotated[
        Path,
        typer.Argument(help="A folder with one sub-folder per class, or a CSV/Parquet manifest."),
    ],
    out: OutDir,
    size: Annotated[
        int, typer.Option("--size", help="Side of the square images stored (8..512).")
    ] = 64,
    path_col: Annotated[
        str, typer.Option("--path-col", help="Manifest column of image paths.")
    ] = "path",
    id_col: Annotated[
        str | None, typer.Option("--id-col", help="Manifest column of pin ids (default pin_id).")
    ] = None,
    caption_col: Annotated[
        str | None,
        typer.Option("--caption-col", help="Manifest column of captions (default caption)."),
    ] = None,
    label_col: Annotated[
        str | None,
        typer.Option("--label-col", help="Manifest column of labels (default label or labels)."),
    ] = None,
    max_pixels: Annotated[
        int,
        typer.Option("--max-pixels", help="Larger images are skipped as decompression bombs."),
    ] = DEFAULT_MAX_PIXELS,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, help="Decoding processes (default: cores).")
    ] = None,
    overwrite: Overwrite = False,
    as_json: JsonFlag = False,
) -> None:
    """Decode an image collection once into a dataset's packed images (EXIF-rotated RGB).

    Unusable files (empty, corrupt, truncated, other formats, bombs) are skipped and listed.

    Writes: OUT/{dataset.json, pins/users/interactions.parquet, images.npy, skipped_images.csv}.
    """
    columns = ImageColumns(path=path_col, pin_id=id_col, caption=caption_col, label=label_col)
    with busy(f"decoding {source}", as_json):
        report = load_images(
            source,
            out,
            size=size,
            columns=columns,
            max_pixels=max_pixels,
            workers=workers,
            overwrite=overwrite,
        )

    def render() -> None:
        table = Table(show_header=False, title=f"dataset {report.dataset}", title_justify="left")
        for key in ("layout", "source", "files", "loaded", "skipped", "image_size", "workers"):
            table.add_row(key, str(getattr(report, key)))
        for reason, count in report.skipped_by_reason.items():
            table.add_row(f"  skipped: {reason}", str(count))
        table.add_row("categories", str(len(report.categories)))
        table.add_row("seconds", str(report.seconds))
        stdout.print(table)
        if report.skipped:
            stdout.print(f"skipped files are listed in {report.skipped_report}")

    emit(report.model_dump(), as_json, render)


# pinlab new: loader commands go above this line (`pinlab new loader KIND`)


@app.command("dedupe")
def dedupe(
    path: DataDir,
    run: Annotated[
        Path | None,
        typer.Option("--run", help="Confirm hash pairs with this run's encoder embeddings."),
    ] = None,
    max_distance: Annotated[
        int, typer.Option("--max-distance", help="pHash Hamming distance (of 64 bits) to link.")
    ] = 6,
    min_cosine: Annotated[
        float, typer.Option("--min-cosine", help="Embedding cosine a pair needs (with --run).")
    ] = 0.9,
    max_color_diff: Annotated[
        float,
        typer.Option(
            "--max-color-diff", help="Mean 0-255 difference of 8x8 colour thumbnails to link."
        ),
    ] = 12.0,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Cluster exact and near-duplicate images (perceptual hash, then embedding cosine).

    Writes: DATA/duplicates.json, or RUN/duplicates.json with --run.
    """
    layout = RunLayout(run) if run is not None else None
    with busy(f"hashing the images of {path}", as_json):
        report = visual.dedupe(
            path, layout, max_distance, min_cosine, max_color_diff, device or settings().device
        )

    def render() -> None:
        table = Table(
            title=f"{len(report.clusters)} duplicate clusters, {report.duplicates} extra "
            f"copies among {report.num_images} images",
            title_justify="left",
        )
        for column in ("pins", "size", "max bits apart", "min cosine"):
            table.add_column(column)
        for cluster in report.clusters[:20]:
            shown = ", ".join(map(str, cluster.pin_ids[:6])) + (
                " ..." if len(cluster.pin_ids) > 6 else ""
            )
            cosine = "-" if cluster.min_cosine is None else f"{cluster.min_cosine:.3f}"
            table.add_row(shown, str(len(cluster.pin_ids)), str(cluster.max_hash_distance), cosine)
        stdout.print(table)
        stdout.print(f"all clusters: {report.report}")

    emit(report.model_dump(), as_json, render)


@app.command("download")
def download(
    name: Annotated[MovieLensName, typer.Argument(help="Which MovieLens archive.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Dataset directory to create (default: ./NAME).")
    ] = None,
    cache: Annotated[
        Path | None,
        typer.Option("--cache", help="Where archives are kept (default: ~/.cache/pinlab)."),
    ] = None,
    min_rating: MinRating = None,
    dedupe: Dedupe = False,
    k_core: KCore = None,
    overwrite: Overwrite = False,
    as_json: JsonFlag = False,
) -> None:
    """Download a MovieLens archive from GroupLens (checksummed, resumable), then convert it.

    Writes: CACHE/ml-*.zip and OUT/{dataset.json, pins/users/interactions.parquet}.
    """
    folder = cache or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pinlab"
    with _download_bar(name, as_json) as progress:
        report = fetch_movielens(
            name,
            out or Path(name),
            cache=folder,
            progress=progress,
            filters=_filters(min_rating, dedupe, k_core),
            overwrite=overwrite,
        )
    emit(report.model_dump(), as_json, lambda: _render_load(report))


def _filters(min_rating: float | None, dedupe: bool, k_core: int | None) -> InteractionFilters:
    return InteractionFilters(min_rating=min_rating, dedupe=dedupe, k_core=k_core)


@contextmanager
def _download_bar(name: str, quiet: bool) -> Iterator[Callable[[int, int | None], None] | None]:
    if quiet:
        yield None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=stderr, transient=True) as bar:
        task = bar.add_task(name, total=None)

        def update(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _render_load(report: LoadReport) -> None:
    table = Table(show_header=False, title=f"dataset {report.dataset}", title_justify="left")
    for key in ("kind", "layout", "source", "rows_read", "bad_lines"):
        table.add_row(key, str(getattr(report, key)))
    for step in report.filters:
        table.add_row(
            f"filter {step.name} {step.value}", f"{step.rows_before} -> {step.rows_after}"
        )
    for key in ("num_pins", "num_users", "num_interactions", "seconds"):
        table.add_row(key, str(getattr(report, key)))
    stdout.print(table)
