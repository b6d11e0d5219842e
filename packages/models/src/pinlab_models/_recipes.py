"""Training recipes for image encoders: supervised contrastive, SimCLR and Proxy-Anchor.

Each recipe trains any registered architecture (`EncoderConfig.arch`) with augmentations
suited to product photos (random resized crop, small rotation, flip, colour jitter), done in
torch on whole batches. On CUDA, bfloat16 autocast and channels_last are used when enabled.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from contextlib import nullcontext
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import ImageArray, Int64Array
from pinlab_models._cnn_encoder import CNNEncoder, EncoderValidator, supcon_loss, to_input
from pinlab_models._parallel import Steps, gathered, world
from pinlab_models._runtime import bfloat16_autocast, run_epochs
from pinlab_models._runtime import seed_everything as _seed
from pinlab_models.contracts import (
    Choice,
    EncoderConfig,
    FitReport,
    FloatRange,
    PinlabModelError,
    Recipe,
    RecipeConfig,
    SearchParam,
    TrainContext,
)

LABELLED = frozenset({"supcon", "proxy-anchor"})

_LR = FloatRange(low=2e-4, high=2e-2, log=True)
_WEIGHT_DECAY = FloatRange(low=1e-5, high=2e-2, log=True)
_BATCH = Choice(values=(32, 64, 128))
RECIPE_SEARCH_SPACES: dict[Recipe, dict[str, SearchParam]] = {
    "supcon": {
        "lr": _LR,
        "weight_decay": _WEIGHT_DECAY,
        "temperature": FloatRange(low=0.03, high=0.4, log=True),
        "batch_size": _BATCH,
        "crop_scale": FloatRange(low=0.2, high=0.95),
    },
    # No labels: the views carry all the signal, so their strength is searched more widely.
    "simclr": {
        "lr": _LR,
        "weight_decay": _WEIGHT_DECAY,
        "temperature": FloatRange(low=0.03, high=0.5, log=True),
        "batch_size": _BATCH,
        "crop_scale": FloatRange(low=0.08, high=0.8),
        "color_jitter": FloatRange(low=0.05, high=0.8),
    },
    "proxy-anchor": {
        "lr": _LR,
        "weight_decay": _WEIGHT_DECAY,
        "proxy_margin": FloatRange(low=0.0, high=0.3),
        "proxy_alpha": FloatRange(low=8.0, high=128.0, log=True),
        "proxy_lr_scale": FloatRange(low=10.0, high=1000.0, log=True),
        "batch_size": Choice(values=(16, 32, 64, 128)),
        "crop_scale": FloatRange(low=0.2, high=0.95),
    },
}
"""The settings worth searching per recipe, as `EncoderConfig` or `RecipeConfig` field names.

Wide enough that the usual defaults sit inside, on log scales for rates and scales."""


def recipe_space(recipe: Recipe) -> dict[str, SearchParam]:
    return dict(RECIPE_SEARCH_SPACES[recipe])


def split_settings(settings: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Flat settings (a search point) as (`EncoderConfig` update, `RecipeConfig` update)."""
    unknown = [
        k for k in settings if k not in EncoderConfig.model_fields | RecipeConfig.model_fields
    ]
    if unknown:
        raise PinlabModelError(
            f"{unknown[0]!r} is neither an EncoderConfig nor a RecipeConfig field"
        )
    encoder = {k: v for k, v in settings.items() if k in EncoderConfig.model_fields}
    return encoder, {k: v for k, v in settings.items() if k not in encoder}


_GREY = torch.tensor([0.299, 0.587, 0.114])


