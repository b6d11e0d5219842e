"""pinlab_models: image encoders, recommenders and their training."""

from pinlab_models._align import (
    ImageTextModel,
    load_image_text_model,
    train_alignment,
    zero_shot_labels,
)
from pinlab_models._cold_start import HybridRecommender
from pinlab_models._encoder import CNNEncoder, augment, supcon_loss, train_encoder
from pinlab_models._encoders import (
    build_network,
    builtin_archs,
    check_arch,
    register_encoder_arch,
)
from pinlab_models._recipes import (
    ProxyAnchorLoss,
    nt_xent_loss,
    product_augment,
    train_with_recipe,
)
from pinlab_models._recommenders import MatrixFactorization, Popularity
from pinlab_models._runtime import resolve_device, seed_everything
from pinlab_models._text import TextEncoder
from pinlab_models.contracts import (
    AlignConfig,
    Device,
    EncoderConfig,
    EpochRecord,
    FitReport,
    HybridConfig,
    ImageEncoder,
    MFConfig,
    PinlabModelError,
    PopularityConfig,
    Recipe,
    RecipeConfig,
    Recommender,
    Scorer,
    TrainContext,
    Validator,
)
from pinlab_models.registry import (
    RecommenderSpec,
    build_recommender,
    load_recommender,
    recommender_names,
    recommender_spec,
    register,
)

__all__ = [
    "AlignConfig",
    "CNNEncoder",
    "Device",
    "EncoderConfig",
    "EpochRecord",
    "FitReport",
    "HybridConfig",
    "HybridRecommender",
    "ImageEncoder",
    "ImageTextModel",
    "MFConfig",
    "MatrixFactorization",
    "PinlabModelError",
    "Popularity",
    "PopularityConfig",
    "ProxyAnchorLoss",
    "Recipe",
    "RecipeConfig",
    "Recommender",
    "RecommenderSpec",
    "Scorer",
    "TextEncoder",
    "TrainContext",
    "Validator",
    "augment",
    "build_network",
    "build_recommender",
    "builtin_archs",
    "check_arch",
    "load_image_text_model",
    "load_recommender",
    "nt_xent_loss",
    "product_augment",
    "recommender_names",
    "recommender_spec",
    "register",
    "register_encoder_arch",
    "resolve_device",
    "seed_everything",
    "supcon_loss",
    "train_alignment",
    "train_encoder",
    "train_with_recipe",
    "zero_shot_labels",
]
