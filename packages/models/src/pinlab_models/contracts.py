"""Public types of pinlab_models: the encoder and recommender Protocols, configs and reports.

Models are Protocols, not base classes: anything with these methods plugs in, and registers
by name in `pinlab_models.registry`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

from pinlab_data.contracts import (
    Float32Array,
    Float64Array,
    ImageArray,
    Int64Array,
    InteractionLog,
)

Device = Literal["auto", "cpu", "cuda"]


class PinlabModelError(ValueError):
    """Bad input to a model: unknown name, incompatible checkpoint, wrong shapes."""


class ProgressEvent(BaseModel):
    """One progress event of a long job: a fit's start, each epoch, its end, or a workflow step.

    `--progress json` prints each as one line on stderr, so an agent can follow a run while
    stdout stays the single `--json` document. Fields a kind lacks are left out of the line.
    """

    model_config = ConfigDict(extra="forbid")

    event: Literal["start", "epoch", "end", "step"] = Field(
        description="start/epoch/end of one fit, or step: a stage message of a long workflow"
    )
    command: str = Field(default="", description='the CLI command, e.g. "train recommender"')
    label: str | None = Field(
        default=None, description='which fit, e.g. "train mf (validation trial 3)"'
    )
    message: str | None = Field(default=None, description="what a step is doing")
    epoch: int | None = Field(default=None, ge=1, description="epochs done (epoch, end)")
    epochs: int | None = Field(default=None, ge=1, description="epochs planned at most")
    loss: float | None = Field(default=None, description="mean training loss of the epoch")
    metric: str | None = Field(default=None, description="what validation measures")
    value: float | None = Field(default=None, description="validation value of the epoch")
    best: float | None = Field(default=None, description="best validation value so far")
    best_epoch: int | None = Field(default=None, description="the epoch of `best`")
    elapsed_s: float | None = Field(default=None, ge=0, description="seconds since the start")
    eta_s: float | None = Field(
        default=None,
        ge=0,
        description="seconds left at most: the epochs left at the mean epoch time, capped by "
        "a search's time budget (early stopping can end sooner)",
    )


ProgressSink = Callable[[ProgressEvent], None]
"""Receives a fit's `ProgressEvent`s (`TrainContext.progress`)."""

TrainProgress = bool | ProgressSink
"""True: a bar on a terminal, plain lines elsewhere; False: silent; a sink: events only."""


@dataclass(frozen=True)
class TrainContext:
    """Where and how a training run happens; passed in, never read from globals.

    `item_features` are dense side features per item index (text or image embeddings) for
    models that use them; the others ignore them.
    """

    run_dir: Path
    seed: int = 0
    device: str = "cpu"
    progress: TrainProgress = True
    item_features: Float32Array | None = None
    deadline: float | None = None
    """A `time.monotonic()` after which epoch training stops (keeping its best validated
    epoch): how a search holds a model to its time budget."""
    label: str = ""
    """Names this fit in progress output (e.g. "validation trial 3"); a labelled fit's bar is
    cleared once done, so a search shows one live bar rather than one per trial."""
    metric: str | None = None
    """Names what `validate` returns (e.g. "ndcg@10") in progress events."""
    checkpoints: bool = False
    """Keep the fit's state after each epoch in RUN_DIR/training_state.pt (weights, optimiser,
    generators, early stopping, the epoch log), written atomically by rank 0."""
    resume: bool = False
    """Continue from RUN_DIR/training_state.pt when it is there; a fit it marks finished is
    restored, not trained again."""


class Scorer(Protocol):
    """Scores every item for some users (higher is better): what ranking metrics need."""

    def score(self, users: Int64Array) -> Float32Array: ...


Validator = Callable[[Scorer], float]
"""Called after each epoch with the model; returns a validation metric, higher is better."""


class FloatRange(BaseModel):
    """A float searched between `low` and `high`, on a log scale when `log`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> FloatRange:
        _check_range(self.low, self.high, self.log)
        return self

    def on_edge(self, value: Any) -> bool:
        return _near_edge(float(value), self.low, self.high, self.log)


class IntRange(BaseModel):
    """An integer searched between `low` and `high` inclusive, on a log scale when `log`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> IntRange:
        _check_range(self.low, self.high, self.log)
        return self

    def on_edge(self, value: Any) -> bool:
        return int(value) in (self.low, self.high)


class Choice(BaseModel):
    """One of `values`; an ordered numeric choice is on its edge at its first or last value."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["choice"] = "choice"
    values: tuple[str | int | float | bool, ...] = Field(min_length=2)

    def on_edge(self, value: Any) -> bool:
        numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in self.values)
        return numeric and value in (min(self.values), max(self.values))


class Simplex(BaseModel):
    """Non-negative weights summing to 1, one per member of an ensemble.

    On its edge when a member's weight falls under `floor`: the blend has nearly dropped it.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["simplex"] = "simplex"
    floor: float = Field(default=0.05, ge=0, lt=1)

    def on_edge(self, value: Any) -> bool:
        return min(float(v) for v in value) < self.floor


