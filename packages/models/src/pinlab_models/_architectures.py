"""The image-encoder registry: built-in networks by name, and any `timm` architecture.

A network maps (N, 3, H, W) inputs in [-1, 1] to L2-normalised embeddings. `build_network`
reads `EncoderConfig.arch`: a registered name ("cnn"), else a timm model name, whose pooled
features pass through a linear projection head to `embedding_dim`. Pretrained timm weights
come from the local Hugging Face cache, or are downloaded when the Hub can be reached;
otherwise the error says so and how to train from scratch instead.
"""

from __future__ import annotations

import difflib
import socket
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from huggingface_hub import try_to_load_from_cache
from torch import nn

from pinlab_models._registries import add_unique
from pinlab_models.contracts import EncoderConfig, PinlabModelError

NetworkBuilder = Callable[[EncoderConfig], nn.Module]
_BUILTIN: dict[str, NetworkBuilder] = {}
HUB_HOST = "huggingface.co"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def register_encoder_arch(name: str, builder: NetworkBuilder) -> None:
    """Make a built-in network available as `EncoderConfig.arch = name`."""
    add_unique(_BUILTIN, "encoder architecture", name, builder)


def builtin_archs() -> list[str]:
    return sorted(_BUILTIN)


@cache
def timm_names() -> tuple[str, ...]:
    import timm  # here, not at the top: timm and torchvision take seconds the CNN never needs

    return tuple(timm.list_models())


def check_arch(name: str) -> None:
    """Refuse an architecture that is neither built in nor in timm, suggesting close names."""
    if name in _BUILTIN or name in timm_names():
        return
    close = difflib.get_close_matches(name, [*_BUILTIN, *timm_names()], n=5, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}?" if close else "see `timm.list_models()`"
    raise PinlabModelError(
        f"unknown encoder architecture {name!r}: not built in ({', '.join(builtin_archs())}) "
        f"and not a timm model; {hint}"
    )


def build_network(config: EncoderConfig) -> nn.Module:
    check_arch(config.arch)
    if config.arch in _BUILTIN:
        if config.pretrained:
            raise PinlabModelError(
                f"the built-in {config.arch!r} has no pretrained weights; pass --no-pretrained "
                "or a timm architecture"
            )
        return _BUILTIN[config.arch](config)
    return TimmNet(config.arch, config.embedding_dim, config.pretrained, config.image_size)


class TimmNet(nn.Module):
    """A timm backbone (classifier removed, pooled features) and a linear projection head."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str, embedding_dim: int, pretrained: bool, image_size: int) -> None:
        super().__init__()
        self.backbone = _create_timm(name, pretrained)
        self.backbone.eval()
        with torch.no_grad():  # some models add layers after pooling: ask the output's width
            width = self.backbone(torch.zeros(1, 3, image_size, image_size)).shape[1]
        self.backbone.train()
        cfg: dict[str, Any] = getattr(self.backbone, "pretrained_cfg", None) or {}
        # Our inputs are in [-1, 1]; timm weights expect their own mean and std on [0, 1].
        mean = torch.tensor(cfg.get("mean", (0.5, 0.5, 0.5)), dtype=torch.float32)
        std = torch.tensor(cfg.get("std", (0.5, 0.5, 0.5)), dtype=torch.float32)
        self.register_buffer("mean", mean[None, :, None, None], persistent=False)
        self.register_buffer("std", std[None, :, None, None], persistent=False)
        self.head = nn.Linear(int(width), embedding_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.head(self.backbone(self._normalise(x))), dim=1)

    def feature_map(self, x: torch.Tensor, cells: int) -> torch.Tensor:
        """The backbone's last unpooled features, whatever `cells`: (N, C, h, w) for CNNs,
        tokens for transformers."""
        # timm's method; typed here as a Module attribute, hence the ignore.
        method = self.backbone.forward_features
        features: Callable[[torch.Tensor], torch.Tensor] = method  # type: ignore[assignment]
        return features(self._normalise(x))

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return ((x + 1.0) * 0.5 - self.mean) / self.std


def _create_timm(name: str, pretrained: bool) -> nn.Module:
    import timm

    if not pretrained:
        model: nn.Module = timm.create_model(name, pretrained=False, num_classes=0)
        return model
    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if cfg is None or not (hub_id or getattr(cfg, "url", None)):
        raise PinlabModelError(
            f"timm has no pretrained weights for {name!r}; pass --no-pretrained to train it "
            "from scratch"
        )
    cached = cached_weights(hub_id) if hub_id else None
    if cached is not None:
        cached_model: nn.Module = timm.create_model(
            name, pretrained=True, num_classes=0, pretrained_cfg_overlay={"file": str(cached)}
        )
        return cached_model
    if not hub_reachable():
        raise PinlabModelError(
            f"pretrained weights for {name!r} are not in the local cache and {HUB_HOST} cannot "
            "be reached (offline?); pass --no-pretrained to train from scratch, or download "
            "them once while online"
        )
    try:
        model = timm.create_model(name, pretrained=True, num_classes=0)
    except (OSError, RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PinlabModelError(
            f"could not get pretrained weights for {name!r} ({first}); pass --no-pretrained "
            "to train from scratch"
        ) from exc
    return model


def cached_weights(hub_id: str) -> Path | None:
    """The weights file of a Hub model in the local cache, if it is there."""
    for filename in WEIGHT_FILES:
        found = try_to_load_from_cache(hub_id, filename)
        if isinstance(found, str):
            return Path(found)
    return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """One quick TCP connection, so offline fails in seconds rather than after retries."""
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False
