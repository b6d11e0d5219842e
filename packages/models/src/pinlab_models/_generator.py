"""Text-to-image generation: a small diffusers UNet that denoises pins, conditioned on captions.

The default objective is rectified flow matching (Liu et al. 2023; Lipman et al. 2023): the
network predicts the velocity noise - image along the straight path between them, at times
drawn logit-normal (Esser et al. 2024, diffusers' `compute_density_for_timestep_sampling`),
and samples with Euler steps through `FlowMatchEulerDiscreteScheduler`. On the synthetic world
it learnt shape about twice as fast per training image as DDPM did. `ddpm-v` keeps DDPM (Ho et
al. 2020) with v-prediction (Salimans & Ho 2022) on a cosine schedule (`DDPMScheduler`) and
DDIM sampling (Song et al. 2021, `DDIMScheduler`), which earlier checkpoints were trained with.
Captions (MiniLM, frozen) and categories are dropped at random in training, so one network is
conditional and unconditional at once: classifier-free guidance (Ho & Salimans 2022) mixes the
two at sampling. The weights kept are an exponential moving average (diffusers' `EMAModel`);
the average after an early epoch is kept too, as the guide of autoguidance (Karras et al.
2024): sampling also steps away from what that weaker network predicts. Where the data has
categories, a caption prior (`_category_prior`) learns which one each caption names, so a
prompt given as text alone is conditioned on its category too.
With `align_weight` > 0, training adds REPA (Yu et al. 2025): the mid block's features of
the noisy image, through a small head used only in training, are pulled towards a frozen image
encoder's feature map of the clean image.

diffusers takes seconds to import, so it is imported where a network or scheduler is built:
commands that never generate never pay for it.
"""

from __future__ import annotations

import copy
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812 - the PyTorch convention
from torch import nn

from pinlab_data.contracts import ImageArray, Int64Array
from pinlab_models._category_prior import CategoryPrior
from pinlab_models._cnn_encoder import input_chunks, to_input
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
from pinlab_models._text import MINILM_DIM, MINILM_ID, TextEncoder
from pinlab_models.contracts import (
    FitReport,
    GenerateLimits,
    GeneratorConfig,
    PinlabModelError,
    TrainContext,
)

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler

CHECKPOINT_KIND = "pinlab-generator"
BETA_SCHEDULE = "squaredcos_cap_v2"
PREDICTION = "v_prediction"
GeneratorValidator = Callable[["TextToImage"], float]
FeatureTeacher = Callable[[torch.Tensor, int], torch.Tensor]
"""Images in the input form ((N, 3, S, S) in [-1, 1]) and a width in cells to a frozen encoder's
(N, C, h, w) map, at least that wide where the encoder has one (`CNNEncoder.feature_map`)."""


@dataclass(frozen=True)
class Conditioning:
    """What a batch of images is generated from; `has_text` False rows are unconditional."""

    tokens: torch.Tensor  # (B, L, 384) MiniLM token embeddings, zero-padded
    mask: torch.Tensor  # (B, L) bool, True where a token is real
    sentence: torch.Tensor  # (B, 384) MiniLM sentence embeddings
    category: torch.Tensor  # (B,) int64; num_categories means "no category"
    has_text: torch.Tensor  # (B,) bool

    def take(self, rows: torch.Tensor) -> Conditioning:
        return Conditioning(
            self.tokens[rows], self.mask[rows], self.sentence[rows], self.category[rows],
            self.has_text[rows],
        )  # fmt: skip

    def to(self, device: str) -> Conditioning:
        return Conditioning(
            self.tokens.to(device), self.mask.to(device), self.sentence.to(device),
            self.category.to(device), self.has_text.to(device),
        )  # fmt: skip

    def dropped(self, text: torch.Tensor, category: torch.Tensor, none: int) -> Conditioning:
        """The same rows with the caption dropped where `text`, the category where `category`."""
        return Conditioning(
            self.tokens, self.mask, self.sentence,
            torch.where(category, torch.full_like(self.category, none), self.category),
            self.has_text & ~text,
        )  # fmt: skip


