"""`pinlab train`: fit the image encoder or a registered recommender into a run directory."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from pinlab_data import PinlabDataError
from pinlab_eval import protocol_spec
from pinlab_models import (
    AlignConfig,
    EncoderConfig,
    GeneratorConfig,
    PinlabModelError,
    Recipe,
    RecipeConfig,
    build_recommender,
    check_data_parallel,
    recommender_names,
)
from pinlab_tasks import distributed, generative, recsys
from pinlab_tasks import visual as visual_workflows
from pinlab_tasks._app import (
    DeviceOpt,
    JsonFlag,
    ProtocolSeedOpt,
    SeedOpt,
    invocation,
    settings,
)
from pinlab_tasks._output import emit, stdout
from pinlab_tasks._progress import train_progress
from pinlab_tasks.recsys import DEFAULT_PROTOCOL
from pinlab_tasks.runs import RunLayout, new_run_dir
from pinlab_tasks.tracking import Tracker, log_fit, tracked

app = typer.Typer(help="Train models into a run directory.", no_args_is_help=True)
ConfigT = TypeVar("ConfigT", bound=BaseModel)

DataOpt = Annotated[Path, typer.Option("--data", help="Dataset directory to train on.")]
RunOpt = Annotated[
    Path | None,
    typer.Option("--run", help="Run directory (created). Default: RUNS_DIR/train-TIME."),
]


NprocOpt = Annotated[
    int,
    typer.Option(
        "--nproc-per-node",
        min=1,
        help="Processes on this node; above 1 (or with --nnodes) the command re-launches "
        "itself under torchrun and trains data-parallel (DDP: gloo on CPU, NCCL on GPU).",
    ),
]
NnodesOpt = Annotated[str, typer.Option("--nnodes", help="torchrun: nodes, N or MIN:MAX.")]
NodeRankOpt = Annotated[int, typer.Option("--node-rank", min=0, help="torchrun: this node.")]
RdzvBackendOpt = Annotated[
    str, typer.Option("--rdzv-backend", help="torchrun: rendezvous backend.")
]
RdzvEndpointOpt = Annotated[
    str | None,
    typer.Option("--rdzv-endpoint", help="torchrun: HOST:PORT every node can reach."),
]
RdzvIdOpt = Annotated[str, typer.Option("--rdzv-id", help="torchrun: the job's id.")]
RdzvTimeoutOpt = Annotated[
    int,
    typer.Option("--rdzv-timeout", min=1, help="torchrun: seconds to wait for every node."),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted training of --run from its last epoch "
        "(training_state.pt: weights, optimiser, generators); finished fits are not redone.",
    ),
]


def _run(path: Path | None, resume: bool = False) -> RunLayout:
    if resume and path is None:
        raise PinlabDataError("--resume continues a run: name it with --run DIR")
    return RunLayout(path or new_run_dir(settings().runs_dir, "train"))


@app.command("visual")
def visual(
    data: DataOpt,
    run: RunOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs.")] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the CNN encoder (supervised contrastive on categories). Writes: RUN/visual/."""
    s = settings()
    config = EncoderConfig() if epochs is None else EncoderConfig(epochs=epochs)
    layout = _run(run)
    seed = s.seed if seed is None else seed
    params = {"data": str(data), "seed": seed, "encoder": config.model_dump()}
    with tracked("train visual", params, run_dir=layout.root) as tracker:
        result = visual_workflows.train_visual(
            layout,
            data,
            config,
            seed,
            device or s.device,
            train_progress(not as_json, "train visual"),
        )
        _log_training(tracker, result, layout.visual)
    result["run_dir"] = str(layout.root)
    emit(result, as_json, lambda: _render(result))