SearchParam = Annotated[FloatRange | IntRange | Choice | Simplex, Field(discriminator="kind")]
"""One searched setting of a recommender's config (`RecommenderSpec.search_space`)."""


def _check_range(low: float, high: float, log: bool) -> None:
    if not low < high:
        raise ValueError(f"a range needs low < high, got [{low}, {high}]")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, got {low}")


def _near_edge(value: float, low: float, high: float, log: bool, within: float = 0.02) -> bool:
    """Within `within` of the range's width (in log space for log ranges) from either end."""
    if log:
        value, low, high = math.log(value), math.log(low), math.log(high)
    margin = within * (high - low)
    return value <= low + margin or value >= high - margin


class EpochRecord(BaseModel):
    """One line of a run's `metrics.jsonl`."""

    epoch: int
    train_loss: float
    valid: float | None = None
    seconds: float


class FitReport(BaseModel):
    model: str
    epochs: int
    best_epoch: int
    best_valid: float | None = None
    seconds: float
    history: list[EpochRecord] = Field(default_factory=list)


@runtime_checkable
class Recommender(Protocol):
    """Fits on interactions in index space and scores all items for users."""

    name: str

    def fit(
        self, train: InteractionLog, ctx: TrainContext, validate: Validator | None = None
    ) -> FitReport: ...

    def score(self, users: Int64Array) -> Float32Array: ...

    def save(self, path: Path) -> None: ...


@runtime_checkable
class HistoryScorer(Protocol):
    """A recommender that scores every item for a visitor it never trained on, from the
    visitor's history alone (a live session): log item indices, oldest first."""

    @property
    def history_window(self) -> int | None:
        """The most recent items a history is cut to; None when the model reads all of it."""
        ...

    def score_histories(self, histories: Sequence[Int64Array]) -> Float32Array: ...


@runtime_checkable
class HistoryUpdatable(Protocol):
    """A recommender whose per-user state is only each user's history, so the histories can
    be swapped without retraining: fitted on a protocol's validation part, it then scores the
    test's users from their test-time histories, the protocol ICLRec, S3-Rec and RecBole
    report (`bench recsys --no-refit`)."""

    def update_histories(self, train: InteractionLog) -> None:
        """Take every user's history from `train` (the same catalogue), weights untouched."""
        ...


@runtime_checkable
class ImageEncoder(Protocol):
    """Maps packed uint8 RGB images to L2-normalised float32 embeddings."""

    @property
    def embedding_dim(self) -> int: ...

    @property
    def image_size(self) -> int: ...

    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array: ...


Runtime = Literal["torch", "onnx", "onnx-int8"]
"""What embeds images and texts: eager PyTorch, or ONNX Runtime on the run's export
(`pinlab export onnx`) in float32 or int8."""

OnnxKind = Literal["image-encoder", "image-text-tower", "text-tower"]


