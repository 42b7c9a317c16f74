"""MONAI's UNETR with medmae's encoder in place of its ViT (SDPA attention, drop path, q/k/v bias)."""

from __future__ import annotations

from monai.networks.nets import UNETR

from medmae.models.encoder import ViTEncoder

UNETR_PATCH = 16
UNETR_DEPTH = 12


class EncoderUNETR(UNETR):
    """UNETR whose ``vit`` is a :class:`ViTEncoder`; its convolutional decoder stays MONAI's.

    State-dict keys equal MONAI's UNETR, except that medmae's blocks carry no unused
    ``norm_cross_attn`` LayerNorm.

    Args:
        encoder: a ViTEncoder with patch size 16, 12 blocks and no cls token (UNETR's fixed layout).
        out_channels: segmentation classes (including background).
        feature_size, norm_name, conv_block, res_block: MONAI UNETR decoder settings.

    Forward: ``[B, C, *img_size]`` -> logits ``[B, out_channels, *img_size]``.
    """

    def __init__(
        self,
        encoder: ViTEncoder,
        out_channels: int,
        feature_size: int = 16,
        norm_name: str = "instance",
        conv_block: bool = True,
        res_block: bool = True,
    ) -> None:
        cfg = encoder.config
        problems = []
        if any(p != UNETR_PATCH for p in cfg["patch_size"]):
            problems.append(f"patch_size {cfg['patch_size']} (UNETR needs 16)")
        if cfg["depth"] != UNETR_DEPTH:
            problems.append(f"depth {cfg['depth']} (UNETR needs 12 blocks)")
        if cfg["cls_token"]:
            problems.append("a cls token (UNETR has none)")
        if problems:
            raise ValueError("encoder does not fit UNETR: " + "; ".join(problems))
        unetr_config = {
            "in_channels": cfg["in_channels"],
            "out_channels": out_channels,
            "img_size": tuple(cfg["img_size"]),
            "feature_size": feature_size,
            "hidden_size": cfg["width"],
            "mlp_dim": cfg["mlp_dim"],
            "num_heads": cfg["num_heads"],
            "norm_name": norm_name,
            "conv_block": conv_block,
            "res_block": res_block,
            "spatial_dims": cfg["spatial_dims"],
            "qkv_bias": cfg["qkv_bias"],
        }
        super().__init__(**unetr_config)
        self.unetr_config = unetr_config
        self.vit = encoder
        self.config = dict(
            cfg,
            out_channels=out_channels,
            feature_size=feature_size,
            norm_name=norm_name,
            conv_block=conv_block,
            res_block=res_block,
        )


def to_monai_unetr(model: EncoderUNETR) -> UNETR:
    """A plain MONAI ``UNETR`` holding the same weights, for users who want MONAI's class.

    The only keys MONAI has and medmae lacks are the unused ``norm_cross_attn`` LayerNorms; any other
    difference raises, and so does an encoder whose LayerNorm epsilon is not MONAI's 1e-5.
    """
    if model.config.get("norm_eps", 1e-5) != 1e-5:
        raise RuntimeError(f"MONAI's UNETR uses LayerNorm epsilon 1e-5; this encoder uses {model.config['norm_eps']}")
    monai_model = UNETR(**model.unetr_config)
    missing, unexpected = monai_model.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in missing if ".norm_cross_attn." not in k]
    if stray or unexpected:
        raise RuntimeError(f"state dicts differ: missing {stray}, unexpected {list(unexpected)}")
    return monai_model.to(next(model.parameters()).device)
