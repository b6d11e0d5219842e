"""`pinlab eval`: measure a run's models under named protocols."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from pinlab_data import write_json_atomic
from pinlab_eval import CiMethod
from pinlab_tasks import cold_start, generative, recsys
from pinlab_tasks import visual as visual_workflows
from pinlab_tasks._app import AutoguidanceOpt, DeviceOpt, JsonFlag, SeedOpt, settings
from pinlab_tasks._output import emit, metrics_table, stdout
from pinlab_tasks._progress import train_progress
from pinlab_tasks.runs import RunLayout, check_output_file
from pinlab_tasks.tracking import numbers, tracked

app = typer.Typer(help="Evaluate a run's models.", no_args_is_help=True)

RunArg = Annotated[Path, typer.Option("--run", help="Run directory with trained models.")]


@app.command("visual")
def visual(run: RunArg, seed: SeedOpt = None, as_json: JsonFlag = False) -> None:
    """Recall@K, mAP and linear-probe accuracy on held-out pins, trained vs untrained encoder.

    With an aligned image-text model (`pinlab train align`), also text-to-image recall@K and
    zero-shot category accuracy.

    Use the seed the encoder was trained with: it picks the held-out pins.
    Writes: RUN/visual/{eval.json, embedding_map.png}.
    """
    seed = settings().seed if seed is None else seed
    layout = RunLayout(run)
    with tracked("eval visual", {"run": str(run), "seed": seed}, run_dir=run) as tracker:
        result = visual_workflows.eval_visual(layout, seed)
        tracker.log_metrics(numbers(result))
        for name in ("eval.json", "embedding_map.png"):
            tracker.log_artifact(layout.visual / name)

    def render() -> None:
        stdout.print(
            metrics_table(
                f"visual, {result['protocol']}",
                {"trained": result["trained"], "untrained": result["untrained"]},
            )
        )
        if "text_to_image" in result:
            align = result["text_to_image"]
            stdout.print(
                metrics_table(
                    f"text to image, relevant = same {align['relevance']}",
                    {"aligned": align["metrics"]},
                )
            )

    emit(result, as_json, render)


@app.command("recommender")
def recommender(run: RunArg, as_json: JsonFlag = False) -> None:
    """Every trained recommender on the test part of the protocol it was trained under.

    Full ranking (or the protocol's sampled negatives), seen items excluded; the split is the
    one `train recommender` refitted for, rebuilt from its recorded protocol and seed.

    Writes: RUN/recommender/eval.json.
    """
    layout = RunLayout(run)
    with tracked("eval recommender", {"run": str(run)}, run_dir=run) as tracker:
        result = recsys.eval_recommenders(layout)
        tracker.log_params({"protocols": result["protocols"]})
        tracker.log_metrics(numbers(result["models"]))
        tracker.log_artifact(layout.recommenders / "eval.json")
    emit(
        result,
        as_json,
        lambda: stdout.print(
            metrics_table(f"recommenders, {result['protocol']}", result["models"])
        ),
    )


@app.command("cold-start")
def cold_start_(
    run: Annotated[
        Path, typer.Option("--run", help="Run directory (created); its dataset unless --data.")
    ],
    data: Annotated[Path | None, typer.Option("--data", help="Dataset directory.")] = None,
    features: Annotated[
        cold_start.FeatureKind,
        typer.Option(help="Item features: caption text, the run's encoder, or its aligned tower."),
    ] = "text",
    fraction: Annotated[
        float, typer.Option("--fraction", help="Share of pins held out entirely (0..1).")
    ] = 0.2,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Recommend pins nobody engaged with: the hybrid vs baselines that can rank cold pins.

    Baselines: random (the exact expectation of a uniformly random ranking), category
    popularity (ties in seeded random order) and content kNN over the user's history on the
    same features; the hybrid is reported as a ratio to the strongest.

    Writes: RUN/cold_start/{eval.json, hybrid.pt, metrics.jsonl}.
    """
    s = settings()
    seed = s.seed if seed is None else seed
    params = {"run": str(run), "data": str(data), "features": features, "fraction": fraction}
    with tracked("eval cold-start", params | {"seed": seed}, run_dir=run) as tracker:
        result = cold_start.eval_cold_start(
            RunLayout(run),
            data,
            features,
            seed,
            device or s.device,
            cold_fraction=fraction,
            progress=train_progress(not as_json, "eval cold-start"),
        )
        tracker.log_metrics(numbers(result))
        tracker.log_artifact(run / "cold_start" / "eval.json")
    emit(result, as_json, lambda: _render_cold_start(result))


def _render_cold_start(result: dict[str, Any]) -> None:
    shown = ("hr@10", "ndcg@10", "recall@10", "hr@20")
    rows = {n: {m: v for m, v in ms.items() if m in shown} for n, ms in result["models"].items()}
    stdout.print(metrics_table(f"{result['protocol']}, {result['features']} features", rows))
    ratios = ", ".join(
        f"{metric} {ratio:.2f}x {result['strongest_baseline'][metric]}"
        for metric, ratio in result["vs_strongest_baseline"].items()
    )
    stdout.print(
        f"hybrid vs the strongest baseline: {ratios}; hr@10 {result['hr@10_vs_random']:.1f}x "
        f"random, over {result['cold_items']} cold pins (random: exact expectation)"
    )


@app.command("ope")
def ope(
    logs: Annotated[
        Path, typer.Option("--logs", help="Logged feedback of `pinlab sim run` (RUN/logs).")
    ],
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="The target: random, greedy, softmax, epsilon-greedy, or reinforce "
            "(with --train-logs).",
        ),
    ],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="A target setting KEY=VALUE (repeatable): temperature=0.5."),
    ] = None,
    train_logs: Annotated[
        Path | None,
        typer.Option("--train-logs", help="reinforce: other logs of the same world to train on."),
    ] = None,
    ci: Annotated[
        CiMethod, typer.Option("--ci", help="Interval: normal (delta method) or bootstrap.")
    ] = "normal",
    out: Annotated[
        Path | None, typer.Option("--out", help="Also write the result to this JSON file.")
    ] = None,
    seed: SeedOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Estimate a target policy's clicks per impression from another policy's logs, with every
    off-policy estimator (dm, ips, snips, dr, switch-dr, dr-os, pseudo-inverse) and its interval.

    The reward model of dm and the dr family is fitted on the logs alone (cross-fitted
    logistic regression). IPS-family estimators report a target that puts mass where the
    logger never acts as unsupported instead of a number. Logs with propensities of 0 or
    outside (0, 1], missing columns or actions outside the catalogue are refused (exit 2)
    with the rows named. When the logs come from a stationary pbm simulation, the target's
    exact value is shown beside each estimate.

    Writes: --out FILE when given (nothing else).
    """
    from pinlab_tasks.commands.train import parse_settings
    from pinlab_tasks.simulate import eval_ope, is_ope_result

    if out is not None:  # before the work
        check_output_file(out, is_ope_result, "eval ope result")
    s = settings()
    seed = s.seed if seed is None else seed
    target_settings = parse_settings(set_)
    params = {"logs": str(logs), "policy": policy, "settings": target_settings, "ci": ci,
              "seed": seed}  # fmt: skip
    with tracked("eval ope", params) as tracker:
        result = eval_ope(logs, policy, target_settings, train_logs=train_logs, ci=ci, seed=seed)
        tracker.log_metrics(
            {
                f"estimate/{row['name']}": row["value"]
                for row in result["estimates"]
                if row["value"] is not None
            }
        )
    if out is not None:
        write_json_atomic(out, result)

    def render() -> None:
        truth = result["truth_per_impression"]
        table = Table(
            title=f"{result['target']} from {result['logger']}'s logs ({result['rounds']:,} "
            f"rounds); truth {'-' if truth is None else f'{truth:.4f}'} per impression",
            title_justify="left",
        )
        for column in ("estimator", "value", "interval", "relative error", "covers", "note"):
            table.add_column(column, justify="left" if column in ("estimator", "note") else "right")
        for row in result["estimates"]:
            value = row["value"]
            table.add_row(
                row["name"],
                "-" if value is None else f"{value:.4f}",
                "-" if row["ci_low"] is None else f"[{row['ci_low']:.4f}, {row['ci_high']:.4f}]",
                f"{row['relative_error'] * 100:.1f}%" if "relative_error" in row else "-",
                _covers(row.get("covers_truth")),
                row["note"] or "",
            )
        stdout.print(table)
        if result["truth_note"]:
            stdout.print(result["truth_note"])

    emit(result, as_json, render)


def _covers(flag: bool | None) -> str:
    return "-" if flag is None else ("yes" if flag else "no")


@app.command("generator")
def generator(
    run: RunArg,
    steps: Annotated[int, typer.Option("--steps", help="Sampling steps (1..200).")] = 25,
    guidance: Annotated[
        float, typer.Option("--guidance", help="Classifier-free guidance scale (0..20).")
    ] = 3.0,
    autoguidance: AutoguidanceOpt = None,
    infer_category: Annotated[
        bool,
        typer.Option(
            "--infer-category/--no-infer-category",
            help="Condition each caption on the category the generator's caption prior "
            "infers from it (--no-infer-category: on the caption alone).",
        ),
    ] = True,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """The run's generator on held-out captions, beside real pins and a no-learning baseline.

    Fréchet distance and improved precision/recall (k=3) in the run's encoder space with the
    real-vs-real floor; category (and palette) accuracy by a classifier of real pins; text-image
    agreement (with `train align`); visual search by generated images; near-duplicates of
    training images and nearest-neighbour distances. Needs `train visual` in the run.

    Writes: RUN/generator/{eval.json, samples.png}, RUN/visual/classifier/.
    """
    s = settings()
    seed = s.seed if seed is None else seed
    layout = RunLayout(run)
    params = {
        "run": str(run), "steps": steps, "guidance": guidance, "autoguidance": autoguidance,
        "seed": seed, "infer_category": infer_category,
    }  # fmt: skip
    with tracked("eval generator", params, run_dir=run) as tracker:
        result = generative.eval_generator(
            layout,
            steps=steps,
            guidance=guidance,
            autoguidance=autoguidance,
            infer_category=infer_category,
            seed=seed,
            device=device or s.device,
            progress=train_progress(not as_json, "eval generator"),
        )
        tracker.log_metrics(numbers(result))
        for name in (generative.EVAL_FILE, generative.SAMPLES_FILE):
            tracker.log_artifact(layout.generator_dir / name)
    emit(result, as_json, lambda: render_generator(result))


def render_generator(result: dict[str, Any]) -> None:
    """The evaluation's tables: fidelity, conditioning, search, memorisation."""
    sets = ("generated", "baseline", "real")
    rows: dict[str, dict[str, float]] = {}
    for name in sets:
        row = {k: v for k, v in result["fidelity"][name].items() if k != "fd_over_baseline"}
        row |= result["conditional"][name]
        if result["text_image_agreement"]:
            row["text_agreement"] = result["text_image_agreement"][name]
        if result["retrieval"]:
            row["search_precision@10"] = result["retrieval"][f"{name}_precision@10"]
        row["near_duplicate_share"] = result["memorisation"][name]["near_duplicate_share"]
        row["nn_pixel_rms_p50"] = result["memorisation"][name]["nn_pixel_rms"]["p50"]
        rows[name] = row
    title = (
        f"generator on {result['prompts']} held-out captions (real: held-out pins, the floor; "
        f"FD real-vs-real {result['real_vs_real_floor']})"
    )
    by_metric: dict[str, dict[str, float]] = {}
    for name, row in rows.items():
        for metric, value in row.items():
            by_metric.setdefault(metric, {})[name] = value
    stdout.print(metrics_table(title, by_metric))
    prior = result.get("category_prior")
    if prior and prior["infer_category"]:
        right = (
            "" if prior["accuracy"] is None else f", the caption's own for {prior['accuracy']:.1%}"
        )
        stdout.print(
            f"generated from the caption and the category the caption prior inferred "
            f"(for {prior['inferred_share']:.1%} of the prompts{right})"
        )
    stdout.print(f"samples: {result['samples']}")
