"""Image-text alignment, LiT-style: an image tower trained into the frozen MiniLM text space.

The text tower is the packaged MiniLM (`TextEncoder`), never trained; its caption embeddings are
computed once. The image tower (the built-in CNN, or any backbone module, with a projection to
384 dimensions) learns with a symmetric InfoNCE loss and a learned temperature (CLIP, Radford et
al. 2021; LiT, Zhai et al. 2022 locks one tower the same way). Pins that share a caption are
never each other's negatives: texts are de-duplicated per batch and an image of a repeated
caption is a positive of that caption.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, ImageArray, Int64Array
from pinlab_models._architectures import build_network
from pinlab_models._cnn_encoder import ConvNet, input_chunks, to_input
from pinlab_models._runtime import (
    EarlyStopping,
    EpochLog,
    Stopwatch,
    epoch_progress,
    file_digest,
    image_batches,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from pinlab_models._text import MINILM_DIM, MINILM_ID, TextEncoder
from pinlab_models.contracts import (
    AlignConfig,
    EncoderConfig,
    EpochRecord,
    FitReport,
    PinlabModelError,
    TrainContext,
)

CHECKPOINT_KIND = "pinlab-image-text"
MAX_LOGIT_SCALE = 100.0
"""CLIP's cap on 1 / temperature, which keeps the learned temperature from collapsing."""
AlignValidator = Callable[["ImageTextModel"], float]


class _CNNBackbone(nn.Module):
    """The built-in CNN's convolutional stages and global average pool: (N, 3, H, W) -> (N, C)."""

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.features = ConvNet(widths, embedding_dim=1).features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled: torch.Tensor = self.features(x).mean(dim=(2, 3))
        return pooled


