"""UNETR's decoder for a ViT of any power-of-two patch size, built from MONAI's own UNETR blocks.

At patch 16 (four up-sampling stages) the module tree, the state-dict keys and the outputs equal MONAI's
``UNETR`` (tested); at patch 8 it has three stages and at patch 4 two. With ``s`` stages the encoder's
block outputs ``depth * k // s`` (``k = 1 .. s-1``; MONAI's 3, 6, 9 at ``s = 4`` and depth 12) feed the
skips, the finest from the earliest block, and the input itself feeds the full-resolution skip.
"""

from __future__ import annotations

import torch
from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock
from monai.networks.nets import UNETR
from torch import nn

from medmae.models.encoder import ViTEncoder
from medmae.models.patchify import upsampling_stages

MONAI_PATCH = 16  # the only patch size of MONAI's UNETR class
MONAI_DEPTH = 12


def unetr_stages(patch_size: list[int] | tuple[int, ...]) -> list[tuple[int, ...]]:
    """:func:`upsampling_stages`, where UNETR also needs every axis >= 2 and the axes to differ by one
    halving at most, so that its multi-stage skip blocks up-sample every axis alike."""
    factors = upsampling_stages(patch_size)
    if min(patch_size) < 2 or any(min(f) == 1 for f in factors[:-1]):
        raise ValueError(
            f"patch_size {list(patch_size)}: the UNETR decoder needs every axis >= 2 and the axes to differ "
            "by one halving at most (use model.arch=light for other patch shapes)"
        )
    return factors


class EncoderUNETR(nn.Module):
    """UNETR around a :class:`ViTEncoder` with patch size ``p`` (every axis a power of two).

    Args:
        encoder: a ViTEncoder without cls token, at least as many blocks as stages.
        out_channels: segmentation classes (including background).
        feature_size, norm_name, conv_block, res_block: MONAI's UNETR decoder settings.

    Keys: ``vit.*``, ``encoder1`` (the input at full resolution), ``encoder2 .. encoder{s}`` (block
    outputs up-sampled to 1/2 .. 1/2^(s-1) resolution), ``decoder{s+1} .. decoder2``, ``out``.

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
        super().__init__()
        cfg = encoder.config
        factors = unetr_stages(cfg["patch_size"])
        stages = len(factors)
        if cfg["cls_token"] or cfg["depth"] < stages:
            raise ValueError(f"encoder does not fit UNETR: it needs no cls token and at least {stages} blocks")
        self.vit = encoder
        self.taps = [cfg["depth"] * k // stages for k in range(1, stages)]
        dims, width = cfg["spatial_dims"], cfg["width"]
        blocks = {"spatial_dims": dims, "kernel_size": 3, "norm_name": norm_name, "res_block": res_block}
        self.encoder1 = UnetrBasicBlock(in_channels=cfg["in_channels"], out_channels=feature_size, stride=1, **blocks)
        for k in range(1, stages):  # skip at 1/2^k resolution: stages - k up-samplings from the token grid
            self.add_module(
                f"encoder{k + 1}",
                UnetrPrUpBlock(
                    in_channels=width,
                    out_channels=feature_size * 2**k,
                    num_layer=stages - k - 1,
                    stride=1,
                    upsample_kernel_size=2,
                    conv_block=conv_block,
                    **blocks,
                ),
            )
        for k in range(stages, 0, -1):  # decoder{k+1}: to 1/2^(k-1) resolution, joining skip encoder{k}
            self.add_module(
                f"decoder{k + 1}",
                UnetrUpBlock(
                    in_channels=width if k == stages else feature_size * 2**k,
                    out_channels=feature_size * 2 ** (k - 1),
                    upsample_kernel_size=factors[stages - k],
                    **blocks,
                ),
            )
        self.out = UnetOutBlock(spatial_dims=dims, in_channels=feature_size, out_channels=out_channels)
        self.config = dict(
            cfg,
            out_channels=out_channels,
            feature_size=feature_size,
            norm_name=norm_name,
            conv_block=conv_block,
            res_block=res_block,
        )

    def token_map(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens ``[B, N, D]`` -> feature map ``[B, D, *grid]``."""
        return tokens.transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *self.vit.grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``[B, C, *img_size]`` -> logits ``[B, out_channels, *img_size]``."""
        last, hidden = self.vit(x)
        stages = len(self.taps) + 1
        skips = [self.encoder1(x)]
        skips += [getattr(self, f"encoder{k + 1}")(self.token_map(hidden[t])) for k, t in enumerate(self.taps, 1)]
        out = self.token_map(last)
        for k in range(stages, 0, -1):
            out = getattr(self, f"decoder{k + 1}")(out, skips[k - 1])
        return self.out(out)


def to_monai_unetr(model: EncoderUNETR) -> UNETR:
    """A plain MONAI ``UNETR`` holding the same weights, for users who want MONAI's class.

    Only a patch-16, 12-block model has one. The only keys MONAI has and medmae lacks are the unused
    ``norm_cross_attn`` LayerNorms; any other difference raises, and so does an encoder whose LayerNorm
    epsilon is not MONAI's 1e-5.
    """
    cfg = model.config
    if any(p != MONAI_PATCH for p in cfg["patch_size"]) or cfg["depth"] != MONAI_DEPTH:
        raise RuntimeError(
            f"MONAI's UNETR has patch 16 and 12 blocks; this model has patch {cfg['patch_size']} and "
            f"{cfg['depth']} blocks"
        )
    if cfg.get("norm_eps", 1e-5) != 1e-5:
        raise RuntimeError(f"MONAI's UNETR uses LayerNorm epsilon 1e-5; this encoder uses {cfg['norm_eps']}")
    monai_model = UNETR(
        in_channels=cfg["in_channels"],
        out_channels=cfg["out_channels"],
        img_size=tuple(cfg["img_size"]),
        feature_size=cfg["feature_size"],
        hidden_size=cfg["width"],
        mlp_dim=cfg["mlp_dim"],
        num_heads=cfg["num_heads"],
        norm_name=cfg["norm_name"],
        conv_block=cfg["conv_block"],
        res_block=cfg["res_block"],
        spatial_dims=cfg["spatial_dims"],
        qkv_bias=cfg["qkv_bias"],
    )
    missing, unexpected = monai_model.load_state_dict(model.state_dict(), strict=False)
    stray = [k for k in missing if ".norm_cross_attn." not in k]
    if stray or unexpected:
        raise RuntimeError(f"state dicts differ: missing {stray}, unexpected {list(unexpected)}")
    return monai_model.to(next(model.parameters()).device)
