"""Helpers shared by the model tests: a perturbed pretrained MAE and its checkpoint, the MAE encoder's
output in patch order, and a medmae encoder written in timm's key layout."""

from __future__ import annotations

import torch

from medmae.checkpoint import model_checkpoint
from medmae.models import ViTEncoder, create_model

SIZE_3D = (32, 48, 32)
PATCH, POS = "patch_embedding.patch_embeddings.weight", "patch_embedding.position_embeddings"


def pretrained(spatial_dims=3, **kwargs):
    img_size = SIZE_3D if spatial_dims == 3 else (32, 48)
    mae = create_model(f"mae_vit_tiny_patch16_{spatial_dims}d", img_size=img_size, **kwargs)
    with torch.no_grad():  # make every tensor distinct from a fresh initialisation
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return mae, model_checkpoint(mae)


def unshuffled_encoding(mae, x):
    """The MAE encoder on every patch (mask ratio 0), back in patch order."""
    latent, _, ids_restore = mae.forward_encoder(x, mask_ratio=0.0)
    return torch.gather(latent, 1, ids_restore.unsqueeze(-1).expand(-1, -1, latent.shape[-1]))


def timm_layout(encoder: ViTEncoder) -> dict[str, torch.Tensor]:
    """A medmae 2D encoder (cls token, position-free) written in timm's layout, as a timm file would hold it."""
    state, renamed = encoder.state_dict(), {}
    for key, tensor in state.items():
        key = (
            key.replace("patch_embedding.patch_embeddings", "patch_embed.proj")
            .replace("attn.out_proj", "attn.proj")
            .replace("mlp.linear1", "mlp.fc1")
            .replace("mlp.linear2", "mlp.fc2")
        )
        renamed[key] = tensor
    renamed["pos_embed"] = torch.cat([torch.zeros(1, 1, tensor.shape[-1]), renamed.pop(POS)], dim=1)
    return renamed | {"head.weight": torch.zeros(10, encoder.config["width"]), "head.bias": torch.zeros(10)}