def product_augment(x: torch.Tensor, config: RecipeConfig, gen: torch.Generator) -> torch.Tensor:
    """A random view of a batch in [-1, 1]: resized crop, rotation, flip, colour jitter.

    Crop, rotation and flip are one affine warp per image (a single grid_sample call).
    Colours are jittered but never permuted: a product's colour is part of what it is.
    """
    n, device = x.shape[0], x.device

    def uniform(low: float, high: float) -> torch.Tensor:
        return (low + (high - low) * torch.rand(n, generator=gen)).to(device)

    area = uniform(config.crop_scale, 1.0)
    ratio = torch.exp(uniform(math.log(3 / 4), math.log(4 / 3)))
    sx = torch.sqrt(area * ratio).clamp(max=1.0)
    sy = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (1 - sx) * uniform(-1.0, 1.0)
    ty = (1 - sy) * uniform(-1.0, 1.0)
    angle = uniform(-config.rotation_degrees, config.rotation_degrees) * (math.pi / 180)
    if config.hflip:
        sx = torch.where(uniform(0.0, 1.0) < 0.5, -sx, sx)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack(
        [torch.stack([sx * cos, -sy * sin, tx], 1), torch.stack([sx * sin, sy * cos, ty], 1)], 1
    )
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    shape = (n, 1, 1, 1)
    if config.hue > 0:
        turn = uniform(-config.hue, config.hue) * (2 * math.pi)
        x = torch.einsum("nij,njhw->nihw", _hue_rotation(turn).to(x.dtype), x)
    if config.color_jitter > 0:
        s = config.color_jitter
        grey = (x * _GREY.to(device, x.dtype)[None, :, None, None]).sum(1, keepdim=True)
        x = grey + (x - grey) * uniform(1 - s, 1 + s).view(shape)  # saturation
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = mean + (x - mean) * uniform(1 - s, 1 + s).view(shape)  # contrast
        x = x + uniform(-s, s).view(shape)  # brightness
    if config.grayscale_p > 0:
        grey = (x * _GREY.to(device, x.dtype)[None, :, None, None]).sum(1, keepdim=True)
        x = torch.where((uniform(0.0, 1.0) < config.grayscale_p).view(shape), grey.expand_as(x), x)
    return x.clamp(-1.0, 1.0)


_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def _hue_rotation(turn: torch.Tensor) -> torch.Tensor:
    """(n, 3, 3) RGB matrices turning hue by `turn` radians: a rotation of YIQ's chroma plane."""
    cos, sin = torch.cos(turn), torch.sin(turn)
    one, zero = torch.ones_like(turn), torch.zeros_like(turn)
    rotate = torch.stack(
        [
            torch.stack([one, zero, zero], 1),
            torch.stack([zero, cos, -sin], 1),
            torch.stack([zero, sin, cos], 1),
        ],
        1,
    )
    to_yiq = _RGB_TO_YIQ.to(turn.device)
    turned: torch.Tensor = torch.linalg.inv(to_yiq) @ rotate @ to_yiq
    return turned


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent: each view's positive is the other view of its image, and only that."""
    views = torch.cat([z1, z2])
    image = torch.arange(len(z1), device=z1.device).repeat(2)
    return supcon_loss(views, image, temperature)


class ProxyAnchorLoss(nn.Module):
    """Proxy-Anchor (Kim et al., CVPR 2020): each label's proxy pulls its batch members in
    and pushes the others out, weighting hard examples through a log-sum-exp."""

    def __init__(self, num_labels: int, dim: int, margin: float, alpha: float) -> None:
        super().__init__()
        self.proxies = nn.Parameter(torch.randn(num_labels, dim) / math.sqrt(dim))
        self.margin, self.alpha = margin, alpha

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = z @ F.normalize(self.proxies, dim=1).T  # (batch, labels)
        positive = F.one_hot(labels, len(self.proxies)).bool()
        neg_inf = torch.tensor(float("-inf"), device=z.device, dtype=cos.dtype)
        pos_term = torch.where(positive, -self.alpha * (cos - self.margin), neg_inf)
        neg_term = torch.where(~positive, self.alpha * (cos + self.margin), neg_inf)
        present = positive.any(dim=0)
        # log(1 + sum exp(a)) = softplus(logsumexp(a)); an empty sum gives softplus(-inf) = 0.
        pull = F.softplus(torch.logsumexp(pos_term, dim=0))[present].sum() / present.sum()
        push = F.softplus(torch.logsumexp(neg_term, dim=0)).sum() / len(self.proxies)
        return pull + push


