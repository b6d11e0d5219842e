"""The synthetic pin world: rendered pins, creators and users with latent tastes.

Category is a shape; style (palette and texture) is drawn independently of it, so an
encoder must learn shape under changes of colour, texture, position, scale and rotation.
Users hold a taste over categories and palettes that drifts over time, follow a few
creators, browse in single-category sessions, repeat themselves, and see popular pins
from established creators more often (popularity bias).
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import numpy as np
import numpy.typing as npt
import pyarrow as pa
from pydantic import BaseModel, ConfigDict, Field

from pinlab_data._store import open_npz, save_dataset
from pinlab_data.contracts import (
    EVENT_WEIGHTS,
    INTERACTION_SCHEMA,
    PIN_SCHEMA,
    USER_SCHEMA,
    DatasetManifest,
    EventKind,
    ImageArray,
    PinlabDataError,
    SynthTruth,
)

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ShapeFn = Callable[[FloatArray, FloatArray], BoolArray]

TRUTH_FILE = "truth.npz"
START_TIME = 1_700_000_000  # 2023-11-14, so timestamps look like real logs
DAY = 86_400


def _polygon(n: int, radius: float) -> ShapeFn:
    def inside(u: FloatArray, v: FloatArray) -> BoolArray:
        angles = 2 * np.pi * np.arange(n) / n
        apothem = radius * np.cos(np.pi / n)
        out = np.ones(u.shape, dtype=bool)
        for a in angles:
            out &= u * np.cos(a) + v * np.sin(a) < apothem
        return out

    return inside


def _polar(u: FloatArray, v: FloatArray) -> tuple[FloatArray, FloatArray]:
    return np.hypot(u, v), np.arctan2(v, u)


def _star(u: FloatArray, v: FloatArray) -> BoolArray:
    r, phi = _polar(u, v)
    return r < 0.55 + 0.35 * np.cos(5 * phi)


def _heart(u: FloatArray, v: FloatArray) -> BoolArray:
    x, y = u * 1.25, v * 1.25 + 0.15
    return (x**2 + y**2 - 1) ** 3 - x**2 * y**3 < 0


def _arrow(u: FloatArray, v: FloatArray) -> BoolArray:
    shaft = (np.abs(v) < 0.18) & (u > -0.85) & (u < 0.15)
    head = (u >= 0.05) & (u < 0.85) & (np.abs(v) < (0.85 - u) * 0.95)
    return shaft | head


def _dots(u: FloatArray, v: FloatArray) -> BoolArray:
    out = np.zeros(u.shape, dtype=bool)
    for a in (np.pi / 2, np.pi * 7 / 6, np.pi * 11 / 6):
        out |= np.hypot(u - 0.52 * np.cos(a), v - 0.52 * np.sin(a)) < 0.3
    return out


SHAPES: dict[str, ShapeFn] = {
    "circle": lambda u, v: np.hypot(u, v) < 0.8,
    "square": lambda u, v: np.maximum(np.abs(u), np.abs(v)) < 0.65,
    "triangle": _polygon(3, 0.9),
    "star": _star,
    "cross": lambda u, v: (
        ((np.abs(u) < 0.24) & (np.abs(v) < 0.85)) | ((np.abs(v) < 0.24) & (np.abs(u) < 0.85))
    ),
    "ring": lambda u, v: (np.hypot(u, v) < 0.85) & (np.hypot(u, v) > 0.5),
    "crescent": lambda u, v: (np.hypot(u, v) < 0.85) & (np.hypot(u - 0.42, v) > 0.68),
    "heart": _heart,
    "arrow": _arrow,
    "bar": lambda u, v: (np.abs(u) < 0.9) & (np.abs(v) < 0.22),
    "frame": lambda u, v: (
        (np.maximum(np.abs(u), np.abs(v)) < 0.78) & (np.maximum(np.abs(u), np.abs(v)) > 0.5)
    ),
    "dots": _dots,
    "tee": lambda u, v: (
        ((np.abs(u) < 0.75) & (v > 0.35) & (v < 0.75)) | ((np.abs(u) < 0.2) & (np.abs(v) < 0.75))
    ),
    "ell": lambda u, v: (
        ((u > -0.7) & (u < -0.3) & (np.abs(v) < 0.7))
        | ((np.abs(u) < 0.7) & (v > -0.7) & (v < -0.3))
    ),
    "hourglass": lambda u, v: (np.abs(v) > np.abs(u) * 1.2) & (np.abs(v) < 0.85),
    "half-moon": lambda u, v: (np.hypot(u, v + 0.3) < 0.85) & (v > -0.3),
}

SHAPE_WORDS: dict[str, tuple[str, ...]] = {
    "circle": ("circle", "round", "disc"),
    "square": ("square", "box", "block"),
    "triangle": ("triangle", "triangular", "pyramid"),
    "star": ("star", "starry", "five-pointed"),
    "cross": ("cross", "plus", "cruciform"),
    "ring": ("ring", "hoop", "donut"),
    "crescent": ("crescent", "moon", "sickle"),
    "heart": ("heart", "love", "valentine"),
    "arrow": ("arrow", "pointer", "direction"),
    "bar": ("bar", "stripe", "strip"),
    "frame": ("frame", "border", "outline"),
    "dots": ("dots", "trio", "spots"),
    "tee": ("tee", "t-shape", "junction"),
    "ell": ("ell", "l-shape", "corner"),
    "hourglass": ("hourglass", "bowtie", "timer"),
    "half-moon": ("half-moon", "semicircle", "dome"),
}

# Palettes: (foreground colours, background colours, words). Every palette serves every
# shape, so colour alone says nothing about category.
PALETTES: dict[
    str, tuple[list[tuple[int, int, int]], list[tuple[int, int, int]], tuple[str, ...]]
] = {
    "warm": (
        [(220, 50, 40), (245, 130, 30), (250, 200, 40), (200, 30, 90)],
        [(255, 245, 225), (70, 30, 20)],
        ("warm", "sunset", "fiery"),
    ),
    "cool": (
        [(40, 90, 200), (30, 160, 170), (110, 70, 190), (60, 140, 230)],
        [(230, 238, 245), (20, 30, 60)],
        ("cool", "ocean", "icy"),
    ),
    "pastel": (
        [(245, 170, 200), (170, 230, 200), (200, 180, 240), (250, 210, 170)],
        [(255, 255, 255), (90, 90, 110)],
        ("pastel", "soft", "dreamy"),
    ),
    "earth": (
        [(120, 130, 50), (140, 90, 50), (190, 150, 100), (170, 80, 40)],
        [(240, 230, 205), (50, 45, 35)],
        ("earthy", "rustic", "natural"),
    ),
    "neon": (
        [(255, 40, 220), (120, 255, 40), (40, 240, 255), (255, 240, 20)],
        [(10, 10, 15), (60, 0, 70)],
        ("neon", "electric", "vivid"),
    ),
    "mono": (
        [(20, 20, 20), (110, 110, 110), (200, 200, 200), (60, 60, 70)],
        [(250, 250, 250), (150, 150, 150)],
        ("monochrome", "grey", "minimal"),
    ),
}

TEXTURES: dict[str, tuple[str, ...]] = {
    "solid": ("plain", "solid", "flat"),
    "stripes": ("striped", "lined", "banded"),
    "checks": ("checked", "checkered", "tiled"),
    "dotted": ("dotted", "speckled", "polka"),
    "gradient": ("gradient", "shaded", "fading"),
}

GROUPS = ("established", "emerging")


class SynthConfig(BaseModel):
    """Settings of a synthetic world; the same settings and seed give the same world."""

    model_config = ConfigDict(extra="forbid")

    num_pins: Annotated[int, Field(ge=20, le=200_000)] = 4_000
    num_users: Annotated[int, Field(ge=5, le=500_000)] = 1_000
    num_categories: Annotated[int, Field(ge=2, le=len(SHAPES))] = 12
    num_creators: Annotated[int, Field(ge=2)] = 200
    image_size: Annotated[int, Field(ge=16, le=256)] = 32
    interactions_per_user: Annotated[float, Field(ge=5)] = 40.0
    emerging_share: Annotated[float, Field(gt=0, lt=1)] = 0.2
    emerging_exposure: Annotated[float, Field(gt=0, le=1)] = Field(
        default=0.5, description="How much less often emerging creators' pins are shown."
    )
    taste_concentration: Annotated[float, Field(gt=0)] = Field(
        default=0.25, description="Dirichlet alpha of category tastes; small = focused users."
    )
    drift: Annotated[float, Field(ge=0, le=1)] = Field(
        default=0.35, description="Share of a user's taste replaced by a new one over time."
    )
    repeat_rate: Annotated[float, Field(ge=0, lt=1)] = 0.08
    session_length: Annotated[float, Field(ge=1)] = 5.0
    days: Annotated[int, Field(ge=1)] = 120
    noise: Annotated[float, Field(ge=0, le=0.5)] = 0.05
    seed: int = 0


def synthesize(
    config: SynthConfig,
) -> tuple[DatasetManifest, pa.Table, pa.Table, pa.Table, ImageArray, SynthTruth]:
    """Generate a world in memory: manifest, pins, users, interactions, images, truth."""
    root_rng = np.random.default_rng(config.seed)
    pin_rng, image_rng, user_rng = root_rng.spawn(3)
    categories = list(SHAPES)[: config.num_categories]
    palettes = list(PALETTES)
    textures = list(TEXTURES)
    n = config.num_pins

    creator_group = (pin_rng.random(config.num_creators) < config.emerging_share).astype(np.int64)
    creator_output = pin_rng.pareto(1.5, config.num_creators) + 1
    creator_output[creator_group == 1] *= 0.5  # emerging creators post less
    creator_cats = pin_rng.integers(0, len(categories), (config.num_creators, 2))
    creator_palette = pin_rng.integers(0, len(palettes), config.num_creators)

    creator = pin_rng.choice(config.num_creators, n, p=creator_output / creator_output.sum())
    own_cat = creator_cats[creator, pin_rng.integers(0, 2, n)]
    category = np.where(
        pin_rng.random(n) < 0.7, own_cat, pin_rng.integers(0, len(categories), n)
    ).astype(np.int64)
    palette = np.where(
        pin_rng.random(n) < 0.6, creator_palette[creator], pin_rng.integers(0, len(palettes), n)
    ).astype(np.int64)
    texture = pin_rng.integers(0, len(textures), n)
    appeal = pin_rng.lognormal(0.0, 1.0, n).astype(np.float32)

    images = _render(config, category, palette, texture, image_rng)
    captions = _captions(categories, palettes, textures, category, palette, texture, pin_rng)
    pin_ids = np.arange(1, n + 1, dtype=np.int64)
    pins = pa.Table.from_pydict(
        {
            "pin_id": pin_ids,
            "caption": captions,
            "category": [categories[c] for c in category],
            "creator_id": creator.astype(np.int64) + 1,
            "creator_group": [GROUPS[g] for g in creator_group[creator]],
            "image_row": np.arange(n, dtype=np.int64),
            "image_path": pa.nulls(n, pa.string()),
            "external_id": pa.nulls(n, pa.string()),
        },
        schema=PIN_SCHEMA,
    )
    exposure = appeal * np.where(creator_group[creator] == 1, config.emerging_exposure, 1.0)
    interactions, truth = _behaviour(
        config, categories, palettes, category, palette, creator, exposure, appeal, user_rng
    )
    users = pa.Table.from_pydict(
        {
            "user_id": np.arange(1, config.num_users + 1, dtype=np.int64),
            "external_id": pa.nulls(config.num_users, pa.string()),
            "segment": taste_segments(truth.taste_start),
        },
        schema=USER_SCHEMA.append(pa.field("segment", pa.string())),
    )
    manifest = DatasetManifest(
        name=f"synth-{config.num_pins}-seed{config.seed}",
        source="synth",
        seed=config.seed,
        config=config.model_dump(),
        num_pins=n,
        num_users=config.num_users,
        num_interactions=interactions.num_rows,
        image_size=config.image_size,
        categories=categories,
    )
    return manifest, pins, users, interactions, images, truth


def write_synth(root: Path, config: SynthConfig, *, overwrite: bool = False) -> Path:
    """Generate a world and save it as a dataset directory (atomically)."""
    manifest, pins, users, interactions, images, truth = synthesize(config)
    return save_dataset(
        root,
        manifest,
        pins,
        users,
        interactions,
        images=images,
        extra={TRUTH_FILE: _truth_bytes(truth)},
        overwrite=overwrite,
    )


def taste_segments(taste: npt.NDArray[np.floating]) -> list[str]:
    """Each user's segment, a user attribute of the world: 'focused' when the entropy of their
    starting category taste is below the users' median, else 'broad'."""
    p = np.clip(np.asarray(taste, dtype=np.float64), 1e-12, None)
    entropy = -(p * np.log(p)).sum(axis=1)
    median = float(np.median(entropy))
    return ["focused" if e < median else "broad" for e in entropy.tolist()]