class GeneratorNet(nn.Module):
    """The denoiser: a diffusers `UNet2DConditionModel` over pixel-unshuffled images, plus the
    learned stand-ins for a dropped caption and the category embedding."""

    def __init__(self, config: GeneratorConfig, num_categories: int) -> None:
        super().__init__()
        from diffusers import UNet2DConditionModel

        levels = len(config.widths)
        attends = [level >= levels - config.attention_levels for level in range(levels)]
        channels = 3 * config.patch**2
        self.patch = config.patch
        self.num_categories = num_categories
        self.unet = UNet2DConditionModel(
            sample_size=config.image_size // config.patch,
            in_channels=channels,
            out_channels=channels,
            block_out_channels=config.widths,
            down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends),
            up_block_types=tuple(
                "CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)
            ),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=MINILM_DIM,
            attention_head_dim=config.heads,  # diffusers reads this as the number of heads
            class_embed_type="projection",
            projection_class_embeddings_input_dim=MINILM_DIM + config.category_dim,
            resnet_time_scale_shift="scale_shift",  # the condition scales and shifts (FiLM)
        )
        # MiniLM's token vectors have norms near 10; the UNet expects unit-scale context.
        self.text_norm = nn.LayerNorm(MINILM_DIM)
        self.null_token = nn.Parameter(torch.zeros(MINILM_DIM))
        self.null_sentence = nn.Parameter(torch.zeros(MINILM_DIM))
        self.category = nn.Embedding(num_categories + 1, config.category_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning) -> torch.Tensor:
        """The v-prediction for pixel-unshuffled noisy images `x` at timesteps `t`."""
        drop = ~cond.has_text
        first = torch.arange(cond.tokens.shape[1], device=x.device) == 0
        tokens = torch.where(
            drop[:, None, None], self.null_token * first[None, :, None], self.text_norm(cond.tokens)
        )
        mask = torch.where(drop[:, None], first[None, :], cond.mask)
        sentence = torch.where(drop[:, None], self.null_sentence, cond.sentence)
        labels = torch.cat([sentence, self.category(cond.category)], dim=1)
        out: torch.Tensor = self.unet(
            x, t, encoder_hidden_states=tokens, encoder_attention_mask=mask.float(),
            class_labels=labels,
        ).sample  # fmt: skip
        return out

    def pack(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, S, S) in [-1, 1] to the UNet's (N, 3 p^2, S/p, S/p)."""
        return F.pixel_unshuffle(images, self.patch) if self.patch > 1 else images

    def unpack(self, x: torch.Tensor) -> torch.Tensor:
        return F.pixel_shuffle(x, self.patch) if self.patch > 1 else x