def train_with_recipe(
    images: ImageArray,
    labels: Int64Array | None,
    config: EncoderConfig,
    recipe: RecipeConfig,
    ctx: TrainContext,
    validate: EncoderValidator | None = None,
) -> tuple[CNNEncoder, FitReport]:
    """Train an encoder of `config.arch` with `recipe`; keeps the best validation epoch.

    `labels` are required by supcon and proxy-anchor and ignored by simclr. With `validate`,
    training also stops at the first epoch ending past `ctx.deadline`.
    """
    if len(images) < 2:
        raise PinlabModelError(f"need at least 2 images to train an encoder, got {len(images)}")
    if images.ndim != 4 or images.shape[1:] != (config.image_size, config.image_size, 3):
        raise PinlabModelError(
            f"images have shape {images.shape}; the encoder takes (N, {config.image_size}, "
            f"{config.image_size}, 3): set image_size to the dataset's"
        )
    dense: torch.Tensor | None = None
    if recipe.recipe in LABELLED:
        if labels is None or len(labels) != len(images):
            raise PinlabModelError(
                f"recipe {recipe.recipe} needs one label per image; use --recipe simclr for "
                "unlabelled images"
            )
        names, inverse = np.unique(np.asarray(labels), return_inverse=True)
        if len(names) < 2:
            raise PinlabModelError(
                f"recipe {recipe.recipe} needs at least 2 labels, got {len(names)}; use "
                "--recipe simclr for unlabelled images"
            )
        dense = torch.from_numpy(inverse.astype(np.int64))
    gen = _seed(ctx.seed)
    cuda = ctx.device.startswith("cuda")
    encoder = CNNEncoder(config, ctx.device)
    if cuda and world()[1] > 1:
        # Batch statistics over the global batch, as one process has them (NCCL only: on the
        # CPU each rank normalises by its own share).
        synced = nn.SyncBatchNorm.convert_sync_batchnorm(encoder.net)  # type: ignore[no-untyped-call]  # torch leaves it untyped
        encoder.net = synced
    net = encoder.net
    proxy: ProxyAnchorLoss | None = None
    groups: list[dict[str, Any]] = [{"params": list(net.parameters()), "lr": config.lr}]
    if recipe.recipe == "proxy-anchor":
        assert dense is not None
        proxy = ProxyAnchorLoss(
            int(dense.max()) + 1, config.embedding_dim, recipe.proxy_margin, recipe.proxy_alpha
        ).to(ctx.device)
        groups.append(
            {
                "params": list(proxy.parameters()),
                "lr": config.lr * recipe.proxy_lr_scale,
                "weight_decay": 0.0,
            }
        )
    channels_last = cuda and recipe.channels_last
    if channels_last:
        net.to(memory_format=torch.channels_last)
    autocast = bfloat16_autocast(ctx.device) if recipe.mixed_precision else nullcontext()
    source = _on_device(images, ctx.device)
    batch_size = min(config.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[float(g["lr"]) for g in groups],
        total_steps=steps_per_epoch * config.epochs,
        pct_start=0.15,
    )

    def embed(x: torch.Tensor) -> torch.Tensor:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast:
            z = net(x)
        return F.normalize(z.float(), dim=1)

    def loss(share: torch.Tensor, _: torch.Tensor, draws: torch.Generator) -> torch.Tensor:
        """The whole batch's loss on every rank: each embeds its share and `gathered` brings
        the others' (with their gradients), so pairs, positives and proxies see the batch."""
        x = to_input(_batch(source, share, ctx.device))
        if recipe.recipe == "simclr":
            z1 = gathered(embed(product_augment(x, recipe, draws)))
            z2 = gathered(embed(product_augment(x, recipe, draws)))
            return nt_xent_loss(z1, z2, config.temperature)
        assert dense is not None
        y = gathered(dense[share].to(ctx.device))
        z = gathered(embed(product_augment(x, recipe, draws)))
        return proxy(z, y) if proxy is not None else supcon_loss(z, y, config.temperature)

    step = Steps(
        [net] if proxy is None else [net, proxy], optimizer, gen, loss, scheduler=schedule,
        whole_batch=True,
    )  # fmt: skip

    def train_epoch() -> float:
        net.train()
        order = torch.randperm(len(images), generator=gen)
        total = 0.0
        for i in range(steps_per_epoch):
            total += step(order[i * batch_size : (i + 1) * batch_size])
        return total / steps_per_epoch

    report = run_epochs(
        encoder, net, train_epoch, epochs=config.epochs, patience=config.patience, ctx=ctx,
        validate=validate, steps=step, name=f"{config.arch}-{recipe.recipe}",
    )  # fmt: skip
    if channels_last:
        net.to(memory_format=torch.contiguous_format)
    net.eval()
    return encoder, report


def _on_device(images: ImageArray, device: str) -> ImageArray | torch.Tensor:
    """On a GPU the uint8 images move over once (if they fit); on the CPU they stay mapped."""
    if device.startswith("cuda") and images.nbytes < 4 * 2**30:
        return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    return images


def _batch(source: ImageArray | torch.Tensor, idx: torch.Tensor, device: str) -> torch.Tensor:
    if isinstance(source, torch.Tensor):
        return source[idx.to(source.device)]
    return torch.from_numpy(np.ascontiguousarray(source[idx.numpy()])).to(device)