def load_truth(root: Path) -> SynthTruth:
    """The generating tastes of a synthetic dataset directory."""
    path = root / TRUTH_FILE
    if not path.is_file():
        raise PinlabDataError(
            f"{root} has no {TRUTH_FILE}: true tastes exist only for `pinlab data synth` worlds"
        )
    fix = "make it again with `pinlab data synth` (the same seed and settings give it back)"
    with open_npz(path, fix) as z:
        names = json.loads(str(z["names"]))
        return SynthTruth(
            categories=names["categories"],
            palettes=names["palettes"],
            taste_start=z["taste_start"],
            taste_end=z["taste_end"],
            palette_taste=z["palette_taste"],
            pin_category=z["pin_category"],
            pin_palette=z["pin_palette"],
            pin_appeal=z["pin_appeal"],
        )


def _truth_bytes(truth: SynthTruth) -> bytes:
    buf = io.BytesIO()
    names = json.dumps({"categories": truth.categories, "palettes": truth.palettes})
    np.savez_compressed(
        buf,
        names=np.array(names),
        taste_start=truth.taste_start,
        taste_end=truth.taste_end,
        palette_taste=truth.palette_taste,
        pin_category=truth.pin_category,
        pin_palette=truth.pin_palette,
        pin_appeal=truth.pin_appeal,
    )
    return buf.getvalue()


