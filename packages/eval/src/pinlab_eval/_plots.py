"""Pictures of evaluations, as PNG bytes: embedding maps, learning curves, per-user metric
distributions and the matrix of paired differences between models."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import numpy.typing as npt

from pinlab_data import write_bytes_atomic
from pinlab_data.contracts import Float32Array, ImageArray, PinlabDataError
from pinlab_eval.contracts import Curve, Float64Array

mpl.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

MAX_POINTS = 5_000
DPI = 110


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _grid(panels: int, width: float, height: float) -> tuple[Figure, list[Axes]]:
    """Small multiples: up to four panels a row, the unused ones hidden."""
    cols = min(4, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(width * cols, height * rows),
        dpi=DPI,
        squeeze=False,
        layout="constrained",
    )
    flat = list(axes.ravel())
    for ax in flat[panels:]:
        ax.set_visible(False)
    return fig, flat[:panels]


def project_2d(embeddings: Float32Array) -> Float32Array:
    """The first two principal components (centred SVD), deterministic up to sign."""
    if embeddings.ndim != 2 or len(embeddings) < 2:
        raise PinlabDataError(f"need (n >= 2, d) embeddings to project, got {embeddings.shape}")
    centred = np.asarray(embeddings, dtype=np.float64)
    centred = centred - centred.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    components = vt[:2] if len(vt) >= 2 else np.vstack([vt, np.zeros_like(vt)])
    points = centred @ components.T
    signs = np.sign(points[np.abs(points).argmax(axis=0), [0, 1]])
    projected: Float32Array = (points * np.where(signs == 0, 1, signs)).astype(np.float32)
    return projected


def embedding_map(
    embeddings: Float32Array, labels: Sequence[str], path: Path, title: str, seed: int = 0
) -> Path:
    """Scatter the embeddings' 2-D PCA projection, one colour per label; write `path` (PNG).

    At most MAX_POINTS points are drawn (a seeded sample), so big sets stay readable.
    """
    if len(labels) != len(embeddings):
        raise PinlabDataError(f"{len(embeddings)} embeddings but {len(labels)} labels")
    rows = np.arange(len(embeddings))
    if len(rows) > MAX_POINTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_POINTS, replace=False))
    points = project_2d(np.asarray(embeddings)[rows])
    names = np.asarray(labels, dtype=object)[rows]
    classes = sorted(set(names.tolist()))
    colours = plt.get_cmap("tab20" if len(classes) > 10 else "tab10")
    fig, ax = plt.subplots(figsize=(7, 6), dpi=DPI)
    try:
        for k, name in enumerate(classes):
            mask = names == name
            ax.scatter(
                points[mask, 0],
                points[mask, 1],
                s=6,
                alpha=0.7,
                color=colours(k % colours.N),
                label=name,
            )
        ax.set_title(title)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        if len(classes) <= 20:
            ax.legend(markerscale=2.5, fontsize=7, loc="best", frameon=False)
        png = _png(fig)
    finally:
        plt.close(fig)
    write_bytes_atomic(Path(path), png)
    return Path(path)


def curves_png(
    panels: Mapping[str, Sequence[Curve]], xlabel: str, ylabel: str, whole_x: bool = True
) -> bytes:
    """Small multiples of curves, one panel per key (a model, a log), sharing axis labels.

    Unlabelled curves go behind in thin grey; labelled ones on top in colour, with a legend.
    A curve of one point is drawn as a dot. With `whole_x`, x counts something (epochs,
    trials) and its ticks are whole numbers; without, x is a measured quantity (a frontier).
    """
    if not panels:
        raise PinlabDataError("no curves to plot")
    fig, axes = _grid(len(panels), 3.4, 2.6)
    try:
        for ax, (title, curves) in zip(axes, panels.items(), strict=True):
            _draw_curves(ax, curves, whole_x)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.set_ylabel(ylabel, fontsize=8)
        return _png(fig)
    finally:
        plt.close(fig)


def _draw_curves(ax: Axes, curves: Sequence[Curve], whole_x: bool = True) -> None:
    colours = plt.get_cmap("tab10")
    named = 0
    for curve in curves:
        if not curve.points:
            continue
        x, y = zip(*curve.points, strict=True)
        marker = "o" if len(x) == 1 else None
        if curve.label is None:
            ax.plot(x, y, color="0.72", linewidth=0.7, marker=marker, markersize=2, zorder=1)
        else:
            ax.plot(
                x,
                y,
                color=colours(named % colours.N),
                linewidth=1.8,
                marker=marker or ".",
                markersize=4,
                label=curve.label,
                zorder=2,
            )
            named += 1
    if whole_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
    if named:
        ax.legend(fontsize=7, frameon=False)


def distributions_png(values: Mapping[str, Mapping[str, Float64Array]]) -> bytes:
    """Per-user metric values as box plots: one panel per metric, one box per model.

    `values[metric][model]` holds one value per user (NaN, a user the metric is undefined for,
    is dropped). Each box shows the quartiles, whiskers at 1.5 IQR and the mean as a diamond;
    beside it, the mean and the share of users at exactly 0, which boxes of sparse hits hide.
    """
    if not values:
        raise PinlabDataError("no per-user values to plot")
    kept: dict[str, dict[str, Float64Array]] = {}
    for metric, per_model in values.items():
        kept[metric] = {}
        for model, raw in per_model.items():
            v = np.asarray(raw, dtype=np.float64)
            if not (~np.isnan(v)).any():
                raise PinlabDataError(f"{model} has no defined {metric} values to plot")
            kept[metric][model] = v[~np.isnan(v)]
    rows = max(len(per_model) for per_model in kept.values())
    fig, axes = _grid(len(kept), 4.2, 0.42 * rows + 1.1)
    try:
        for ax, (metric, per_model) in zip(axes, kept.items(), strict=True):
            _draw_boxes(ax, per_model)
            ax.set_title(f"{metric} per user", fontsize=9)
        return _png(fig)
    finally:
        plt.close(fig)


def _draw_boxes(ax: Axes, per_model: Mapping[str, Float64Array]) -> None:
    names = list(per_model)
    data = list(per_model.values())
    positions = np.arange(len(names))[::-1]  # the first model on top
    ax.boxplot(
        data,
        positions=positions,
        orientation="horizontal",
        widths=0.6,
        showmeans=True,
        meanprops={
            "marker": "D",
            "markerfacecolor": "tab:red",
            "markeredgecolor": "none",
            "markersize": 4,
        },
        flierprops={"markersize": 2, "alpha": 0.4},
        medianprops={"color": "tab:blue"},
    )
    ax.set_yticks(positions, names, fontsize=8)
    for y, v in zip(positions, data, strict=True):
        ax.annotate(
            f"mean {v.mean():.3f}, {np.mean(v == 0):.0%} at 0 (n={len(v):,})",
            (1.0, float(y)),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
        )
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="x", alpha=0.3)


def spread_png(
    panels: Mapping[str, Mapping[str, Float64Array]], xlabel: str, band: float | None = None
) -> bytes:
    """Repeated measurements as points: one panel per key, one row per name, every value a
    dot (jittered up and down) and the mean a red diamond; a line at 0 and, with `band`, the
    shaded +-band around it (e.g. an estimator's error per seed against a 10% target)."""
    if not panels or not any(panels.values()):
        raise PinlabDataError("no values to plot")
    rows = max(len(named) for named in panels.values())
    fig, axes = _grid(len(panels), 4.2, 0.32 * rows + 1.1)
    rng = np.random.default_rng(0)  # the jitter only spreads the dots; fixed, so files repeat
    try:
        for ax, (title, named) in zip(axes, panels.items(), strict=True):
            for y, raw in zip(range(len(named))[::-1], named.values(), strict=True):
                v = np.asarray(raw, dtype=np.float64)
                v = v[np.isfinite(v)]
                ax.scatter(v, y + rng.uniform(-0.18, 0.18, len(v)), s=5, alpha=0.5, color="0.35")
                if len(v):
                    ax.scatter([v.mean()], [y], marker="D", s=18, color="tab:red", zorder=3)
            ax.set_yticks(range(len(named))[::-1], list(named), fontsize=8)
            ax.axvline(0.0, color="k", linewidth=0.8)
            if band is not None:
                ax.axvspan(-band, band, color="tab:green", alpha=0.12)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel(xlabel, fontsize=8)
            ax.tick_params(axis="x", labelsize=7)
            ax.grid(axis="x", alpha=0.3)
        return _png(fig)
    finally:
        plt.close(fig)


def difference_matrix_png(
    models: Sequence[str],
    difference: Float64Array,
    p_value: Float64Array,
    significant: npt.NDArray[np.bool_],
    metric: str,
) -> bytes:
    """A heatmap of row model minus column model, each cell with its difference and p-value.

    `difference[i, j]` is mean(models[i] - models[j]) of `metric`; NaN where the pair was not
    compared (the diagonal). Blue cells: the row model is ahead. Significant cells are marked
    with a star and bold text.
    """
    n = len(models)
    for name, matrix in (
        ("difference", difference),
        ("p_value", p_value),
        ("significant", significant),
    ):
        if matrix.shape != (n, n):
            raise PinlabDataError(f"{name} has shape {matrix.shape}; expected ({n}, {n})")
    if n < 2 or np.isnan(difference).all():
        raise PinlabDataError("a difference matrix needs at least two compared models")
    reach = float(np.nanmax(np.abs(difference))) or 1.0
    size = max(3.6, 0.95 * n + 1.8)
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=DPI, layout="constrained")
    try:
        image = ax.imshow(
            np.ma.masked_invalid(difference),
            cmap=plt.get_cmap("RdBu").with_extremes(bad="0.9"),
            norm=TwoSlopeNorm(0.0, -reach, reach),
        )
        fontsize = 8 if n <= 6 else 6 if n <= 10 else 5
        for i, j in zip(*np.nonzero(~np.isnan(difference)), strict=True):
            star = "*" if significant[i, j] else ""
            ax.text(
                j,
                i,
                f"{difference[i, j]:+.4f}{star}\np={p_value[i, j]:.2g}",
                ha="center",
                va="center",
                fontsize=fontsize,
                fontweight="bold" if star else "normal",
                color="white" if abs(difference[i, j]) > 0.6 * reach else "black",
            )
        ax.set_xticks(range(n), models, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(n), models, fontsize=8)
        ax.set_xlabel("column model (b)", fontsize=8)
        ax.set_ylabel("row model (a)", fontsize=8)
        ax.set_title(f"{metric}: a - b (* significant)", fontsize=9)
        fig.colorbar(image, ax=ax, shrink=0.8).ax.tick_params(labelsize=7)
        return _png(fig)
    finally:
        plt.close(fig)


def sample_grid_png(rows: Sequence[tuple[str, ImageArray, ImageArray]]) -> bytes:
    """One row per prompt: its real pins (left, framed green), then the generated images.

    Each entry is (prompt, real images, generated images); images are (n, S, S, 3) uint8.
    """
    if not rows:
        raise PinlabDataError("a sample grid needs at least one prompt")
    width = max(len(real) + len(generated) for _, real, generated in rows)
    fig, axes = plt.subplots(
        len(rows), width, figsize=(0.9 * width, 1.05 * len(rows)), dpi=DPI, squeeze=False
    )
    for r, (prompt, real, generated) in enumerate(rows):
        for c, ax in enumerate(axes[r]):
            ax.set_xticks([])
            ax.set_yticks([])
            images = [*real, *generated]
            if c >= len(images):
                ax.set_visible(False)
                continue
            ax.imshow(images[c], interpolation="nearest")
            colour = "tab:green" if c < len(real) else "0.8"
            for spine in ax.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(2 if c < len(real) else 0.5)
        axes[r][0].set_title(f"{prompt}  (real: green)", loc="left", fontsize=7, pad=2)
    fig.subplots_adjust(wspace=0.05, hspace=0.35)
    return _png(fig)
