"""pinlab_models: image encoders, recommenders and their training."""

from pinlab_models._align import (
    ImageTextModel,
    load_image_text_model,
    train_alignment,
    zero_shot_labels,
)
from pinlab_models._cold_start import HybridRecommender
from pinlab_models._encoder import CNNEncoder, augment, supcon_loss, train_encoder
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
    "Recommender",
    "RecommenderSpec",
    "Scorer",
    "TextEncoder",
    "TrainContext",
    "Validator",
    "augment",
    "build_recommender",
    "load_image_text_model",
    "load_recommender",
    "recommender_names",
    "recommender_spec",
    "register",
    "resolve_device",
    "seed_everything",
    "supcon_loss",
    "train_alignment",
    "train_encoder",
    "zero_shot_labels",
]