@functools.cache
def ddpm_scheduler(train_timesteps: int) -> DDPMScheduler:
    """DDPM's noise schedule, which `ddpm-v` trains on (flow matching needs none); built once
    per length, since the training loss asks for it every step and only reads it."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=train_timesteps,
        beta_schedule=BETA_SCHEDULE,
        prediction_type=PREDICTION,
    )


def sampling_scheduler(config: GeneratorConfig) -> DDIMScheduler | FlowMatchEulerDiscreteScheduler:
    if config.objective == "flow":
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=config.train_timesteps)
    from diffusers import DDIMScheduler

    # "trailing" starts sampling at the last training step, as few-step samplers should
    # (Lin et al. 2024); clipping keeps each x0 estimate inside the pixel range.
    return DDIMScheduler(
        num_train_timesteps=config.train_timesteps,
        beta_schedule=BETA_SCHEDULE,
        prediction_type=PREDICTION,
        timestep_spacing="trailing",
        clip_sample=True,
    )


def check_request(
    prompt: str, n: int, steps: int, guidance: float, limits: GenerateLimits,
    autoguidance: float | None = None,
) -> None:  # fmt: skip
    """Refuse a generation request outside `limits` before any work, saying the allowed range."""
    if not 1 <= n <= limits.max_images:
        raise PinlabModelError(f"n = {n} images is out of range; ask for 1..{limits.max_images}")
    if not prompt.strip():
        raise PinlabModelError("the prompt is empty; describe the pin, e.g. 'a red star'")
    if len(prompt) > limits.max_prompt_chars:
        raise PinlabModelError(
            f"the prompt has {len(prompt)} characters; the limit is "
            f"{limits.max_prompt_chars}: shorten it"
        )
    if not 1 <= steps <= limits.max_steps:
        raise PinlabModelError(f"steps = {steps} is out of range; use 1..{limits.max_steps}")
    if math.isnan(guidance) or not 0 <= guidance <= limits.max_guidance:
        raise PinlabModelError(
            f"guidance = {guidance} is out of range; use 0..{limits.max_guidance} "
            "(1 is plain conditional sampling, 0 ignores the prompt)"
        )
    if autoguidance is not None and (
        math.isnan(autoguidance) or not 0 <= autoguidance <= limits.max_guidance
    ):
        raise PinlabModelError(
            f"autoguidance = {autoguidance} is out of range; use 0..{limits.max_guidance} "
            "(1 leaves the guide out)"
        )


class TextToImage:
    """A trained generator: captions (and optionally a category) in, uint8 images out."""

    def __init__(
        self,
        net: GeneratorNet,
        config: GeneratorConfig,
        categories: Sequence[str],
        device: str = "cpu",
        text_encoder: TextEncoder | None = None,
        guide: GeneratorNet | None = None,
        prior: CategoryPrior | None = None,
    ) -> None:
        self.net = net.to(device)
        self.guide = None if guide is None else guide.to(device).eval()
        self.prior = prior  # None: generators trained without categories, or before the prior
        self.config = config
        self.categories = list(categories)
        self.device = device
        self._text = text_encoder
        self.model_id = "unsaved"
        # What training ran in (`bfloat16_pays`); validation's loss is computed in it too.
        self.train_bfloat16 = False

    @property
    def text_encoder(self) -> TextEncoder:
        if self._text is None:
            self._text = TextEncoder(self.device)
        return self._text

    @property
    def image_size(self) -> int:
        return self.config.image_size

    def autoguidance(self, requested: float | None = None) -> float:
        """The guide's weight sampling uses: `requested`, else the config's; 1 (none) when the
        generator kept no guide."""
        if self.guide is None:
            return 1.0
        return self.config.autoguidance if requested is None else requested

    def category_index(self, category: str | None) -> int:
        """The embedding row of a category name; None is "no category"."""
        if category is None:
            return len(self.categories)
        if category not in self.categories:
            raise PinlabModelError(
                f"unknown category {category!r}; this generator knows "
                f"{', '.join(self.categories) or 'no categories'}"
            )
        return self.categories.index(category)

    def prompt_conditioning(
        self, prompts: Sequence[str], category: str | None = None, infer_category: bool = True
    ) -> tuple[Conditioning, list[str | None]]:
        """The prompts encoded once, and the category each is conditioned on: `category` where
        given, else (when `infer_category`) the one the caption prior names from the same
        sentence vectors it was fitted on, where it is at least `config.prior_threshold`
        sure; None elsewhere, and for every prompt of a generator without a prior."""
        given = self.category_index(category)  # an unknown name fails before any work
        cond = self.conditioning(prompts, [given] * len(prompts))
        if category is not None or not infer_category or self.prior is None:
            return cond, [category] * len(prompts)
        names = self.prior.infer(cond.sentence, self.categories, self.config.prior_threshold)
        rows = torch.tensor([self.category_index(c) for c in names], device=cond.category.device)
        return replace(cond, category=rows), names

    def infer_categories(self, prompts: Sequence[str]) -> list[str | None]:
        """The category the caption prior names for each prompt (`prompt_conditioning`)."""
        return self.prompt_conditioning(prompts)[1]

    def resolve_categories(
        self, prompts: Sequence[str], category: str | None, infer_category: bool
    ) -> list[str | None]:
        """What each prompt is conditioned on (`prompt_conditioning`)."""
        return self.prompt_conditioning(prompts, category, infer_category)[1]

    def conditioning(self, prompts: Sequence[str], categories: Sequence[int]) -> Conditioning:
        """Encode prompts once per distinct text; `categories` are embedding rows."""
        return encode_conditioning(
            self.text_encoder, prompts, np.asarray(categories, dtype=np.int64), self.config
        ).to(self.device)

    @torch.no_grad()
    def generate(
        self,
        prompts: Sequence[str],
        *,
        steps: int = 25,
        guidance: float = 3.0,
        seed: int = 0,
        category: str | None = None,
        limits: GenerateLimits | None = None,
        autoguidance: float | None = None,
        infer_category: bool = True,
    ) -> ImageArray:
        """One (S, S, 3) uint8 image per prompt; the same seed gives the same images.

        Image i's starting noise is the i-th draw of the seed, so the first images of a batch
        do not change when more are asked for. `autoguidance` None takes the config's. Without
        a `category`, each prompt's is inferred by the caption prior unless `infer_category`
        is False (`resolve_categories`).
        """
        for prompt in dict.fromkeys(prompts) or [""]:  # no prompt at all is refused too
            check_request(
                prompt, len(prompts), steps, guidance, limits or GenerateLimits(), autoguidance
            )
        cond, _ = self.prompt_conditioning(prompts, category, infer_category)
        return self.sample(
            cond, steps=steps, guidance=guidance, seed=seed, autoguidance=autoguidance
        )

    @torch.no_grad()
    def sample(
        self, cond: Conditioning, *, steps: int, guidance: float, seed: int,
        batch_size: int = 64, autoguidance: float | None = None,
    ) -> ImageArray:  # fmt: skip
        """Images for an already-encoded conditioning, `batch_size` at a time."""
        self.net.eval()
        weight = self.autoguidance(autoguidance)
        n = len(cond.has_text)
        cells, channels = self.image_size // self.config.patch, 3 * self.config.patch**2
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n, channels, cells, cells), generator=gen)
        out = np.empty((n, self.image_size, self.image_size, 3), dtype=np.uint8)
        for start in range(0, n, batch_size):
            rows = torch.arange(start, min(start + batch_size, n))
            x = self._denoise(
                noise[rows].to(self.device), cond.take(rows.to(self.device)), steps, guidance,
                weight,
            )  # fmt: skip
            pixels = self.net.unpack(x).clamp(-1, 1).add(1).mul(127.5).round()
            out[start : start + len(rows)] = pixels.byte().permute(0, 2, 3, 1).cpu().numpy()
        return out

    def _denoise(
        self, x: torch.Tensor, cond: Conditioning, steps: int, guidance: float,
        autoguidance: float,
    ) -> torch.Tensor:  # fmt: skip
        scheduler = sampling_scheduler(self.config)
        scheduler.set_timesteps(steps)
        none = len(self.categories)
        unconditional = cond.dropped(
            torch.ones_like(cond.has_text), torch.ones_like(cond.has_text), none
        )
        both = _concat(cond, unconditional)
        for t in scheduler.timesteps:
            # DDPM's steps are integers; flow matching's are times in [0, 1] scaled to them.
            ts = torch.full((len(x),), float(t), device=self.device)
            if self.config.objective == "ddpm-v":
                ts = ts.long()
            if guidance == 1.0:
                conditional = v = self.net(x, ts, cond)
            else:
                conditional, free = self.net(torch.cat([x, x]), torch.cat([ts, ts]), both).chunk(2)
                v = free + guidance * (conditional - free)
            if self.guide is not None and autoguidance != 1.0:
                # Away from the weaker network's errors too, which the net has outgrown.
                v = v + (autoguidance - 1) * (conditional - self.guide(x, ts, cond))
            x = scheduler.step(v, t, x).prev_sample
        return x

    def png_text(
        self, prompt: str, *, seed: int, index: int, steps: int, guidance: float,
        category: str | None = None, autoguidance: float | None = None,
        category_inferred: bool = False,
    ) -> dict[str, str]:  # fmt: skip
        """What a generated PNG says about itself: generated, by which model, from what
        (`category` is the one it was conditioned on, given or inferred from the prompt)."""
        return {
            "Software": "pinlab",
            "pinlab:generated": "true",
            "pinlab:model_id": self.model_id,
            "pinlab:text_model": MINILM_ID,
            "pinlab:prompt": prompt,
            "pinlab:category": category or "",
            "pinlab:category_inferred": str(category_inferred).lower(),
            "pinlab:seed": str(seed),
            "pinlab:index": str(index),
            "pinlab:steps": str(steps),
            "pinlab:guidance": str(guidance),
            "pinlab:autoguidance": str(self.autoguidance(autoguidance)),
        }

    def save(self, path: Path) -> str:
        """Write the checkpoint atomically; returns the model id (`gen-` + its digest)."""
        state = {k: v.cpu() for k, v in self.net.state_dict().items()}
        payload = {
            "kind": CHECKPOINT_KIND,
            "config": self.config.model_dump(),
            "categories": self.categories,
            "text_model": MINILM_ID,
            "state": state,
        }
        if self.guide is not None:
            payload["guide"] = {k: v.cpu() for k, v in self.guide.state_dict().items()}
        if self.prior is not None:
            payload["prior"] = self.prior.state()
        self.model_id = f"gen-{save_checkpoint(path, payload)}"
        return self.model_id


def load_generator(path: Path, device: str = "cpu") -> TextToImage:
    """Load a generator written by `TextToImage.save` (weights only, never code)."""
    payload = load_checkpoint(path, CHECKPOINT_KIND)
    # Checkpoints written before flow matching was added are DDPM with v-prediction.
    payload["config"].setdefault("objective", "ddpm-v")
    payload["config"].setdefault("align_weight", 0.0)  # and before REPA, without it
    payload["config"].setdefault("guide_epoch", None)  # and before autoguidance, with no guide
    payload["config"].setdefault("hflip", False)  # and before mirroring, unmirrored
    if payload.get("text_model") != MINILM_ID:
        raise PinlabModelError(
            f"{path} was conditioned on {payload.get('text_model')!r}, but the text encoder "
            f"here is {MINILM_ID!r}; retrain it with `pinlab train generator`"
        )
    config = GeneratorConfig.model_validate(payload["config"])
    categories = [str(c) for c in payload["categories"]]
    net = GeneratorNet(config, len(categories))
    net.load_state_dict(payload["state"])
    net.eval()
    guide = None
    if "guide" in payload:
        guide = GeneratorNet(config, len(categories))
        guide.load_state_dict(payload["guide"])
    prior = CategoryPrior.from_state(payload["prior"]) if "prior" in payload else None
    model = TextToImage(net, config, categories, device, guide=guide, prior=prior)
    model.model_id = f"gen-{file_digest(path)}"
    return model


def encode_conditioning(
    text: TextEncoder, captions: Sequence[str], categories: Int64Array, config: GeneratorConfig
) -> Conditioning:
    """MiniLM tokens and sentence vectors of each caption, computed once per distinct caption."""
    distinct, row = np.unique(np.asarray(list(captions), dtype=object), return_inverse=True)
    texts = [str(c) for c in distinct]
    sentence, tokens, mask = text.encode_with_tokens(texts, config.text_tokens)
    rows = torch.from_numpy(row.astype(np.int64))
    return Conditioning(
        tokens=torch.from_numpy(tokens)[rows],
        mask=torch.from_numpy(mask)[rows],
        sentence=torch.from_numpy(sentence)[rows],
        category=torch.from_numpy(np.asarray(categories, dtype=np.int64)),
        has_text=torch.ones(len(captions), dtype=torch.bool),
    )


class FeatureAlignment(nn.Module):
    """REPA (Yu et al. 2025): the training net's mid-block features (its deepest level),
    through a 1x1-conv MLP head, should match a frozen encoder's feature map of the clean
    image, cell by cell (the map average-pooled to those cells). The head trains with the net
    and is not saved; a forward hook keeps the features of the net's last call."""

    def __init__(
        self, net: GeneratorNet, teacher: FeatureTeacher, image_size: int, width: int = 256
    ) -> None:
        super().__init__()
        self.teacher = teacher
        levels = len(net.unet.config.block_out_channels)
        self.cells = image_size // net.patch // 2 ** (levels - 1)
        blank = torch.zeros(1, 3, image_size, image_size, device=net.null_token.device)
        with torch.no_grad():  # on the net's device, where the teacher lives too
            channels = teacher(blank, self.cells).shape[1]
        mid = net.unet.config.block_out_channels[-1]
        self.head = nn.Sequential(
            nn.Conv2d(mid, width, 1), nn.SiLU(), nn.Conv2d(width, channels, 1)
        )
        self.features: torch.Tensor | None = None
        net.unet.mid_block.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, args: Any, output: torch.Tensor) -> None:
        self.features = output

    @torch.no_grad()
    def targets(self, images: ImageArray, device: str, batch_size: int = 256) -> torch.Tensor:
        """The teacher's (N, C, cells, cells) maps of clean uint8 `images` (N, S, S, 3). The
        generator trains without augmentation, so its trainer computes these once."""
        maps = [
            F.adaptive_avg_pool2d(self.teacher(chunk, self.cells).float(), self.cells)
            for _, chunk in input_chunks(images, batch_size, device)
        ]
        return torch.cat(maps)

    def similarity(self, targets: torch.Tensor) -> torch.Tensor:
        """Mean cosine between the projected features of the net's last forward (on noisy
        images) and `targets`, the teacher's maps of the clean ones."""
        if self.features is None:
            raise PinlabModelError("FeatureAlignment.similarity needs the net's forward first")
        predicted = self.head(self.features).float()
        return F.cosine_similarity(predicted, targets, dim=1).mean()