class OnnxMetadata(BaseModel):
    """What a pinlab ONNX file says about itself, in its `metadata_props` (`pinlab.<field>`).

    A loader compares it with the model the run has now: the checkpoint's SHA-256, the kind
    and precision, and the input the graph takes.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: OnnxKind
    precision: Literal["fp32", "int8"]
    source: str = Field(description="The checkpoint (or text model) it was exported from.")
    source_sha256: str = Field(description="SHA-256 of the source's weights file.")
    model_id: str = Field(description="The source model's id, as index manifests name it.")
    run: str | None = Field(default=None, description="The run directory it was exported in.")
    inputs: str = Field(description="The graph's inputs, e.g. 'images: uint8 [N, 32, 32, 3]'.")
    embedding_dim: PositiveInt
    image_size: PositiveInt | None = Field(default=None, description="Image models only.")
    max_seq_length: PositiveInt | None = Field(default=None, description="The text tower only.")
    quantization: str | None = Field(default=None, description="int8 only: how it was made.")
    exported_with: str = Field(description="torch, onnx and onnxruntime versions.")


class OnnxAgreement(BaseModel):
    """How close an ONNX model's embeddings are to eager PyTorch's on the same inputs."""

    model_config = ConfigDict(extra="forbid")

    samples: PositiveInt
    max_abs_diff: float
    min_cosine: float
    mean_cosine: float


class OnnxExport(BaseModel):
    """One ONNX file written by an export, and how it compared with eager PyTorch."""

    model_config = ConfigDict(extra="forbid")

    file: str
    kind: OnnxKind
    precision: Literal["fp32", "int8"]
    bytes: int
    seconds: float = Field(description="Export (or quantization) and the check, wall clock.")
    agreement: OnnxAgreement
    bound: str = Field(description="What the agreement must meet, e.g. 'max_abs_diff <= 1e-4'.")
    within: bool = Field(description="fp32 files are only written within it; int8 ones say.")


class PopularityConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MFConfig(BaseModel):
    """Matrix factorisation trained with BPR (LearnBPR's SGD) or the softmax (Adam).

    The defaults are Cornac's BPR in Microsoft Recommenders' MovieLens benchmark: 200
    factors, step 0.01, lambda 0.001, an item bias, small initial factors; the epoch count
    (at most 200, Cornac's) is early-stopped on validation.

    `l2` is per-sample regularisation (Rendle et al., 2009): every sample pulls the rows it
    touches (its user, its items and their biases) towards zero by `lr * l2 * row`, so a row
    is shrunk as often as it is trained, never while it sits idle.
    """

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 200
    loss: Literal["bpr", "softmax"] = "bpr"
    epochs: PositiveInt = 200
    batch_size: PositiveInt = Field(
        default=1024, description="Samples per Adam step (softmax); LearnBPR steps per sample."
    )
    lr: PositiveFloat = Field(default=1e-2, description="SGD step per sample (bpr); Adam's.")
    l2: float = Field(default=1e-3, ge=0, description="Per-sample L2 on the rows a sample uses.")
    init_std: PositiveFloat = Field(default=1e-2, description="Std of the initial factors.")
    negatives: PositiveInt = Field(
        default=256, description="Sampled negatives per batch (softmax)."
    )
    temperature: PositiveFloat = 0.1
    # Small factors and small steps rank by popularity for the first ~30 epochs (ML-100K)
    # before they learn: a shorter patience stops them on that plateau.
    patience: PositiveInt = Field(default=30, description="Epochs without validation gain.")


class BPRConfig(MFConfig):
    """BPR-MF (Rendle et al., 2009), trained by LearnBPR: sequential SGD on (user, positive,
    negative), one sample at a time. `mf` with the loss fixed."""

    loss: Literal["bpr"] = "bpr"


class EncoderConfig(BaseModel):
    """An image encoder (the built-in CNN or a timm architecture) and its training."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(default="cnn", description="'cnn', or any timm model name.")
    pretrained: bool = Field(
        default=False, description="timm only: start from pretrained weights (cached or online)."
    )
    image_size: PositiveInt = 32
    widths: tuple[PositiveInt, ...] = (24, 48, 96, 96)
    embedding_dim: PositiveInt = 64
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(default=5e-4, ge=0)
    temperature: PositiveFloat = 0.1
    patience: PositiveInt = 5


Recipe = Literal["supcon", "simclr", "proxy-anchor"]


class RecipeConfig(BaseModel):
    """How an encoder is trained: the loss, its settings and the augmentations.

    supcon: supervised contrastive over labels; simclr: NT-Xent over two augmented views of
    each image, no labels; proxy-anchor: one learned proxy per label (Kim et al. 2020).
    """

    model_config = ConfigDict(extra="forbid")

    recipe: Recipe = "supcon"
    proxy_margin: float = Field(default=0.1, ge=0, description="Proxy-Anchor margin delta.")
    proxy_alpha: PositiveFloat = Field(default=32.0, description="Proxy-Anchor scale alpha.")
    proxy_lr_scale: PositiveFloat = Field(
        default=100.0, description="Proxies learn this many times faster than the network."
    )
    crop_scale: float = Field(
        default=0.6, gt=0, le=1, description="Smallest area share a random resized crop keeps."
    )
    rotation_degrees: float = Field(default=15.0, ge=0, le=180)
    color_jitter: float = Field(
        default=0.3, ge=0, le=1, description="Brightness, contrast, saturation strength."
    )
    hue: float = Field(
        default=0.05, ge=0, le=0.5, description="Largest hue turn, as a share of the colour circle."
    )
    grayscale_p: float = Field(default=0.1, ge=0, le=1, description="Chance of a grey view.")
    hflip: bool = True
    mixed_precision: bool = Field(default=True, description="bfloat16 autocast, CUDA only.")
    channels_last: bool = Field(default=True, description="channels_last memory, CUDA only.")


class AlignConfig(BaseModel):
    """Image-text alignment: an image tower trained into the frozen MiniLM text space."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(default="cnn", description="'cnn', or any timm model name.")
    pretrained: bool = Field(
        default=False, description="timm only: start from pretrained weights (cached or online)."
    )
    image_size: PositiveInt = 32
    widths: tuple[PositiveInt, ...] = Field(
        default=(32, 64, 128, 128), description="cnn only: channels per stage."
    )
    projection_dim: PositiveInt = Field(
        default=512, description="Hidden width of the projection into the 384-d text space."
    )
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(default=5e-4, ge=0)
    init_temperature: PositiveFloat = Field(
        default=0.07, description="Starting temperature; it is learned from there."
    )
    patience: PositiveInt = 5


class GeneratorConfig(BaseModel):
    """Text-to-image generation: a small diffusers UNet conditioned on MiniLM captions.

    The UNet works on (S / patch)^2 cells of 3 * patch^2 channels (pixel unshuffle), which cuts
    its compute by patch^2 without dropping a pixel. Captions condition it twice: their MiniLM
    token embeddings through cross-attention in the mid block (and at the deepest
    `attention_levels` levels), and their sentence embedding (with the category, when known)
    added to the timestep embedding, which scales and shifts every ResNet block (FiLM).

    With `align_weight` > 0, training also aligns the UNet's mid-block features with a frozen
    image encoder's feature map of the clean image (REPA, Yu et al. 2025), which teaches the
    network what the image shows from noisy inputs early on.

    `objective` "flow" is rectified flow matching (Liu et al. 2023; Lipman et al. 2023) with
    logit-normal times (Esser et al. 2024) and Euler sampling; "ddpm-v" is DDPM with
    v-prediction and DDIM sampling, what generators trained before flow became the default use.
    """

    model_config = ConfigDict(extra="forbid")

    image_size: PositiveInt = 32
    objective: Literal["flow", "ddpm-v"] = Field(
        default="flow", description="Rectified flow matching, or DDPM with v-prediction."
    )
    logit_mean: float = Field(
        default=0.0, description="Flow: mean of the logit-normal training times (> 0: noisier)."
    )
    logit_std: PositiveFloat = Field(default=1.0, description="Flow: their standard deviation.")
    patch: Literal[1, 2, 4] = Field(default=4, description="Pixel (un)shuffle factor.")
    # (64, 96): 28% fewer FLOPs a step than (64, 128), level with it on validation but for the
    # probe, 0.008 lower within the seeds' spread (split 0's unseen captions, 3 seeds each, one
    # judge, 2026-12-07; README, "Generating pins").
    widths: tuple[PositiveInt, ...] = Field(
        default=(64, 96), min_length=2, description="UNet channels per resolution level."
    )
    attention_levels: int = Field(
        default=0, ge=0, description="Deepest levels with caption cross-attention (mid: always)."
    )
    heads: PositiveInt = Field(default=4, description="Attention heads per block.")
    text_tokens: PositiveInt = Field(default=16, description="MiniLM tokens kept per caption.")
    category_dim: PositiveInt = Field(default=32, description="Width of the category embedding.")
    align_weight: float = Field(
        default=0.5,
        ge=0,
        description="REPA: weight of aligning the mid block's features of noisy images with "
        "an image encoder's feature map of the clean ones (Yu et al. 2025); training then needs "
        "the encoder (the run's, `train visual`). 0: no alignment, no encoder needed.",
    )
    # 0.1 over 0.05 and 0.2 on the shape judges, on validation over two seeds (README,
    # "Generating pins").
    text_dropout: float = Field(
        default=0.1, ge=0, lt=1, description="Chance a caption is dropped (classifier-free)."
    )
    category_dropout: float = Field(
        default=0.5, ge=0, le=1, description="Chance the category is dropped (captions alone)."
    )
    # Not tuned: 0.5 is "more likely than every other category together". The prior names each
    # validation caption of the default world at 0.71 or more (a tenth below 0.94).
    prior_threshold: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="Sampling from a caption alone conditions on the category the caption "
        "prior (fitted on the training captions) names, where it is at least this sure; below, "
        "on the caption alone.",
    )
    # Mirroring raised shape accuracy and precision on validation over two seeds, and the
    # validation loss kept falling to the last epoch (README, "Generating pins").
    hflip: bool = Field(
        default=True,
        description="Mirror each training image left-right with chance 1/2 (and its REPA "
        "target with it), as Ho et al. 2020 did for CIFAR-10. Turn it off where a mirrored "
        "image is not an image of the data (text, handed objects).",
    )
    train_timesteps: PositiveInt = 1000
    snr_gamma: PositiveFloat | None = Field(
        default=5.0, description="DDPM: Min-SNR loss weighting's gamma; None weighs steps equally."
    )
    # Batch 64 for 85 epochs against 128 for 100, in about the same time: more shape accuracy
    # on validation over two seeds (README, "Generating pins"). Mirrored, 100 epochs read
    # higher still, but would spend the bench's whole 25 minutes on a fast 2-core machine.
    epochs: PositiveInt = 85
    batch_size: PositiveInt = 64
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(default=0.0, ge=0)
    grad_clip: PositiveFloat | None = Field(
        default=1.0, description="Largest gradient norm per step (None: no clipping)."
    )
    ema_decay: float = Field(
        default=0.99, gt=0, lt=1, description="EMA decay, warmed up as (1 + n) / (10 + n)."
    )
    patience: PositiveInt = Field(default=6, description="Epochs without validation gain.")
    guide_epoch: PositiveInt | None = Field(
        default=10,
        description="Autoguidance (Karras et al. 2024): the EMA weights after this epoch are "
        "kept as the guide, a weaker version of the same network (None: no guide).",
    )
    autoguidance: float = Field(
        default=1.5,
        ge=0,
        le=20,
        description="Sampling: the guide's weight w, v += (w - 1) (net - guide) on top of "
        "classifier-free guidance (1: the guide is not used).",
    )
    mixed_precision: bool = Field(
        default=True,
        description="Train under bfloat16 autocast where it pays: on CUDA, or on a CPU with "
        "bfloat16 kernels where a first training step times at least 1.1x faster in it; float32 "
        "elsewhere (train.json's `precision` says which). Sampling stays float32.",
    )

    @model_validator(mode="after")
    def _fits(self) -> GeneratorConfig:
        cells = self.image_size // self.patch
        if self.image_size % self.patch or cells % 2 ** (len(self.widths) - 1):
            raise ValueError(
                f"image_size {self.image_size} over patch {self.patch} must halve "
                f"{len(self.widths) - 1} times evenly; change widths or patch"
            )
        if self.attention_levels > len(self.widths):
            raise ValueError(f"attention_levels is at most len(widths) = {len(self.widths)}")
        if any(w % 8 or w % self.heads for w in self.widths):
            raise ValueError(f"widths must be multiples of 8 and of heads ({self.heads})")
        return self


class ClassifierConfig(BaseModel):
    """A multi-head CNN classifier of real pins (category, palette): what judges generated ones."""

    model_config = ConfigDict(extra="forbid")

    image_size: PositiveInt = 32
    # Four stages, so the deepest sees the whole 32-pixel pin (three saw 18 pixels, less than
    # a shape). Validation accuracy (category / palette, one run each, 2026-12-06): three stages
    # 0.957 / 1.000 after 150 epochs; four (32, 64, 128, 128) 0.978 / 0.991, 0.988 / 0.994 and
    # 0.988 / 0.994 after 60, 100 and 150; four ending in 256 0.981 / 0.994 and 0.988 / 0.991
    # after 100 and 150; five (..., 256, 256) 0.988 / 0.994 after 150. 100 epochs of
    # (32, 64, 128, 128) tie the best and cost least of them (163 s against 208 s for 150).
    widths: tuple[PositiveInt, ...] = (32, 64, 128, 128)
    # The whole one-cycle schedule: patience 5 once stopped a run in the noisy epochs near the
    # peak rate, so patience spans it.
    epochs: PositiveInt = 100
    # Chosen for three stages (category / palette, one run each, bfloat16, 150 epochs): batch 64
    # at 2e-3 0.954 / 0.997 (126 s on 2 cores); batch 128 at 2e-3 0.935 / 0.997, at 4e-3 0.957 /
    # 1.000 (107 s), at 6e-3 0.960 / 0.997; batch 256 at 8e-3 0.954 / 1.000 (101 s).
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 4e-3
    weight_decay: float = Field(default=5e-4, ge=0)
    patience: PositiveInt = 100
    # bfloat16 autocast in training where it pays (CUDA; a CPU where a step times faster in it,
    # `bfloat16_pays`): on an AMD EPYC with AVX512-BF16 at batch 64, 126 against 159 s in
    # float32 on 2 cores, validation accuracy the same (category 0.954, palette 0.997 both).
    mixed_precision: bool = True


class GenerateLimits(BaseModel):
    """What one generation request may ask for; past these it is refused before it starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_images: PositiveInt = 64
    max_steps: PositiveInt = 200
    max_guidance: PositiveFloat = 20.0
    max_prompt_chars: PositiveInt = 200


class EASEConfig(BaseModel):
    """EASE (Steck, 2019): a closed-form item-item model with a zero diagonal."""

    model_config = ConfigDict(extra="forbid")

    l2: PositiveFloat = Field(default=500.0, description="L2 penalty on the item-item weights.")


class DLAEConfig(BaseModel):
    """A denoising linear autoencoder (Steck, 2020) on data-adaptively normalised input.

    `dropout` is the input dropout the closed form emulates (penalty `p/(1-p) * diag(G)`),
    which keeps the model off the identity without EASE's zero-diagonal constraint;
    `user_norm` weights each user's row by `degree**-user_norm` in the Gram matrix, so heavy
    users do not dominate it, and `item_norm` rescales the weights by item popularity (DAN,
    Park et al., 2025). `l2` is given at the scale of an average user and divided by
    `mean_degree**user_norm`, so its meaning does not move with `user_norm`.
    """

    model_config = ConfigDict(extra="forbid")

    l2: PositiveFloat = 250.0
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0)
    user_norm: float = Field(default=0.5, ge=0.0, le=1.0)
    item_norm: float = Field(default=0.0, ge=0.0, le=1.0)


class ItemKNNConfig(BaseModel):
    """Item-based nearest neighbours with shrunk cosine similarity."""

    model_config = ConfigDict(extra="forbid")

    neighbours: PositiveInt = Field(default=100, description="Similar items kept per item.")
    shrink: float = Field(default=10.0, ge=0.0, description="Added to the cosine denominator.")


class RP3BetaConfig(BaseModel):
    """RP3beta (Paudel et al., 2017): three-step random walks, damped by popularity."""

    model_config = ConfigDict(extra="forbid")

    alpha: PositiveFloat = 1.0
    beta: float = Field(default=0.5, ge=0.0)
    neighbours: PositiveInt = 200


class IALSConfig(BaseModel):
    """Implicit ALS (Hu et al., 2008) with a conjugate-gradient or exact solve, in PyTorch."""

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    l2: PositiveFloat = Field(default=1.0, description="L2 penalty on every factor.")
    alpha: PositiveFloat = Field(default=10.0, description="Confidence of an observed pair.")
    iterations: PositiveInt = 15
    cg_steps: int = Field(default=3, ge=0, description="0 solves each least squares exactly.")
    patience: PositiveInt = 3


class HybridConfig(BaseModel):
    """The cold-start hybrid: item vectors from item features, plus id vectors for warm items."""

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    hidden_dim: PositiveInt = Field(default=256, description="Width of the feature map's layer.")
    item_dropout: float = Field(
        default=0.5, ge=0, lt=1, description="Share of items trained on their features alone."
    )
    epochs: PositiveInt = 30
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = 5e-3
    weight_decay: float = Field(default=1e-6, ge=0)
    temperature: PositiveFloat = 0.1
    negatives: PositiveInt = Field(
        default=4096,
        description="Past this many warm items, each step's softmax is over this many drawn "
        "uniformly among them (plus the positive) instead of all of them.",
    )
    patience: PositiveInt = Field(default=4, description="Epochs without validation gain.")


class EnsembleConfig(BaseModel):
    """A weighted sum of member models' per-user standardised scores.

    A full-rank item-item model and low-rank factor models err differently, so their blend
    ranks better than any one (as in the Netflix Prize blends). The default members won on
    validation only: on ML-100K's three stratified splits, (DLAE, iALS, BPR) validated at a
    mean ndcg@10 of 0.1864 against 0.1851 for (DLAE, iALS), 0.1841 for (DLAE, BPR) and
    0.1859 with EASE and RP3beta added. `member_settings` holds each member's own settings;
    `pinlab bench recsys` fills it with what validation chose.
    """

    model_config = ConfigDict(extra="forbid")

    members: tuple[str, ...] = ("dlae", "ials", "bpr")
    weights: tuple[PositiveFloat, ...] | None = Field(
        default=None, description="One per member; None weighs them equally."
    )
    member_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_weight_per_member(self) -> EnsembleConfig:
        if len(self.members) < 2:
            raise ValueError("an ensemble needs at least two members")
        if "ensemble" in self.members:
            raise ValueError("an ensemble cannot contain an ensemble")
        if self.weights is not None and len(self.weights) != len(self.members):
            raise ValueError(f"give one weight per member ({len(self.members)})")
        return self


class SASRecConfig(BaseModel):
    """A causal transformer over each user's item sequence (SASRec, Kang and McAuley, 2018).

    `loss="softmax"` scores the next item against the whole catalogue (cross-entropy, as in
    gSASRec and BERT4Rec's comparisons), `"bce"` is the paper's one sampled negative per
    position. `"sampled-softmax"` and `"gbce"` score it against `negatives` items drawn
    uniformly per sequence (shared by its positions): cross-entropy over them, or gSASRec's
    generalised BCE (Petrov and Macdonald, RecSys 2023), whose positive term is raised to
    beta = alpha (t (1 - 1/alpha) + 1/alpha), alpha the sampling rate, to undo the
    overconfidence negative sampling teaches. `dense_window > 1` is
    PinnerFormer's dense all-action loss (Pancha et al., 2022): each position predicts every
    item of the next `dense_window` steps, not only the next one (full softmax only).
    """

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 2
    max_len: PositiveInt = Field(default=50, description="Most recent items a user keeps.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    loss: Literal["softmax", "bce", "sampled-softmax", "gbce"] = "softmax"
    negatives: PositiveInt = Field(
        default=256, description="Items drawn per sequence (sampled-softmax, gbce)."
    )
    gbce_t: float = Field(
        default=0.75, ge=0.0, le=1.0, description="gBCE calibration: 0 is BCE, 1 undoes it."
    )
    dense_window: PositiveInt = 1
    epochs: PositiveInt = 100
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(default=0.0, ge=0)
    patience: PositiveInt = 5
    eval_every: PositiveInt = Field(default=2, description="Epochs between validation checks.")


class BERT4RecConfig(BaseModel):
    """BERT4Rec (Sun et al., CIKM 2019): a bidirectional transformer trained to fill in items
    masked at random (the cloze task), full softmax over the catalogue at masked positions.
    A user is scored by a mask token appended after their most recent `max_len - 1` items."""

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 2
    max_len: int = Field(default=50, ge=2, description="Positions, the scoring mask included.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    mask_prob: float = Field(default=0.2, gt=0.0, lt=1.0, description="Items masked per step.")
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=0.0, ge=0)
    patience: PositiveInt = 5
    eval_every: PositiveInt = Field(default=2, description="Epochs between validation checks.")


class HSTUConfig(BaseModel):
    """An HSTU-style generative recommender (Zhai et al., "Actions Speak Louder than Words",
    ICML 2024): each layer gates pointwise aggregated attention, SiLU(QK^T + bias) V / n with
    no softmax, by U; the bias is learned per relative position and per log-bucket of the
    time gap between the two actions. Next item by sampled softmax over `negatives` draws per
    sequence (the paper's loss), or the full softmax."""

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    layers: PositiveInt = 2
    heads: PositiveInt = 2
    max_len: PositiveInt = Field(default=50, description="Most recent items a user keeps.")
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    time_buckets: PositiveInt = Field(
        default=32, description="Log buckets of the time gap between two actions."
    )
    loss: Literal["softmax", "sampled-softmax"] = "sampled-softmax"
    negatives: PositiveInt = Field(default=256, description="Items drawn per sequence.")
    epochs: PositiveInt = 200
    batch_size: PositiveInt = 128
    lr: PositiveFloat = 1e-3
    weight_decay: float = Field(default=0.0, ge=0)
    patience: PositiveInt = 5
    eval_every: PositiveInt = Field(default=2, description="Epochs between validation checks.")


class GSASRecConfig(SASRecConfig):
    """gSASRec (Petrov and Macdonald, RecSys 2023): SASRec trained with gBCE over 256
    sampled negatives, t = 0.75, the paper's recommended setting.

    BCE-family losses first learn popularity and leave that plateau slowly: on MovieLens-100K
    leave-last-out, SASRec's 5 validations of patience stopped it at popularity's level
    (validation ndcg@10 0.034), while 30 let it climb to 0.072 by epoch 200, still rising
    (SASRec with the full softmax: 0.101). Hence more epochs and patience here."""

    loss: Literal["softmax", "bce", "sampled-softmax", "gbce"] = "gbce"
    epochs: PositiveInt = 400
    patience: PositiveInt = 30


class TwoTowerConfig(BaseModel):
    """Two-tower retrieval: a user tower and an item tower meet in one unit-sphere space.

    The item tower adds a projection of the item's side features (its text embedded by the
    packaged MiniLM, when given) to an id embedding; the user tower pools the items of the
    user's recent history with a user id embedding. Trained with in-batch sampled softmax,
    each logit corrected by the log of the item's sampling probability (logQ, Yi et al., 2019)
    so popular items are not over-penalised as negatives.
    """

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 64
    history_len: PositiveInt = 50
    epochs: PositiveInt = 40
    batch_size: PositiveInt = 512
    lr: PositiveFloat = 2e-3
    weight_decay: float = Field(default=1e-6, ge=0)
    temperature: PositiveFloat = 0.05
    logq: bool = Field(default=True, description="Subtract log sampling probability.")
    patience: PositiveInt = 4


class MultVaeConfig(BaseModel):
    """Mult-VAE (Liang, Krishnan, Hoffman and Jebara, WWW 2018): a variational autoencoder of
    each user's binary item row under a multinomial likelihood.

    The row, L2-normalised and dropped out (`dropout`) in training, is encoded by a
    `hidden_dim` tanh layer into the mean and log-variance of a `latent_dim` Gaussian; a
    sample (the mean when scoring) is decoded by a `hidden_dim` tanh layer into logits over
    the catalogue. The loss per user is minus the log-softmax of the logits summed over the
    row's items, plus beta times the KL divergence to N(0, I), beta = min(`anneal_cap`,
    updates / `total_anneal_steps`), plus `l2` times the squared weight matrices.

    The paper anneals over 200,000 updates of 500 users on ML-20M (about 230 updates an
    epoch), reaching its cap of 0.2 after some 170 epochs. Updates per epoch scale with the
    users, so the default here is relative to a MovieLens-100K-sized log (a few hundred to a
    few thousand users: 2 to 10 updates an epoch): 1,000 updates reach beta 0.2 after 200
    updates, i.e. within the first 20 to 100 epochs. On a log of 100,000 users, raise it
    (about 400 updates per epoch per 200,000 users reaches the cap in the paper's epochs).
    """

    model_config = ConfigDict(extra="forbid")

    hidden_dim: PositiveInt = Field(default=600, description="Encoder and decoder tanh layer.")
    latent_dim: PositiveInt = Field(default=200, description="Gaussian latent size.")
    dropout: float = Field(default=0.5, ge=0.0, lt=1.0, description="On the input row.")
    anneal_cap: float = Field(default=0.2, ge=0.0, description="Largest KL weight beta.")
    total_anneal_steps: PositiveInt = Field(
        default=1000, description="Updates over which beta would rise from 0 to 1."
    )
    epochs: PositiveInt = Field(default=300, description="Passes at most (early-stopped).")
    batch_size: PositiveInt = Field(default=500, description="Users per Adam step.")
    lr: PositiveFloat = Field(default=1e-3, description="Adam's step size.")
    l2: float = Field(default=1e-6, ge=0, description="Times the squared weight matrices.")
    patience: PositiveInt = Field(default=20, description="Epochs without validation gain.")


# --- slate policies: act in the simulator (pinlab_data.Simulator), log propensities ---------

Feedback = Literal["all", "cascade"]
"""Which shown positions a learner treats as seen: all of them, or (cascade) those down to the
first click (every one when nothing was clicked), as a user scanning from the top would."""


@dataclass(frozen=True)
class SlateChoice:
    """One batch of slates a policy chose, with the probabilities it chose them with."""

    slates: Int64Array
    """(B, k) items, top first."""
    pscore: Float64Array | None
    """(B, k) the probability the policy puts slates[b, p] at position p (None: unknown or
    not asked for)."""
    pscore_slate: Float64Array | None = None
    """(B,) the probability of the whole slate (None: unknown)."""


class SlatePolicy(Protocol):
    """Chooses slates for a batch of contexts (one row per user) and may learn from clicks.

    `act` takes the generator it draws from, so the caller owns the seed. `update` receives
    what the same batch showed and its clicks (B, k); a fixed policy ignores it.
    """

    @property
    def name(self) -> str: ...

    @property
    def slate_size(self) -> int: ...

    @property
    def num_items(self) -> int: ...

    def act(
        self, context: Float64Array, rng: np.random.Generator, *, propensities: bool = True
    ) -> SlateChoice:
        """Slates for the contexts; `propensities=False` spares computing their
        probabilities (pscore None) where nothing will log them."""
        ...

    def update(self, context: Float64Array, slates: Int64Array, clicks: Float64Array) -> None: ...


@runtime_checkable
class StationaryPolicy(SlatePolicy, Protocol):
    """A policy whose choice depends on the context alone, with exact marginals: what
    off-policy evaluation can target and the simulator can value exactly."""

    def marginals(self, context: Float64Array) -> Float64Array:
        """(B, items, k): the probability of each item at each position."""
        ...


class SoftmaxConfig(BaseModel):
    """A fitted recommender's scores, standardised per user, under a Plackett-Luce softmax."""

    model_config = ConfigDict(extra="forbid")

    temperature: PositiveFloat = Field(
        default=0.5, description="Divides the per-user standardised scores; lower is greedier."
    )


class EpsilonGreedyConfig(BaseModel):
    """A greedy slate with probability 1 - epsilon, a uniformly random one otherwise."""

    model_config = ConfigDict(extra="forbid")

    epsilon: float = Field(default=0.2, ge=0, le=1)


class LinearBanditConfig(BaseModel):
    """Disjoint ridge regression per item on the context and an intercept (Li et al. 2010),
    updated after every batch; how it explores depends on the policy (`linucb`: the upper
    bound with `alpha`; `thompson`: posterior draws scaled by `noise`; `online-greedy`: none;
    `online-epsilon-greedy`: `epsilon`)."""

    model_config = ConfigDict(extra="forbid")

    l2: PositiveFloat = Field(default=1.0, description="Ridge penalty (prior precision).")
    alpha: float = Field(default=0.3, ge=0, description="linucb: width of the upper bound.")
    noise: PositiveFloat = Field(
        default=0.3, description="thompson: posterior scale (the reward noise's std)."
    )
    epsilon: float = Field(default=0.1, ge=0, le=1, description="online-epsilon-greedy only.")
    feedback: Feedback = "all"
    propensity_samples: int = Field(
        default=0,
        ge=0,
        description="thompson: posterior draws that estimate logged propensities (0: none).",
    )


class NeuralLinearConfig(BaseModel):
    """Neural-linear Thompson sampling (Riquelme, Tucker & Snoek 2018): an MLP over the context,
    the item's embedding and their product learns a representation from the clicks; a Bayesian
    linear regression on its last hidden layer draws the scores. The network is refitted on
    everything seen after `first_refit` rounds, then after gaps that double up to
    `retrain_every`; the regression is then recomputed on the new representation."""

    model_config = ConfigDict(extra="forbid")

    hidden: PositiveInt = 32
    first_refit: PositiveInt = Field(
        default=1_000, description="Rounds before the first refit; the gap then doubles."
    )
    retrain_every: PositiveInt = Field(default=10_000, description="The largest gap, in rounds.")
    epochs: PositiveInt = Field(default=5, description="Passes over the data per refit.")
    batch_size: PositiveInt = 1024
    lr: PositiveFloat = 3e-3
    l2: PositiveFloat = 1.0
    noise: PositiveFloat = 0.3
    feedback: Feedback = "all"


class ReinforceConfig(BaseModel):
    """REINFORCE with top-K off-policy correction (Chen et al., WSDM 2019), from logs.

    pi(a | s) = softmax over items of user_tower(s) . (item embedding map + item bias); the
    loss per logged impression is -min(pi/beta, weight_cap) * lambda_K * reward * log pi(a|s),
    with lambda_K = K (1 - pi)^(K - 1) (both weights held constant in the gradient) and beta
    the logger's per-draw probability of the item: `known` from the logs (its marginals over
    positions, summed, / K), or `learned` by a second softmax head fitted to the logged items
    on the same user state, its gradient stopped from the state, as the paper does.
    """

    model_config = ConfigDict(extra="forbid")

    dim: PositiveInt = 32
    hidden: PositiveInt = 64
    top_k: PositiveInt | None = Field(
        default=None, description="K of the correction; default the slate size."
    )
    beta: Literal["known", "learned"] = "known"
    weight_cap: PositiveFloat = Field(
        default=5.0, description="Caps pi/beta: less variance, more bias (20 did worse here)."
    )
    epochs: PositiveInt = 60
    batch_size: PositiveInt = 2048
    lr: PositiveFloat = 3e-3
    weight_decay: float = Field(default=1e-5, ge=0)
    entropy: float = Field(
        default=0.0, ge=0, description="Bonus on the policy's entropy (0: the paper's loss)."
    )


# pinlab new: recommender configs go above this line (`pinlab new recommender NAME`)
