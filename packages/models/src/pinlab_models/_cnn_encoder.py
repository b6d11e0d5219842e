"""The built-in CNN image encoder, trained from scratch with supervised contrastive loss."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import Float32Array, ImageArray, Int64Array
from pinlab_models._architectures import build_network, register_encoder_arch
from pinlab_models._runtime import (
    EarlyStopping,
    EpochLog,
    Stopwatch,
    epoch_progress,
    file_digest,
    load_checkpoint,
    save_checkpoint,
    seed_everything,
)
from pinlab_models.contracts import (
    EncoderConfig,
    EpochRecord,
    FitReport,
    ImageEncoder,
    PinlabModelError,
    TrainContext,
)

CHECKPOINT_KIND = "pinlab-image-encoder"
EncoderValidator = Callable[[ImageEncoder], float]


class ConvNet(nn.Module):
    """Conv-BN-ReLU stages halving resolution, global average pool, linear embedding."""

    def __init__(self, widths: tuple[int, ...], embedding_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for i, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(channels, embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=(2, 3))
        return F.normalize(self.head(pooled), dim=1)

    def feature_map(self, x: torch.Tensor, cells: int) -> torch.Tensor:
        """The (N, C, h, w) features of the deepest stage at least `cells` wide."""
        kept = x
        for layer in self.features:
            x = layer(x)
            if x.shape[-1] < cells:
                break
            if isinstance(layer, nn.ReLU):  # a stage ends at its ReLU
                kept = x
        return kept


register_encoder_arch("cnn", lambda config: ConvNet(config.widths, config.embedding_dim))


def to_input(batch: torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 to (N, 3, H, W) float centred on zero."""
    return batch.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)


def input_chunks(
    images: np.ndarray, batch_size: int, device: str
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, input-form chunk on `device`) over uint8 (N, H, W, 3) `images`, in order."""
    for start in range(0, len(images), batch_size):
        chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size]))
        yield start, to_input(chunk.to(device))


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random view of a batch: right-angle turns, flips, colour and noise changes.

    The pins already vary in position, scale and rotation; the view adds what the world
    varies least cheaply: palette (channel permutation, grey, contrast) and orientation.
    """
    n, device = x.shape[0], x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen).to(device)

    turns = int(torch.randint(0, 4, (1,), generator=gen))
    x = torch.rot90(x, turns, dims=(2, 3))
    x = torch.where((rand(n) < 0.5)[:, None, None, None], x.flip(3), x)
    perm = torch.argsort(torch.rand(n, 3, generator=gen), dim=1).to(device)
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    gray = x.mean(dim=1, keepdim=True).expand_as(x)
    x = torch.where((rand(n) < 0.2)[:, None, None, None], gray, x)
    x = torch.where((rand(n) < 0.2)[:, None, None, None], -x, x)
    contrast = (0.6 + rand(n) * 0.8)[:, None, None, None]
    brightness = ((rand(n) - 0.5) * 0.6)[:, None, None, None]
    x = x * contrast + brightness
    return x + torch.randn(x.shape, generator=gen).to(device) * 0.05