def _concat(a: Conditioning, b: Conditioning) -> Conditioning:
    return Conditioning(
        torch.cat([a.tokens, b.tokens]), torch.cat([a.mask, b.mask]),
        torch.cat([a.sentence, b.sentence]), torch.cat([a.category, b.category]),
        torch.cat([a.has_text, b.has_text]),
    )  # fmt: skip


def denoising_loss(
    net: GeneratorNet,
    config: GeneratorConfig,
    images: torch.Tensor,
    cond: Conditioning,
    gen: torch.Generator,
    weighted: bool = True,
) -> torch.Tensor:
    """The training loss at random times: squared error of the predicted velocity.

    Flow matching: times t logit-normal, x_t = (1 - t) x + t noise, target noise - x. DDPM:
    the v-prediction at uniform timesteps; with `config.snr_gamma` and `weighted`, each image's
    error is weighted by min(SNR, gamma) / (SNR + 1), the Min-SNR weighting (Hang et al. 2023).
    """
    x0 = net.pack(images)
    noise = torch.randn(x0.shape, generator=gen).to(x0.device)
    steps = config.train_timesteps
    if config.objective == "flow":
        from diffusers.training_utils import compute_density_for_timestep_sampling

        t = compute_density_for_timestep_sampling(
            "logit_normal", len(x0), config.logit_mean, config.logit_std, generator=gen
        ).to(x0.device)
        s = t[:, None, None, None]
        predicted = net((1 - s) * x0 + s * noise, t * steps, cond).float()
        flow_error: torch.Tensor = (predicted - (noise - x0)).pow(2).mean()
        return flow_error
    from diffusers.training_utils import compute_snr

    scheduler = ddpm_scheduler(steps)
    timestep = torch.randint(0, steps, (len(x0),), generator=gen).to(x0.device)
    noisy = scheduler.add_noise(x0, noise, timestep)
    target = scheduler.get_velocity(x0, noise, timestep)
    error: torch.Tensor = (net(noisy, timestep, cond).float() - target).pow(2).mean(dim=(1, 2, 3))
    if config.snr_gamma is None or not weighted:
        return error.mean()
    snr = compute_snr(scheduler, timestep)
    weight: torch.Tensor = snr.clamp(max=config.snr_gamma) / (snr + 1)
    return (error * weight).mean()