class ImageTower(nn.Module):
    """A backbone, then a two-layer projection into the text space, L2-normalised."""

    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projection = nn.Sequential(
            nn.Linear(feature_dim, hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, MINILM_DIM),
        )
        # log(1 / temperature); it lives in the tower so checkpoints and early stopping keep it.
        self.logit_scale = nn.Parameter(torch.tensor(0.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection(self.backbone(x)), dim=1)


def build_tower(config: AlignConfig, pretrained: bool | None = None) -> ImageTower:
    """The image tower `config.arch` names: the built-in CNN's pooled features, or any network
    of the encoder registry (a timm name) with its embedding as the backbone's output.

    `pretrained` overrides the config's (a checkpoint brings its own weights).
    """
    if config.arch == "cnn":
        return ImageTower(_CNNBackbone(config.widths), config.widths[-1], config.projection_dim)
    encoder = EncoderConfig(
        arch=config.arch,
        pretrained=config.pretrained if pretrained is None else pretrained,
        image_size=config.image_size,
        embedding_dim=config.projection_dim,
    )
    return ImageTower(build_network(encoder), config.projection_dim, config.projection_dim)


class ImageTextModel:
    """Images and texts in one 384-d space: MiniLM for texts, the aligned tower for images.

    Also an `ImageEncoder` (`embed`), so an index built from it answers text queries.
    """

    def __init__(
        self,
        tower: ImageTower,
        config: AlignConfig,
        device: str = "cpu",
        text_encoder: TextEncoder | None = None,
    ) -> None:
        self.tower = tower.to(device)
        self.config = config
        self.device = device
        self._text = text_encoder
        self.model_id = "unsaved"

    @property
    def embedding_dim(self) -> int:
        return MINILM_DIM

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def temperature(self) -> float:
        return 1.0 / float(self.tower.logit_scale.detach().exp())

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder(self.device)
        return self._text

    @torch.no_grad()
    def embed_images(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        """(n, 384) unit float32 rows for (n, S, S, 3) uint8 images, S the model's image size."""
        size = self.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise PinlabModelError(
                f"the image-text model expects images of shape (N, {size}, {size}, 3), got "
                f"{images.shape}; resize them to the model's image size"
            )
        was_training = self.tower.training
        self.tower.eval()
        out = np.empty((len(images), MINILM_DIM), dtype=np.float32)
        for start, chunk in input_chunks(images, batch_size, self.device):
            out[start : start + len(chunk)] = self.tower(chunk).cpu()
        self.tower.train(was_training)
        return out

    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        return self.embed_images(images, batch_size)

    def embed_texts(self, texts: Sequence[str]) -> Float32Array:
        """(n, 384) unit float32 rows; an empty text raises PinlabModelError."""
        return self.text_encoder.encode(texts)

    def save(self, path: Path) -> str:
        """Write the checkpoint atomically; returns the model id (`align-` + its digest)."""
        state = {k: v.cpu() for k, v in self.tower.state_dict().items()}
        payload = {
            "kind": CHECKPOINT_KIND,
            "config": self.config.model_dump(),
            "text_model": MINILM_ID,
            "state": state,
        }
        self.model_id = f"align-{save_checkpoint(path, payload)}"
        return self.model_id


def load_alignment_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's payload, refused unless its tower was aligned to this MiniLM."""
    payload = load_checkpoint(path, CHECKPOINT_KIND)
    if payload.get("text_model") != MINILM_ID:
        raise PinlabModelError(
            f"{path} was aligned to {payload.get('text_model')!r}, but the text encoder here is "
            f"{MINILM_ID!r}; retrain it with `pinlab train align`"
        )
    return payload


def load_image_text_model(path: Path, device: str = "cpu") -> ImageTextModel:
    """Load a model written by `ImageTextModel.save` (weights only, never code)."""
    payload = load_alignment_checkpoint(path)
    config = AlignConfig.model_validate(payload["config"])
    tower = build_tower(config, pretrained=False)
    tower.load_state_dict(payload["state"])
    tower.eval()
    model = ImageTextModel(tower, config, device)
    model.model_id = f"align-{file_digest(path)}"
    return model


def zero_shot_labels(
    model: ImageTextModel,
    images: ImageArray,
    label_names: Sequence[str],
    template: str = "a photo of {}",
) -> Int64Array:
    """Index into `label_names` of each image's nearest label prompt (`template` per name)."""
    if not label_names:
        raise PinlabModelError("zero-shot labelling needs at least one label name")
    if "{}" not in template:
        raise PinlabModelError(f"the template {template!r} needs a {{}} where the label goes")
    prompts = model.embed_texts([template.format(name) for name in label_names])
    return np.asarray((model.embed_images(images) @ prompts.T).argmax(axis=1), dtype=np.int64)


def alignment_loss(
    images: torch.Tensor, texts: torch.Tensor, text_of_image: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """Symmetric InfoNCE between a batch of images and the batch's distinct texts.

    `texts` holds each distinct text once; `text_of_image[i]` is the row of image i's text.
    Image to text is a plain cross-entropy. Text to image scores each (text, image) pair
    against that text's negatives only, as supervised contrastive learning does (Khosla et
    al. 2020), so pins sharing a caption are positives, never each other's negatives.
    """
    logits = scale * images @ texts.T
    image_to_text = F.cross_entropy(logits, text_of_image)
    rows = torch.arange(len(texts), device=texts.device)
    positive = text_of_image[None, :] == rows[:, None]
    # A finite fill, not -inf: a text whose batch holds no negative must not give NaN gradients.
    negatives = torch.logsumexp(logits.T.masked_fill(positive, -1e4), dim=1)[text_of_image]
    own = logits[torch.arange(len(images), device=images.device), text_of_image]
    text_to_image = (torch.logaddexp(own, negatives) - own).mean()
    return (image_to_text + text_to_image) / 2


def _geometric_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Right-angle turns and flips only: colours and textures are what captions describe."""
    turns = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, turns, dims=(2, 3))
    flip = (torch.rand(len(x), generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, x.flip(3), x)


def train_alignment(
    images: ImageArray,
    captions: Sequence[str],
    config: AlignConfig,
    ctx: TrainContext,
    validate: AlignValidator | None = None,
    text_encoder: TextEncoder | None = None,
) -> tuple[ImageTextModel, FitReport]:
    """Align the image tower `config.arch` names to the captions' MiniLM embeddings.

    The caption embeddings are computed once, for the distinct captions only; the epoch with
    the best validation score is kept.
    """
    if len(images) != len(captions) or len(images) < 2:
        raise PinlabModelError(
            f"need at least 2 images with one caption each, got {len(images)} images and "
            f"{len(captions)} captions"
        )
    if images.ndim != 4 or images.shape[1:] != (config.image_size, config.image_size, 3):
        raise PinlabModelError(
            f"alignment expects images of shape (N, {config.image_size}, {config.image_size}, "
            f"3), got {images.shape}; set image_size to the dataset's"
        )
    text = text_encoder or TextEncoder(ctx.device)
    distinct, caption_row = np.unique(np.asarray(captions, dtype=object), return_inverse=True)
    text_table = torch.from_numpy(text.encode([str(c) for c in distinct])).to(ctx.device)
    caption_rows = torch.from_numpy(caption_row.astype(np.int64))

    gen = seed_everything(ctx.seed)
    model = ImageTextModel(build_tower(config), config, ctx.device, text)
    tower = model.tower
    with torch.no_grad():
        tower.logit_scale.fill_(math.log(1 / config.init_temperature))
    batch_size = min(config.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(
        tower.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.15
    )
    log = EpochLog(ctx.run_dir)
    stopper = EarlyStopping(config.patience)
    clock = Stopwatch()
    with epoch_progress("align image tower", config.epochs, ctx) as progress:
        for epoch in range(1, config.epochs + 1):
            epoch_clock = Stopwatch()
            tower.train()
            total = 0.0
            for idx, batch in image_batches(images, batch_size, gen):
                x = _geometric_view(to_input(batch.to(ctx.device)), gen)
                rows, text_of_image = torch.unique(caption_rows[idx], return_inverse=True)
                scale = tower.logit_scale.exp().clamp(max=MAX_LOGIT_SCALE)
                loss = alignment_loss(
                    tower(x), text_table[rows.to(ctx.device)], text_of_image.to(ctx.device), scale
                )
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
            valid = validate(model) if validate else None
            record = EpochRecord(
                epoch=epoch, train_loss=total / steps_per_epoch, valid=valid, seconds=epoch_clock()
            )
            log.write(record)
            progress.update(epoch, record.train_loss, valid)
            if stopper.update(epoch, valid, tower):
                break
    stopper.restore(tower)
    tower.eval()
    report = FitReport(
        model="align",
        epochs=len(log.records),
        best_epoch=stopper.best_epoch,
        best_valid=stopper.best,
        seconds=clock(),
        history=log.records,
    )
    return model, report
