"""Helpers shared by the model tests: a perturbed pretrained MAE and its checkpoint, the MAE encoder's
output in patch order, a medmae encoder written in timm's key layout, and an nnssl checkpoint."""

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


def resenc_kwargs(features: list[int], blocks: list[int]) -> dict:
    """A ``ResidualEncoderUNet``'s arguments as nnssl's plans write them (classes as import paths): nnU-Net's
    ResEnc settings, stride 2 after the first stage."""
    stages = len(features)
    return {
        "n_stages": stages,
        "features_per_stage": features,
        "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * stages,
        "strides": [[1, 1, 1]] + [[2, 2, 2]] * (stages - 1),
        "n_blocks_per_stage": blocks,
        "n_conv_per_stage_decoder": [1] * (stages - 1),
        "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "torch.nn.modules.activation.LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
    }


def nnssl_checkpoint(path, architecture: str = "ResEncL", in_channels: int = 1, arch_kwargs=None) -> dict:
    """Write ``path`` as nnssl's MAE trainer writes ``checkpoint_final.pth`` (the whole ResEnc U-Net with
    output = input channels under ``network_weights``, the adaptation plan's JSON form), random weights;
    returns the saved dict. ``arch_kwargs`` (a ``ResidualEncoderUNet``'s, classes as import paths) make a
    dynamic-architecture plan; by default nnssl's ResEncL: 6 stages, 32-320 features, blocks 1,3,4,6,6,6."""
    import pydoc

    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    kwargs = dict(arch_kwargs or resenc_kwargs([32, 64, 128, 256, 320, 320], [1, 3, 4, 6, 6, 6]))
    built = {k: pydoc.locate(v) if k in ("conv_op", "norm_op", "nonlin") else v for k, v in kwargs.items()}
    net = ResidualEncoderUNet(input_channels=in_channels, num_classes=in_channels, deep_supervision=False, **built)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    configuration = {
        "data_identifier": "nnsslPlans_onemmiso",
        "preprocessor_name": "DefaultPreprocessor",
        "spacing_style": "onemmiso",
        "normalization_schemes": ["ZScoreNormalization"],
        "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3},
        "resampling_fn_mask": "resample_data_or_seg_to_shape",
        "resampling_fn_mask_kwargs": {"is_seg": False, "order": 1},
        "spacing": [1.0, 1.0, 1.0],
        "patch_size": [160, 160, 160],
    }
    plan = {
        "architecture_plans": {
            "arch_class_name": architecture,
            "arch_kwargs": arch_kwargs,
            "arch_kwargs_requiring_import": ["conv_op", "norm_op", "nonlin"] if arch_kwargs else None,
        },
        "pretrain_plan": {
            "dataset_name": "Dataset001_OpenMind",
            "plans_name": "nnsslPlans",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0],
            "image_reader_writer": "NibabelReaderWriter",
            "transpose_forward": [0, 1, 2],
            "transpose_backward": [0, 1, 2],
            "configurations": {"onemmiso": configuration},
            "experiment_planner_used": "ExperimentPlanner",
        },
        "pretrain_num_input_channels": in_channels,
        "recommended_downstream_patchsize": [160, 160, 160],
        "key_to_encoder": "encoder.stages",
        "key_to_stem": "encoder.stem",
        "keys_to_in_proj": ["encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0"],
        "key_to_lpe": None,
    }
    saved = {
        "network_weights": net.state_dict(),
        "nnssl_adaptation_plan": plan,
        "trainer_name": "BaseMAETrainer",
        "init_args": {"fold": 0, "device": torch.device("cpu")},
    }
    torch.save(saved, path)
    return saved
