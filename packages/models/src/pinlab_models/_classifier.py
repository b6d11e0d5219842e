"""A multi-head image classifier trained on real pins: the judge of what generated images show.

One convolutional trunk (the built-in CNN's stages) and one linear head per label set (a
category; on synthetic worlds also a palette). Views are right-angle turns and flips only:
colour is what the palette head must see, so it is never jittered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import ImageArray, Int64Array
from pinlab_models._align import _geometric_view
from pinlab_models._cnn_encoder import ConvNet, input_chunks, to_input
from pinlab_models._runtime import (
    bfloat16_pays,
    file_digest,
    image_batches,
    load_checkpoint,
    run_epochs,
    save_checkpoint,
    seed_everything,
    training_precision,
)
from pinlab_models.contracts import (
    ClassifierConfig,
    FitReport,
    PinlabModelError,
    TrainContext,
)

CHECKPOINT_KIND = "pinlab-image-classifier"
ClassifierValidator = Callable[["ImageClassifier"], float]


class _Heads(nn.Module):
    def __init__(self, widths: tuple[int, ...], sizes: Mapping[str, int]) -> None:
        super().__init__()
        self.features = ConvNet(widths, embedding_dim=1).features
        # Prefixed: a head named like a Module attribute ("half", "train") must not clash.
        self.heads = nn.ModuleDict(
            {f"head_{name}": nn.Linear(widths[-1], n) for name, n in sizes.items()}
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        pooled = self.features(x).mean(dim=(2, 3))
        return {key.removeprefix("head_"): head(pooled) for key, head in self.heads.items()}


class ImageClassifier:
    """Predicts one label per head for (N, S, S, 3) uint8 images."""

    def __init__(
        self, labels: Mapping[str, Sequence[str]], config: ClassifierConfig, device: str = "cpu"
    ) -> None:
        self.labels = {name: list(values) for name, values in labels.items()}
        self.config = config
        self.device = device
        self.net = _Heads(config.widths, {k: len(v) for k, v in self.labels.items()}).to(device)
        self.model_id = "untrained"
        self.train_bfloat16 = False  # what training ran in (`bfloat16_pays`)

    @torch.no_grad()
    def predict(self, images: ImageArray, batch_size: int = 512) -> dict[str, Int64Array]:
        size = self.config.image_size
        if images.ndim != 4 or images.shape[1:] != (size, size, 3):
            raise PinlabModelError(
                f"the classifier expects images of shape (N, {size}, {size}, 3), got {images.shape}"
            )
        self.net.eval()
        out = {name: np.empty(len(images), dtype=np.int64) for name in self.labels}
        for start, chunk in input_chunks(images, batch_size, self.device):
            logits = self.net(chunk)
            for name, values in logits.items():
                out[name][start : start + len(chunk)] = values.argmax(dim=1).cpu().numpy()
        return out

    def save(self, path: Path) -> str:
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        payload = {
            "kind": CHECKPOINT_KIND,
            "config": self.config.model_dump(),
            "labels": self.labels,
            "state": state,
        }
        self.model_id = f"clf-{save_checkpoint(path, payload)}"
        return self.model_id


def load_classifier(path: Path, device: str = "cpu") -> ImageClassifier:
    payload = load_checkpoint(path, CHECKPOINT_KIND)
    model = ImageClassifier(
        payload["labels"], ClassifierConfig.model_validate(payload["config"]), device
    )
    try:
        model.net.load_state_dict(payload["state"])
    except RuntimeError:  # weights of another layout (an older pinlab's head names)
        raise PinlabModelError(
            f"{path} holds a classifier of another layout than this pinlab's; delete it "
            "and retrain (`pinlab eval generator` retrains it when it cannot load it)"
        ) from None
    model.net.eval()
    model.model_id = f"clf-{file_digest(path)}"
    return model


def train_classifier(
    images: ImageArray,
    targets: Mapping[str, Int64Array],
    labels: Mapping[str, Sequence[str]],
    config: ClassifierConfig,
    ctx: TrainContext,
    validate: ClassifierValidator | None = None,
) -> tuple[ImageClassifier, FitReport]:
    """Train every head at once (summed cross-entropy); keeps the best validated epoch."""
    if set(targets) != set(labels) or not targets:
        raise PinlabModelError(
            f"targets {sorted(targets)} and label names {sorted(labels)} must name the same heads"
        )
    for name, values in targets.items():
        if len(values) != len(images) or (len(values) and values.max() >= len(labels[name])):
            raise PinlabModelError(
                f"head {name!r} needs one label in 0..{len(labels[name]) - 1} per image"
            )
    gen = seed_everything(ctx.seed)
    model = ImageClassifier(labels, config, ctx.device)
    net = model.net
    y = {k: torch.from_numpy(np.asarray(v, dtype=np.int64)) for k, v in targets.items()}
    batch_size = min(config.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    first = to_input(torch.from_numpy(images[:batch_size]).to(ctx.device))

    def first_batch_loss(probe: _Heads) -> torch.Tensor:
        return torch.stack([v.float().mean() for v in probe(first).values()]).sum()

    bfloat16 = config.mixed_precision and bfloat16_pays(net, first_batch_loss, ctx.device)
    model.train_bfloat16 = bfloat16
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.15
    )

    def train_epoch() -> float:
        net.train()
        total = 0.0
        for idx, batch in image_batches(images, batch_size, gen):
            with training_precision(bfloat16, ctx.device):
                logits = net(_geometric_view(to_input(batch.to(ctx.device)), gen))
            loss = sum(
                (F.cross_entropy(logits[k].float(), y[k][idx].to(ctx.device)) for k in logits),
                start=torch.zeros((), device=ctx.device),
            )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimizer.step()
            schedule.step()
            total += float(loss.detach())
        return total / steps_per_epoch

    report = run_epochs(
        model, net, train_epoch, epochs=config.epochs, patience=config.patience, ctx=ctx,
        validate=validate, gen=gen, name="classifier",
    )  # fmt: skip
    net.eval()
    return model, report