def train_generator(
    images: ImageArray,
    captions: Sequence[str],
    categories: Int64Array | None,
    category_names: Sequence[str],
    config: GeneratorConfig,
    ctx: TrainContext,
    validate: GeneratorValidator | None = None,
    text_encoder: TextEncoder | None = None,
    teacher: FeatureTeacher | None = None,
) -> tuple[TextToImage, FitReport]:
    """Train a generator on captioned images; keeps the EMA weights of the best validated epoch,
    and those after `config.guide_epoch` as its autoguidance guide when the best came later.

    `categories` index `category_names` (None: the data has none, only captions condition).
    `teacher` is the frozen encoder map that `config.align_weight` > 0 aligns with.
    """
    if len(images) != len(captions) or len(images) < 2:
        raise PinlabModelError(
            f"need at least 2 images with one caption each, got {len(images)} images and "
            f"{len(captions)} captions"
        )
    size = config.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3):
        raise PinlabModelError(
            f"the generator expects images of shape (N, {size}, {size}, 3), got "
            f"{images.shape}; set image_size to the dataset's"
        )
    num_categories = len(category_names)
    labels = (
        np.full(len(images), num_categories, dtype=np.int64)
        if categories is None
        else np.asarray(categories, dtype=np.int64)
    )
    if len(labels) != len(images) or (
        len(labels) and (labels.min() < 0 or labels.max() > num_categories)
    ):
        raise PinlabModelError(f"categories must be one index in 0..{num_categories - 1} per image")
    if config.align_weight > 0 and teacher is None:
        raise PinlabModelError(
            f"align_weight {config.align_weight} aligns the generator with an image encoder's "
            "features (REPA), but no encoder was given; pass teacher= (a trained encoder's "
            "feature_map) or set align_weight=0"
        )
    text = text_encoder or TextEncoder(ctx.device)
    all_cond = encode_conditioning(text, captions, labels, config).to(ctx.device)

    gen = seed_everything(ctx.seed)
    net = GeneratorNet(config, num_categories).to(ctx.device)
    if ctx.device == "cpu":
        from diffusers.models.attention_processor import AttnProcessor

        # PyTorch's CPU flash-attention backward is slow on 16-token attention: plain matmul
        # attention trained 1.15x faster on this project's 2-core machine (a one-off timing).
        net.unet.set_attn_processor(AttnProcessor())
    first = torch.arange(min(config.batch_size, len(images)), device=ctx.device)
    first_x = to_input(torch.from_numpy(images[: len(first)]).to(ctx.device))
    first_cond = all_cond.take(first)

    def first_batch_loss(probe: GeneratorNet) -> torch.Tensor:
        return denoising_loss(probe, config, first_x, first_cond, torch.Generator())

    bfloat16 = config.mixed_precision and bfloat16_pays(net, first_batch_loss, ctx.device)
    ema_net = copy.deepcopy(net)
    model = TextToImage(ema_net, config, category_names, ctx.device, text)
    model.train_bfloat16 = bfloat16
    # Built after the copy, so only the trained net (not its average) keeps features.
    align = (
        FeatureAlignment(net, teacher, size).to(ctx.device)
        if teacher is not None and config.align_weight > 0
        else None
    )
    targets = mirrored_targets = None
    if align is not None:
        with training_precision(bfloat16, ctx.device):
            targets = align.targets(images, ctx.device)
            if config.hflip:
                mirrored = np.ascontiguousarray(images[:, :, ::-1])
                mirrored_targets = align.targets(mirrored, ctx.device)
    trained = [*net.parameters(), *(align.parameters() if align is not None else [])]
    from diffusers.training_utils import EMAModel

    ema = EMAModel(net.parameters(), decay=config.ema_decay, foreach=True)
    batch_size = min(config.batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    # The fused step is one kernel over every tensor: 1.6 against 6 ms a step on 2 cores.
    optimizer = torch.optim.AdamW(
        trained, lr=config.lr, weight_decay=config.weight_decay,
        fused=torch.device(ctx.device).type in ("cpu", "cuda"),
    )  # fmt: skip
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=steps_per_epoch * config.epochs, pct_start=0.1
    )

    guide_state: dict[str, torch.Tensor] | None = None
    epoch = 0

    def train_epoch() -> float:
        nonlocal epoch, guide_state
        net.train()
        total = 0.0
        for idx, batch in image_batches(images, batch_size, gen):
            cond = all_cond.take(idx.to(ctx.device)).dropped(
                (torch.rand(len(idx), generator=gen) < config.text_dropout).to(ctx.device),
                (torch.rand(len(idx), generator=gen) < config.category_dropout).to(ctx.device),
                num_categories,
            )
            rows = idx.to(ctx.device)
            x = to_input(batch.to(ctx.device))
            goal = None if targets is None else targets[rows]
            if config.hflip:
                flipped = torch.rand(len(idx), generator=gen) < 0.5
                mirror = flipped.to(ctx.device).view(-1, 1, 1, 1)
                x = torch.where(mirror, x.flip(-1), x)
                if goal is not None and mirrored_targets is not None:
                    goal = torch.where(mirror, mirrored_targets[rows], goal)
            with training_precision(bfloat16, ctx.device):
                loss = denoising_loss(net, config, x, cond, gen)
                objective = (
                    loss
                    if align is None or goal is None
                    else loss - config.align_weight * align.similarity(goal)
                )
            optimizer.zero_grad(set_to_none=True)
            torch.autograd.backward(objective)
            if config.grad_clip is not None:  # a spike at the peak rate once undid 8 epochs
                torch.nn.utils.clip_grad_norm_(trained, config.grad_clip)
            optimizer.step()
            schedule.step()
            ema.step(net.parameters())
            total += float(loss.detach())
        ema.copy_to(ema_net.parameters())  # what validation sees and early stopping keeps
        epoch += 1
        if epoch == config.guide_epoch:
            guide_state = {k: v.detach().clone() for k, v in ema_net.state_dict().items()}
        return total / steps_per_epoch

    report = run_epochs(
        model, ema_net, train_epoch, epochs=config.epochs, patience=config.patience, ctx=ctx,
        validate=validate, gen=gen, name="generator",
    )  # fmt: skip
    ema_net.eval()
    kept = report.best_epoch or report.epochs  # without validation, the last epoch is kept
    if guide_state is not None and config.guide_epoch is not None and kept > config.guide_epoch:
        model.guide = copy.deepcopy(ema_net)
        model.guide.load_state_dict(guide_state)
    named = torch.from_numpy(labels < num_categories)
    if named.any():
        model.prior = CategoryPrior.fit(
            all_cond.sentence[named.to(ctx.device)], torch.from_numpy(labels)[named],
            num_categories,
        )  # fmt: skip
    return model, report


def validation_loss(
    model: TextToImage, images: ImageArray, cond: Conditioning, seed: int = 0
) -> float:
    """The denoising loss of `model` on held-out images under `cond` (theirs), at timesteps and
    noise fixed by `seed`, so epochs compare on the same draws; in the precision training
    steps ran in (`model.train_bfloat16`)."""
    net = model.net
    was_training = net.training
    net.eval()
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    with torch.no_grad(), training_precision(model.train_bfloat16, model.device):
        for start, chunk in input_chunks(images, 256, model.device):
            rows = torch.arange(start, start + len(chunk), device=model.device)
            loss = denoising_loss(
                net, model.config, chunk, cond.take(rows), gen,
                weighted=False,
            )  # fmt: skip
            total += float(loss) * len(chunk)
    net.train(was_training)
    return total / max(len(images), 1)