def _render(
    config: SynthConfig,
    category: npt.NDArray[np.int64],
    palette: npt.NDArray[np.int64],
    texture: npt.NDArray[np.int64],
    rng: np.random.Generator,
    batch: int = 512,
) -> ImageArray:
    """Render every pin at 2x and box-downsample, which anti-aliases the edges."""
    size = config.image_size
    hi = 2 * size
    axis = (np.arange(hi) + 0.5) / hi * 2 - 1
    gy, gx = np.meshgrid(axis, axis, indexing="ij")
    shapes = list(SHAPES.values())
    textures = list(TEXTURES)
    palettes = list(PALETTES.values())
    out = np.empty((len(category), size, size, 3), dtype=np.uint8)
    for start in range(0, len(category), batch):
        idx = np.arange(start, min(start + batch, len(category)))
        b = len(idx)
        scale = rng.uniform(0.5, 0.95, b)[:, None, None]
        angle = rng.uniform(0, 2 * np.pi, b)[:, None, None]
        shift = rng.uniform(-1, 1, (b, 2))[:, :, None, None] * (1 - scale[:, None])
        dx, dy = gx[None] - shift[:, 0], gy[None] - shift[:, 1]
        u = (np.cos(angle) * dx + np.sin(angle) * dy) / scale
        v = (-np.sin(angle) * dx + np.cos(angle) * dy) / scale

        mask = np.zeros((b, hi, hi), dtype=bool)
        for c in np.unique(category[idx]):
            sel = category[idx] == c
            mask[sel] = shapes[c](u[sel], v[sel])

        pattern = np.zeros((b, hi, hi))
        freq = rng.uniform(4, 8, b)[:, None, None]
        for t in np.unique(texture[idx]):
            sel = texture[idx] == t
            pattern[sel] = _pattern(textures[t], u[sel], v[sel], freq[sel])

        fg_a = np.empty((b, 3))
        fg_b = np.empty((b, 3))
        bg = np.empty((b, 3))
        for j, p in enumerate(palette[idx]):
            fgs, bgs, _ = palettes[p]
            pick = rng.choice(len(fgs), 2, replace=False)
            fg_a[j], fg_b[j] = fgs[pick[0]], fgs[pick[1]]
            bg[j] = bgs[rng.integers(len(bgs))]
        jitter = rng.normal(0, 12, (b, 3, 3))
        fg_a, fg_b, bg = fg_a + jitter[:, 0], fg_b + jitter[:, 1], bg + jitter[:, 2]

        tilt = rng.normal(0, 0.15, (b, 2))
        shade = 1 + tilt[:, 0, None, None] * gx + tilt[:, 1, None, None] * gy
        fg = (
            fg_a[:, None, None] * (1 - pattern[..., None])
            + fg_b[:, None, None] * pattern[..., None]
        )
        back = bg[:, None, None] * shade[..., None]
        img = np.where(mask[..., None], fg, back)
        img = img.reshape(b, size, 2, size, 2, 3).mean(axis=(2, 4))
        img += rng.normal(0, 255 * config.noise, img.shape)
        out[idx] = np.clip(img, 0, 255).astype(np.uint8)
    return out


