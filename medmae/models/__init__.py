"""Models: patchify, masking, position embeddings, the MAE, its encoder, UNETR, the classifier, transfer."""

from medmae.models.classifier import ViTClassifier
from medmae.models.encoder import ViTEncoder
from medmae.models.mae import MaskedAutoencoder
from medmae.models.masking import random_masking
from medmae.models.patchify import patchify, unpatchify
from medmae.models.pos_embed import resample_pos_embed, sincos_pos_embed
from medmae.models.registry import create_model, list_models
from medmae.models.unetr import EncoderUNETR, to_monai_unetr
from medmae.models.weights import (
    TransferReport,
    WeightTransferError,
    classifier_from_pretrained,
    load_encoder,
    unetr_from_pretrained,
)

__all__ = [
    "EncoderUNETR",
    "MaskedAutoencoder",
    "TransferReport",
    "ViTClassifier",
    "ViTEncoder",
    "WeightTransferError",
    "classifier_from_pretrained",
    "create_model",
    "list_models",
    "load_encoder",
    "patchify",
    "random_masking",
    "resample_pos_embed",
    "sincos_pos_embed",
    "to_monai_unetr",
    "unetr_from_pretrained",
    "unpatchify",
]