def supcon_loss(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al., 2020), the L_out form.

    Every other view with the same label is a positive; the anchor itself is excluded.
    """
    logits = z @ z.T / temperature
    self_mask = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    pos_count = positives.sum(dim=1).clamp(min=1)
    return -(log_prob.masked_fill(~positives, 0.0).sum(dim=1) / pos_count).mean()


class CNNEncoder:
    """An image encoder of any registered architecture (`config.arch`, the CNN by default).

    Satisfies the ImageEncoder Protocol.
    """

    def __init__(self, config: EncoderConfig, device: str = "cpu") -> None:
        self.config = config
        self.device = device
        self.net = build_network(config).to(device)
        self.model_id = "untrained"

    @property
    def embedding_dim(self) -> int:
        return self.config.embedding_dim

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @torch.no_grad()
    def embed(self, images: ImageArray, batch_size: int = 512) -> Float32Array:
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise PinlabModelError(
                f"encoder expects images of shape (N, {self.image_size}, {self.image_size}, 3), "
                f"got {images.shape}; resize them to the encoder's image size"
            )
        was_training = self.net.training
        self.net.eval()
        out = np.empty((len(images), self.embedding_dim), dtype=np.float32)
        for start, chunk in input_chunks(images, batch_size, self.device):
            out[start : start + len(chunk)] = self.net(chunk).cpu()
        self.net.train(was_training)
        return out

    @torch.no_grad()
    def feature_map(self, x: torch.Tensor, cells: int) -> torch.Tensor:
        """Spatial features (N, C, h, w) of images already in the input form ((N, 3, S, S) in
        [-1, 1], `to_input`): the built-in CNN's deepest stage at least `cells` wide, a timm
        backbone's last map. What the generator aligns with (REPA). Call it on an encoder in
        eval mode, as `load` leaves it."""
        method = getattr(self.net, "feature_map", None)
        maps = method(x, cells) if callable(method) else None
        if not isinstance(maps, torch.Tensor) or maps.ndim != 4:
            raise PinlabModelError(
                f"the {self.config.arch!r} encoder has no spatial feature map to align a "
                "generator with; use the built-in 'cnn' encoder or set align_weight=0"
            )
        return maps

    def save(self, path: Path) -> str:
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        digest = save_checkpoint(
            path, {"kind": CHECKPOINT_KIND, "config": self.config.model_dump(), "state": state}
        )
        self.model_id = f"{self.config.arch}-{digest}"
        return self.model_id

    @classmethod
    def load(cls, path: Path, device: str = "cpu") -> CNNEncoder:
        payload = load_checkpoint(path, CHECKPOINT_KIND)
        config = EncoderConfig.model_validate(payload["config"])
        # The checkpoint holds every weight: never fetch pretrained ones to overwrite.
        encoder = cls(config.model_copy(update={"pretrained": False}), device)
        encoder.config = config
        encoder.net.load_state_dict(payload["state"])
        encoder.net.eval()
        encoder.model_id = f"{config.arch}-{file_digest(path)}"
        return encoder


def train_encoder(
    images: ImageArray,
    labels: Int64Array,
    config: EncoderConfig,
    ctx: TrainContext,
    validate: EncoderValidator | None = None,
) -> tuple[CNNEncoder, FitReport]:
    """Train a CNNEncoder on labelled images; keeps the epoch with the best validation score."""
    if len(images) != len(labels) or len(images) < 2:
        raise PinlabModelError(
            f"need at least 2 labelled images with one label each, got {len(images)} images "
            f"and {len(labels)} labels"
        )
    gen = seed_everything(ctx.seed)
    encoder = CNNEncoder(config, ctx.device)
    net = encoder.net
    steps_per_epoch = max(1, len(images) // config.batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.15
    )
    labels_t = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log = EpochLog(ctx.run_dir)
    stopper = EarlyStopping(config.patience)
    clock = Stopwatch()
    with epoch_progress("train encoder", config.epochs, ctx) as progress:
        for epoch in range(1, config.epochs + 1):
            epoch_clock = Stopwatch()
            net.train()
            order = torch.randperm(len(images), generator=gen)
            total = 0.0
            for step in range(steps_per_epoch):
                idx = order[step * config.batch_size : (step + 1) * config.batch_size]
                batch = torch.from_numpy(np.ascontiguousarray(images[idx.numpy()]))
                x = to_input(batch.to(ctx.device))
                # One view per image: the positives are the other pins of its category.
                y = labels_t[idx].to(ctx.device)
                loss = supcon_loss(net(augment(x, gen)), y, config.temperature)
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                optimizer.step()
                schedule.step()
                total += float(loss.detach())
            valid = validate(encoder) if validate else None
            record = EpochRecord(
                epoch=epoch,
                train_loss=total / steps_per_epoch,
                valid=valid,
                seconds=epoch_clock(),
            )
            log.write(record)
            progress.update(epoch, record.train_loss, valid)
            if stopper.update(epoch, valid, net):
                break
    stopper.restore(net)
    net.eval()
    report = FitReport(
        model="cnn",
        epochs=len(log.records),
        best_epoch=stopper.best_epoch,
        best_valid=stopper.best,
        seconds=clock(),
        history=log.records,
    )
    return encoder, report
