"""The residual DynUNet and the transfer of a masked-pretrained convolutional encoder into it: shapes, the
recorded config, the exact key sets, channel adaptation and refusals."""

from __future__ import annotations

import pytest
import torch

from medmae.models.dynunet import (
    DYNUNET_FILTERS,
    ResidualUNet,
    conv_encoder,
    dynunet_from_pretrained,
    encoder_tensors,
    load_conv_encoder,
)
from medmae.models.sparse_mae import SparseConvMAE
from medmae.models.weights import WeightTransferError

TINY = DYNUNET_FILTERS["tiny"]
SIZE_3D = (32, 48, 32)
ENCODER_PARTS = ("input_block", "downsamples", "bottleneck")
DECODER_PARTS = ("upsamples", "output_block")


def pretrained_payload(name: str | None = "mae_dynunet_tiny_3d") -> tuple[SparseConvMAE, dict]:
    """A SparseConvMAE with every tensor moved off its initialisation, and its checkpoint payload."""
    mae = SparseConvMAE(3, SIZE_3D, filters=TINY)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.05 * torch.randn_like(p))
    config = dict(mae.config) | ({} if name is None else {"name": name})
    return mae, {"state_dict": mae.state_dict(), "config": config}


def keys_under(state: dict, parts: tuple[str, ...]) -> set[str]:
    return {key for key in state if key.split(".", 1)[0] in parts}


@pytest.mark.parametrize("spatial_dims, size", [(3, SIZE_3D), (2, (32, 48))])
def test_the_residual_unet_segments_at_input_size_and_records_its_config(spatial_dims, size):
    net = ResidualUNet(spatial_dims, 2, 3, TINY, img_size=size).eval()
    with torch.no_grad():
        assert net(torch.randn(1, 2, *size)).shape == (1, 3, *size)
    assert net.config == {
        "spatial_dims": spatial_dims,
        "in_channels": 2,
        "out_channels": 3,
        "filters": list(TINY),
        "strides": [1, 2, 2, 2, 2],
        "kernel_size": 3,
        "img_size": list(size),
    }
    assert all(type(block).__name__ == "UnetResBlock" for block in (net.input_block, net.bottleneck))


def test_sizes_that_are_not_multiples_of_16_are_refused_naming_the_size():
    with pytest.raises(ValueError, match=r"\(40, 32, 32\)"):
        ResidualUNet(3, 1, 2, TINY, img_size=(40, 32, 32))
    with pytest.raises(ValueError, match=r"\(24, 32\)"):
        ResidualUNet(2, 1, 2, TINY)(torch.randn(1, 1, 24, 32))


def test_the_encoder_view_shares_the_modules_and_avoids_the_skip_layer_aliases():
    net = ResidualUNet(3, 1, 2, TINY)
    view = conv_encoder(net)
    assert set(view.state_dict()) == keys_under(net.state_dict(), ENCODER_PARTS)
    assert view["bottleneck"] is net.bottleneck and not any(k.startswith("skip_layers") for k in view.state_dict())


def test_transfer_from_a_sparse_mae_maps_the_exact_key_sets():
    mae, payload = pretrained_payload()
    net, report = dynunet_from_pretrained(payload, out_channels=3)
    state = net.state_dict()
    encoder_keys, decoder_keys = keys_under(state, ENCODER_PARTS), keys_under(state, DECODER_PARTS)
    assert set(report.loaded) == encoder_keys and len(report.loaded) == len(encoder_keys)
    assert not report.adapted and not report.skipped and not report.initialised
    assert set(state) - encoder_keys - decoder_keys == {k for k in state if k.startswith("skip_layers.")}
    source = mae.state_dict()
    for key in encoder_keys:
        assert torch.equal(state[key], source["encoder." + key]), key
    assert net.config["name"] == "dynunet_tiny_3d" and net.config["img_size"] == list(SIZE_3D)


def test_channel_adaptation_is_reported_and_keeps_an_equal_signal_output():
    _, payload = pretrained_payload()
    one, _ = dynunet_from_pretrained(payload, out_channels=2)
    four, report = dynunet_from_pretrained(payload, out_channels=2, in_channels=4)
    assert set(report.adapted) == {"input_block.conv1.conv.weight", "input_block.conv3.conv.weight"}
    assert all("1 -> 4" in why for why in report.adapted.values())
    x = torch.randn(1, 1, *SIZE_3D)
    with torch.no_grad():
        torch.testing.assert_close(four.input_block(x.repeat(1, 4, 1, 1, 1)), one.input_block(x))


def test_other_filters_are_refused_naming_the_key_and_both_shapes():
    _, payload = pretrained_payload()
    with pytest.raises(WeightTransferError) as caught:
        load_conv_encoder(ResidualUNet(3, 1, 2, DYNUNET_FILTERS["mini"]), encoder_tensors(payload["state_dict"]))
    message = str(caught.value)
    assert "shape of input_block.conv1.conv.weight: checkpoint (8, 1, 3, 3, 3), model (16, 1, 3, 3, 3)" in message
    assert "shape of bottleneck.norm1.weight: checkpoint (128,), model (256,)" in message


def test_missing_and_unexpected_keys_are_all_listed():
    net = ResidualUNet(3, 1, 2, TINY)
    source = {k: v for k, v in conv_encoder(net).state_dict().items() if not k.startswith("bottleneck.norm3")}
    source["bottleneck.extra"] = torch.zeros(2)
    with pytest.raises(WeightTransferError) as caught:
        load_conv_encoder(ResidualUNet(3, 1, 2, TINY), source)
    message = str(caught.value)
    assert "unexpected key bottleneck.extra (2,)" in message
    assert "missing key bottleneck.norm3.weight (128,)" in message and "missing key bottleneck.norm3.bias" in message


def test_names_are_derived_and_a_residual_unet_checkpoint_is_accepted():
    _, payload = pretrained_payload(name=None)
    assert dynunet_from_pretrained(payload, 2)[0].config["name"] == "dynunet_custom_3d"
    net, _ = dynunet_from_pretrained({**payload, "config": {**payload["config"], "name": "mae_dynunet_mini_3d"}}, 2)
    assert net.config["name"] == "dynunet_mini_3d"
    unet = ResidualUNet(3, 1, 2, TINY, img_size=SIZE_3D)
    again, report = dynunet_from_pretrained(
        {"state_dict": unet.state_dict(), "config": dict(unet.config, name="dynunet_tiny_3d")}, 5
    )
    assert again.config["name"] == "dynunet_tiny_3d" and set(report.loaded) == set(conv_encoder(unet).state_dict())


def test_only_in_channels_and_img_size_may_be_overridden():
    _, payload = pretrained_payload()
    with pytest.raises(ValueError, match="filters"):
        dynunet_from_pretrained(payload, 2, filters=DYNUNET_FILTERS["mini"])
    with pytest.raises(WeightTransferError, match="no convolutional encoder"):
        dynunet_from_pretrained({"state_dict": {"head.weight": torch.zeros(1)}, "config": payload["config"]}, 2)