def _pattern(kind: str, u: FloatArray, v: FloatArray, freq: FloatArray) -> FloatArray:
    """A texture in [0, 1] on the shape's own frame, so it turns with the shape."""
    if kind == "stripes":
        return (np.sin(freq * np.pi * u) > 0).astype(np.float64)
    if kind == "checks":
        return ((np.sin(freq * np.pi * u) > 0) ^ (np.sin(freq * np.pi * v) > 0)).astype(np.float64)
    if kind == "dotted":
        cell_u = np.mod(u * freq / 2, 1) - 0.5
        cell_v = np.mod(v * freq / 2, 1) - 0.5
        return (np.hypot(cell_u, cell_v) < 0.25).astype(np.float64)
    if kind == "gradient":
        return np.clip((u + 1) / 2, 0, 1)
    return np.zeros_like(u)


def _captions(
    categories: list[str],
    palettes: list[str],
    textures: list[str],
    category: npt.NDArray[np.int64],
    palette: npt.NDArray[np.int64],
    texture: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> list[str]:
    templates = (
        "a {t} {p} {s}",
        "{p} {s} with a {t} look",
        "{s} in {p} tones, {t}",
        "{t} {s}, {p} palette",
    )
    picks = rng.integers(0, 3, (len(category), 3))
    forms = rng.integers(0, len(templates), len(category))
    return [
        templates[forms[i]].format(
            s=SHAPE_WORDS[categories[category[i]]][picks[i, 0]],
            p=PALETTES[palettes[palette[i]]][2][picks[i, 1]],
            t=TEXTURES[textures[texture[i]]][picks[i, 2]],
        )
        for i in range(len(category))
    ]


def caption_attributes(caption: str) -> dict[str, str]:
    """The shape, palette and texture a synthetic caption names, by their canonical names.

    Keys are `shape`, `palette` and `texture`; words outside the synthetic world's vocabulary
    are ignored, so any caption gives a (possibly empty) dict.
    """
    named: dict[str, str] = {}
    for token in caption.lower().replace(",", " ").split():
        if token in _CAPTION_WORDS:
            attribute, value = _CAPTION_WORDS[token]
            named[attribute] = value
    return named


_CAPTION_WORDS: dict[str, tuple[str, str]] = {
    **{w: ("shape", name) for name, words in SHAPE_WORDS.items() for w in words},
    **{w: ("palette", name) for name, (_, _, words) in PALETTES.items() for w in words},
    **{w: ("texture", name) for name, words in TEXTURES.items() for w in words},
}


def _behaviour(
    config: SynthConfig,
    categories: list[str],
    palettes: list[str],
    category: npt.NDArray[np.int64],
    palette: npt.NDArray[np.int64],
    creator: npt.NDArray[np.int64],
    exposure: npt.NDArray[np.float32],
    appeal: npt.NDArray[np.float32],
    rng: np.random.Generator,
) -> tuple[pa.Table, SynthTruth]:
    """Users browse in sessions: pick a category from their (drifting) taste, then pins in it."""
    num_users, num_cats = config.num_users, len(categories)
    alpha = np.full(num_cats, config.taste_concentration)
    taste_start = rng.dirichlet(alpha, num_users)
    taste_new = rng.dirichlet(alpha, num_users)
    taste_end = (1 - config.drift) * taste_start + config.drift * taste_new
    palette_taste = rng.dirichlet(np.full(len(palettes), 0.6), num_users)
    follows = rng.choice(config.num_creators, (num_users, 3))
    activity = np.maximum(
        5, rng.lognormal(np.log(config.interactions_per_user) - 0.18, 0.6, num_users)
    ).astype(np.int64)
    by_cat = [np.flatnonzero(category == c) for c in range(num_cats)]
    kinds = [EventKind.VIEW, EventKind.CLICK, EventKind.SAVE]
    kind_p = np.array([0.7, 0.2, 0.1])

    cols: dict[str, list[npt.NDArray[np.int64]]] = {"user": [], "pin": [], "time": []}
    kind_idx: list[npt.NDArray[np.int64]] = []
    for user in range(num_users):
        n_events = int(activity[user])
        t = START_TIME + int(rng.uniform(0, 0.6) * config.days * DAY)
        pins: list[int] = []
        times: list[int] = []
        while len(pins) < n_events:
            frac = len(pins) / n_events
            taste = (1 - frac * config.drift) * taste_start[user] + (
                frac * config.drift * taste_new[user]
            )
            cat = rng.choice(num_cats, p=taste / taste.sum())
            pool = by_cat[cat]
            if len(pool) == 0:
                continue
            weight = exposure[pool] * palette_taste[user, palette[pool]] ** 1.5
            weight = weight * np.where(np.isin(creator[pool], follows[user]), 3.0, 1.0)
            length = min(n_events - len(pins), int(rng.geometric(1 / config.session_length)))
            chosen = rng.choice(pool, length, p=weight / weight.sum())
            for fresh in chosen:
                repeat = bool(pins) and rng.random() < config.repeat_rate
                pins.append(pins[int(rng.integers(len(pins)))] if repeat else int(fresh))
                t += int(rng.uniform(20, 300))
                times.append(t)
            t += int(rng.exponential(2.0) * DAY * config.days / 120)
        cols["user"].append(np.full(n_events, user + 1, dtype=np.int64))
        cols["pin"].append(np.array(pins, dtype=np.int64) + 1)
        cols["time"].append(np.array(times, dtype=np.int64))
        kind_idx.append(rng.choice(len(kinds), n_events, p=kind_p))

    kind = np.concatenate(kind_idx)
    table = pa.Table.from_pydict(
        {
            "user_id": np.concatenate(cols["user"]),
            "pin_id": np.concatenate(cols["pin"]),
            "timestamp": np.concatenate(cols["time"]),
            "event": np.array([k.value for k in kinds])[kind],
            "weight": np.array([EVENT_WEIGHTS[k] for k in kinds], dtype=np.float32)[kind],
        },
        schema=INTERACTION_SCHEMA,
    )
    truth = SynthTruth(
        categories=categories,
        palettes=palettes,
        taste_start=taste_start.astype(np.float32),
        taste_end=taste_end.astype(np.float32),
        palette_taste=palette_taste.astype(np.float32),
        pin_category=category,
        pin_palette=palette,
        pin_appeal=appeal,
    )
    return table, truth
