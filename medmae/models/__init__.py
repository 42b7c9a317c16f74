"""Models: patchify, masking, position embeddings, the ViT MAE and its encoder, UNETR, the light decoder, the
classifier, the residual U-Nets (DynUNet, nnU-Net's ResEnc) and their sparse convolutional MAEs, transfer;
the backbone families and their registry."""

from medmae.models import families  # noqa: F401  (registers the backbone families)
from medmae.models.classifier import ViTClassifier
from medmae.models.dynunet import ResidualUNet, dynunet_from_pretrained
from medmae.models.encoder import ViTEncoder
from medmae.models.light import LightDecoderViT
from medmae.models.mae import MaskedAutoencoder
from medmae.models.masking import random_masking
from medmae.models.patchify import patchify, unpatchify
from medmae.models.pos_embed import resample_pos_embed, sincos_pos_embed
from medmae.models.registry import create_model, list_models
from medmae.models.resenc import ResEncUNet, SparseResEncMAE, resenc_from_pretrained
from medmae.models.sparse_mae import SparseConvMAE
from medmae.models.unetr import EncoderUNETR, to_monai_unetr
from medmae.models.weights import (
    TransferReport,
    WeightTransferError,
    classifier_from_pretrained,
    light_from_pretrained,
    load_encoder,
    unetr_from_pretrained,
)

__all__ = [
    "EncoderUNETR",
    "LightDecoderViT",
    "MaskedAutoencoder",
    "ResEncUNet",
    "ResidualUNet",
    "SparseConvMAE",
    "SparseResEncMAE",
    "TransferReport",
    "ViTClassifier",
    "ViTEncoder",
    "WeightTransferError",
    "classifier_from_pretrained",
    "create_model",
    "dynunet_from_pretrained",
    "light_from_pretrained",
    "list_models",
    "load_encoder",
    "patchify",
    "random_masking",
    "resample_pos_embed",
    "resenc_from_pretrained",
    "sincos_pos_embed",
    "to_monai_unetr",
    "unetr_from_pretrained",
    "unpatchify",
]
