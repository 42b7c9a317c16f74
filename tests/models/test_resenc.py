"""nnU-Net's ResEnc family: the presets are nnU-Net's networks, the sparse MAE computes what the dense
encoder computes on what it sees and nothing of what it hides, and transfer loads every encoder tensor."""

from __future__ import annotations

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from medmae.checkpoint import model_checkpoint
from medmae.models import create_model
from medmae.models.resenc import SparseResEncMAE, resenc_from_pretrained
from medmae.models.weights import WeightTransferError


def test_the_l_preset_is_nnunets_resenc_l_key_for_key():
    """nnU-Net's ResEnc L for 3D full resolution, as its planner and nnssl's ResEncL write it."""
    nnunet = ResidualEncoderUNet(
        input_channels=1,
        n_stages=6,
        features_per_stage=[32, 64, 128, 256, 320, 320],
        conv_op=nn.Conv3d,
        kernel_sizes=[[3, 3, 3]] * 6,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * 5,
        n_blocks_per_stage=[1, 3, 4, 6, 6, 6],
        num_classes=3,
        n_conv_per_stage_decoder=[1] * 5,
        conv_bias=True,
        norm_op=nn.InstanceNorm3d,
        norm_op_kwargs={"eps": 1e-5, "affine": True},
        nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True},
    )
    for size in ("l", "m"):
        ours = create_model(f"resenc_{size}_3d", in_channels=1, out_channels=3)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {
            k: v.shape for k, v in nnunet.state_dict().items()
        }
        norms = {type(m) for m in ours.modules() if isinstance(m, nn.modules.batchnorm._NormBase)}
        assert norms == {nn.InstanceNorm3d} and any(isinstance(m, nn.LeakyReLU) for m in ours.modules())
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in nnunet.parameters())


def visible_everywhere(mae: SparseResEncMAE, batch: int) -> torch.Tensor:
    return torch.zeros(batch, mae.grid[0] * mae.grid[1] * mae.grid[2])


def test_the_sparse_encoder_with_nothing_hidden_is_nnunets_dense_encoder():
    mae = create_model("mae_resenc_tiny_3d", img_size=32, in_channels=2).eval()
    x = torch.randn(2, 2, 32, 32, 32)
    with torch.no_grad():
        sparse = mae.forward_encoder(x, visible_everywhere(mae, 2))
        dense = mae.encoder(x)
    assert len(sparse) == len(dense) == 5
    for ours, theirs in zip(sparse, dense):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_hidden_cells_never_reach_the_visible_features():
    mae = create_model("mae_resenc_tiny_3d", img_size=(32, 48, 32), mask_ratio=0.75)
    x = torch.randn(2, 1, 32, 48, 32)
    mask = mae.draw_mask(2, x.device, generator=torch.Generator().manual_seed(0))
    hidden = mae.visible_maps(mask)[0] == 0
    changed = torch.where(hidden, torch.full_like(x, 50.0), x)
    with torch.no_grad():
        for before, after, visible in zip(
            mae.forward_encoder(x, mask), mae.forward_encoder(changed, mask), mae.visible_maps(mask)
        ):
            torch.testing.assert_close(before, after, atol=1e-5, rtol=1e-4)
            assert before.masked_select(visible == 0).abs().max() == 0  # hidden positions stay exactly 0
    loss, pred, _ = mae(x, seeds=torch.tensor([3, 4]))
    loss.backward()
    assert torch.isfinite(loss) and pred.shape == (2, mae.grid[0] * mae.grid[1] * mae.grid[2], 16**3)
    assert all(token.grad is not None for token in mae.mask_tokens)


def test_the_masking_unit_is_the_encoders_total_stride():
    assert create_model("mae_resenc_tiny_3d", img_size=32).patch_size == (16, 16, 16)
    assert create_model("mae_resenc_l_3d", img_size=64).patch_size == (32, 32, 32)
    with pytest.raises(ValueError, match="multiple of the encoder's total stride"):
        create_model("mae_resenc_l_3d", img_size=48)


def test_the_pretrained_encoder_moves_into_the_segmenter_with_every_key_accounted_for():
    mae = create_model("mae_resenc_tiny_3d", img_size=32, in_channels=1)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    payload = model_checkpoint(mae)
    model, report = resenc_from_pretrained(payload, 3, in_channels=4)
    encoder = mae.encoder.state_dict()
    assert sorted([*report.loaded, *report.adapted]) == sorted(model.encoder.state_dict())
    for key, tensor in model.encoder.state_dict().items():
        if key in report.adapted:  # nnssl's adaptation: the one channel repeated and divided
            torch.testing.assert_close(tensor, encoder[key].repeat(1, 4, 1, 1, 1) / 4)
        else:
            torch.testing.assert_close(tensor, encoder[key])
    assert set(report.adapted) == {"stem.convs.0.conv.weight", "stem.convs.0.all_modules.0.weight"}
    assert model(torch.randn(1, 4, 32, 32, 32)).shape == (1, 3, 32, 32, 32)


def test_an_encoder_of_another_architecture_is_refused_naming_key_and_shapes():
    mae = create_model("mae_resenc_tiny_3d", img_size=32)
    payload = model_checkpoint(mae)
    payload["config"] = dict(payload["config"], features=[8, 16, 32, 64, 96])
    with pytest.raises(WeightTransferError, match=r"shape of stages\.4\.blocks\.0\.conv1\.conv\.weight: checkpoint"):
        resenc_from_pretrained(payload, 2)


@pytest.mark.parametrize("name", ["mae_resenc_tiny_3d", "resenc_tiny_3d"])
def test_every_trainable_parameter_gets_a_gradient(name):
    model = create_model(name, img_size=32, in_channels=1, **({} if name.startswith("mae") else {"out_channels": 2}))
    x = torch.randn(2, 1, 32, 32, 32)
    (model(x)[0] if name.startswith("mae") else model(x).mean()).backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    frozen = {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"decoder.seg_layers.{k}" for k in range(3)}  # deep supervision's heads, never run