@app.command("encoder")
def encoder(
    data: DataOpt,
    run: RunOpt = None,
    recipe: Annotated[
        Recipe,
        typer.Option(
            "--recipe", help="supcon (labels), simclr (no labels) or proxy-anchor (labels)."
        ),
    ] = "supcon",
    arch: Annotated[
        str, typer.Option("--arch", help="cnn (built in) or any timm model name.")
    ] = "cnn",
    pretrained: Annotated[
        bool | None,
        typer.Option(
            "--pretrained/--no-pretrained",
            help="timm weights from the cache or the Hub (default: on for timm, off for cnn).",
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs.")] = None,
    protocol: Annotated[
        visual_workflows.EncoderProtocol,
        typer.Option(
            "--protocol",
            help="held-out-pins (20% of pins) or unseen-classes (half the categories) held out.",
        ),
    ] = "held-out-pins",
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="EncoderConfig or RecipeConfig field as KEY=VALUE (JSON), repeatable."
        ),
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    nproc_per_node: NprocOpt = 1,
    nnodes: NnodesOpt = "1",
    node_rank: NodeRankOpt = 0,
    rdzv_backend: RdzvBackendOpt = "c10d",
    rdzv_endpoint: RdzvEndpointOpt = None,
    rdzv_id: RdzvIdOpt = "pinlab",
    rdzv_timeout: RdzvTimeoutOpt = 900,
    as_json: JsonFlag = False,
) -> None:
    """Train an image encoder of any architecture with a metric-learning recipe.

    Early stopping on validation recall@1 (pins of the training classes). With
    --nproc-per-node N, N processes train data-parallel at the same global batch (embeddings
    gathered, so the recipe's loss sees the whole batch).
    Writes: RUN/visual/{encoder.pt, encoder_untrained.pt, metrics.jsonl, train.json}.
    """
    s = settings()
    overrides = parse_settings(set_ or [])
    recipe_fields = {k: overrides.pop(k) for k in list(overrides) if k in RecipeConfig.model_fields}
    encoder_fields: dict[str, Any] = {
        "arch": arch,
        "pretrained": arch != "cnn" if pretrained is None else pretrained,
        **({} if epochs is None else {"epochs": epochs}),
        **overrides,
    }
    config = validated(EncoderConfig, encoder_fields)
    recipe_config = validated(RecipeConfig, {"recipe": recipe, **recipe_fields})
    layout = _run(run, resume)
    plan = distributed.Launch(
        nproc_per_node, nnodes, node_rank, rdzv_backend, rdzv_endpoint, rdzv_id, rdzv_timeout
    )
    if plan.wanted:
        processes = plan.nproc_per_node * int(nnodes) if nnodes.isdigit() else 1
        if config.batch_size % processes:
            raise PinlabModelError(
                f"batch_size {config.batch_size} does not split evenly over {processes} "
                f"processes (the recipes gather the whole batch); make it a multiple of "
                f"{processes} with --set batch_size=N"
            )
        raise typer.Exit(distributed.launch(plan, invocation(), layout.root))
    seed = s.seed if seed is None else seed
    with distributed.worker(layout, device or s.device) as layout:
        params = {
            "data": str(data),
            "seed": seed,
            "protocol": protocol,
            "encoder": config.model_dump(),
            "recipe": recipe_config.model_dump(),
        }
        with tracked("train encoder", params, run_dir=layout.root) as tracker:
            result = visual_workflows.train_encoder_recipe(
                layout,
                data,
                config,
                recipe_config,
                seed,
                device or settings().device,
                train_progress(not as_json, "train encoder"),
                protocol,
                resume=resume,
            )
            _log_training(tracker, result, layout.visual)
        result["run_dir"] = str(layout.root)
        emit(result, as_json, lambda: _render(result))


def validated(model: type[ConfigT], values: dict[str, Any]) -> ConfigT:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or "(settings)"
        raise PinlabModelError(
            f"{model.__name__} {field}: {first['msg']}; fields: {', '.join(model.model_fields)}"
        ) from exc


@app.command("align")
def align(
    run: Annotated[
        Path, typer.Option("--run", help="Run directory; its dataset unless --data is given.")
    ],
    data: Annotated[
        Path | None, typer.Option("--data", help="Dataset directory with captioned pins.")
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs.")] = None,
    arch: Annotated[
        str, typer.Option("--arch", help="Image tower: 'cnn' or any timm model name.")
    ] = "cnn",
    pretrained: Annotated[
        bool, typer.Option(help="timm only: start from pretrained weights (cached or online).")
    ] = False,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Align an image tower to the frozen MiniLM caption space (LiT-style), for text search.

    Writes: RUN/visual/image_text.pt, RUN/visual/align/{metrics.jsonl, train.json}.
    """
    s = settings()
    config = AlignConfig(arch=arch, pretrained=pretrained)
    if epochs is not None:
        config = config.model_copy(update={"epochs": epochs})
    layout = RunLayout(run)
    seed = s.seed if seed is None else seed
    params = {"data": str(data or "(run's dataset)"), "seed": seed, "align": config.model_dump()}
    with tracked("train align", params, run_dir=layout.root) as tracker:
        result = visual_workflows.train_align(
            layout,
            data,
            config,
            seed,
            device or s.device,
            train_progress(not as_json, "train align"),
        )
        _log_training(tracker, result, layout.visual / "align")
    result["run_dir"] = str(layout.root)
    emit(result, as_json, lambda: _render(result))


@app.command("generator")
def generator(
    data: DataOpt,
    run: RunOpt = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Maximum epochs.")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="GeneratorConfig field as KEY=VALUE (JSON), repeatable."),
    ] = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Train the text-to-image diffusion generator (diffusers UNet, MiniLM captions).

    Trains on the captioned training pins of the visual split (the pins `train visual` trains
    on); early-stops on the validation pins' denoising loss; keeps EMA weights.
    Writes: RUN/generator/{generator.pt, metrics.jsonl, train.json}.
    """
    s = settings()
    fields = parse_settings(set_ or []) | ({} if epochs is None else {"epochs": epochs})
    config = validated(GeneratorConfig, fields)
    layout = _run(run)
    seed = s.seed if seed is None else seed
    params = {"data": str(data), "seed": seed, "generator": config.model_dump()}
    with tracked("train generator", params, run_dir=layout.root) as tracker:
        result = generative.train_generator_run(
            layout,
            data,
            config,
            seed,
            device or s.device,
            train_progress(not as_json, "train generator"),
        )
        _log_training(tracker, result, layout.generator_dir)
    result["run_dir"] = str(layout.root)
    emit(result, as_json, lambda: _render(result))


@app.command("recommender")
def recommender(
    data: DataOpt,
    model: Annotated[str, typer.Option("--model", help="A registered recommender name.")] = "mf",
    run: RunOpt = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Model setting as KEY=VALUE (JSON value), repeatable."),
    ] = None,
    protocol: Annotated[
        str, typer.Option("--protocol", help="leave-last-out, stratified, temporal or cold-start.")
    ] = DEFAULT_PROTOCOL,
    protocol_seed: ProtocolSeedOpt = None,
    trials: Annotated[
        int,
        typer.Option(
            "--trials",
            min=0,
            help="Optuna trials on validation (0: the settings given, epochs early-stopped).",
        ),
    ] = 0,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    resume: ResumeOpt = False,
    nproc_per_node: NprocOpt = 1,
    nnodes: NnodesOpt = "1",
    node_rank: NodeRankOpt = 0,
    rdzv_backend: RdzvBackendOpt = "c10d",
    rdzv_endpoint: RdzvEndpointOpt = None,
    rdzv_id: RdzvIdOpt = "pinlab",
    rdzv_timeout: RdzvTimeoutOpt = 900,
    as_json: JsonFlag = False,
) -> None:
    """Choose settings on the protocol's validation split, then refit on its training part.

    The same pipeline as `bench recsys`: epochs (and, with --trials, the model's declared
    search space) are chosen on validation; the model is refitted on everything but the test
    targets, which `pinlab eval recommender` then measures. With --nproc-per-node N, N
    processes train both fits data-parallel at the same global batch (models trained in
    epochs of gradient steps; the others say why not).

    Writes: RUN/recommender/MODEL/{model.pt, train.json, metrics.jsonl, validation/}.
    """
    if model not in recommender_names():
        raise PinlabDataError(
            f"unknown model {model!r}; registered: {', '.join(recommender_names())}"
        )
    s = settings()
    layout = _run(run, resume)
    overrides = parse_settings(set_ or [])
    plan = distributed.Launch(
        nproc_per_node, nnodes, node_rank, rdzv_backend, rdzv_endpoint, rdzv_id, rdzv_timeout
    )
    if plan.wanted:
        build_recommender(model, overrides)  # bad settings fail here, before any worker starts
        check_data_parallel(model, overrides)
        if trials:
            raise PinlabDataError(
                "--trials searches settings one trial after another in one process; search "
                "without --nproc-per-node, then train the chosen settings (--set) data-parallel"
            )
        raise typer.Exit(distributed.launch(plan, invocation(), layout.root))
    seed = s.seed if seed is None else seed
    spec = protocol_spec(protocol, {"seed": protocol_seed})
    params = {"model": model, "data": str(data), "seed": seed, "protocol": spec.settings()}
    with (
        distributed.worker(layout, device or s.device) as layout,
        tracked(
            f"train recommender {model}", params | {"trials": trials}, run_dir=layout.root
        ) as tracker,
    ):
        result = recsys.train_recommender(
            layout,
            data,
            model,
            overrides,
            seed,
            device or settings().device,
            train_progress(not as_json, "train recommender"),
            protocol=spec,
            trials=trials,
            resume=resume,
        )
        tracker.log_params({"config": result["config"]})
        _log_training(tracker, result, layout.recommender(model).parent)
        result["run_dir"] = str(layout.root)
        emit(result, as_json, lambda: _render(result))


def _log_training(tracker: Tracker, result: dict[str, Any], directory: Path) -> None:
    """Per-epoch and final numbers, and the small files the fit wrote beside its weights."""
    log_fit(tracker, result)
    for name in ("train.json", "metrics.jsonl"):
        tracker.log_artifact(directory / name)


_NOT_FINITE = {"nan", "inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}


def parse_settings(pairs: list[str] | None) -> dict[str, Any]:
    """KEY=VALUE pairs; values are JSON when they parse as JSON, strings otherwise.

    A key given twice, or a value that is no finite number but reads as one (pydantic would
    take 'inf' for a float), is refused rather than one of them silently kept.
    """
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise PinlabDataError(f"--set expects KEY=VALUE, got {pair!r} (e.g. --set lr=0.01)")
        if key in out:
            raise PinlabDataError(f"--set {key} is given twice; give it once")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if raw.strip().lower() in _NOT_FINITE or (
            isinstance(value, float) and not math.isfinite(value)
        ):
            raise PinlabDataError(f"--set {key}={raw} is not a finite number; give one")
        out[key] = value
    return out


def parse_model_settings(pairs: list[str]) -> dict[str, dict[str, Any]]:
    """MODEL.KEY=VALUE pairs, grouped by model; values read as in `parse_settings`."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in parse_settings(pairs).items():
        model, dot, field = key.partition(".")
        if not dot or not model or not field:
            raise PinlabDataError(
                f"--set expects MODEL.KEY=VALUE, got {key!r}; e.g. --set hstu.dropout=0.5"
            )
        out.setdefault(model, {})[field] = value
    return out


def _render(result: dict[str, Any]) -> None:
    if "protocol" in result:  # a recommender
        epochs = "" if result["epochs"] is None else f", {result['epochs']} epochs"
        stdout.print(
            f"trained [bold]{result['model']}[/] in {result['seconds']:.1f} s{epochs} "
            f"(chosen on validation, {result['best_valid']}; refitted on "
            f"{result['protocol']['name']} training part) -> {result['run_dir']}"
        )
        return
    stdout.print(
        f"trained [bold]{result['model']}[/] in {result['seconds']:.1f} s, "
        f"{result['epochs']} epochs (best {result['best_epoch']}, "
        f"validation {result['best_valid']}) -> {result['run_dir']}"
    )
