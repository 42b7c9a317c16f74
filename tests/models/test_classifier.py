"""The ViT classifier: raw logits, average pooling, and its tuning modes (linear probe, partial, full; MAE
paper, section 4 and figure 9)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medmae.models import (
    ViTClassifier,
    classifier_from_pretrained,
    create_model,
)
from medmae.training.optim import build_optimizer
from tests.models.helpers import pretrained


def tiny_classifier(**kwargs) -> nn.Module:
    return create_model("vit_tiny_patch16_2d_cls", img_size=(32, 48), num_classes=3, drop_path_rate=0.1, **kwargs)


def one_step(model: nn.Module) -> None:
    optimizer = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999))
    model.train()
    x, y = torch.randn(4, 1, 32, 48), torch.randint(0, 2, (4, 3)).float()
    nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    optimizer.step()


def test_average_pooling_leaves_the_cls_token_out():
    _, checkpoint = pretrained(spatial_dims=2, cls_token=True)
    model, report = classifier_from_pretrained(checkpoint, num_classes=3, pool="avg", cls_token=True)
    assert report.skipped == {} and report.initialised == {}
    x = torch.randn(2, 1, 32, 48)
    with torch.no_grad():
        tokens, _ = model.encoder(x)
        assert torch.allclose(model(x), model.head(tokens[:, 1:].mean(1)))
        assert not torch.allclose(model(x), model.head(tokens.mean(1)))


def test_classifier_has_no_bounded_activation_and_fits_a_separable_batch():
    _, checkpoint = pretrained(spatial_dims=2)
    model, _ = classifier_from_pretrained(checkpoint, num_classes=2)
    assert isinstance(model, ViTClassifier) and model.config["name"] == "vit_tiny_patch16_2d_cls"
    assert not any(isinstance(m, (nn.Tanh, nn.Sigmoid, nn.Softmax, nn.Hardtanh)) for m in model.modules())
    x = torch.randn(8, 1, 32, 48)
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]] * 2, dtype=torch.float32)
    x += 2 * labels[:, 0, None, None, None] * (torch.arange(48) < 24) + 2 * labels[:, 1, None, None, None] * (
        torch.arange(48) >= 24
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(150):
        loss = nn.functional.binary_cross_entropy_with_logits(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        logits = model.eval()(x)
    assert (logits[labels == 1] > 3).all() and (logits[labels == 0] < -3).all(), logits


def test_a_linear_probe_step_changes_the_head_and_batchnorm_statistics_and_nothing_of_the_encoder():
    model = tiny_classifier(head_norm=True)
    assert model.set_tuning("linear") == ["head.weight", "head.bias"]
    before = {key: value.clone() for key, value in model.state_dict().items()}
    one_step(model)
    after = model.state_dict()
    encoder_keys = [key for key in after if key.startswith("encoder.")]
    assert len(encoder_keys) == len(model.encoder.state_dict()) > 0
    assert all(torch.equal(before[key], after[key]) for key in encoder_keys)  # every parameter and buffer
    assert all(param.grad is None for param in model.encoder.parameters())
    assert not torch.equal(before["head.weight"], after["head.weight"])
    assert not torch.equal(before["head_norm.running_mean"], after["head_norm.running_mean"])
    assert not torch.equal(before["head_norm.running_var"], after["head_norm.running_var"])
    assert after["head_norm.num_batches_tracked"] == 1
    assert "head_norm.weight" not in after  # BatchNorm without affine parameters
    assert model.training and not model.encoder.training  # no drop path in the frozen encoder


def test_the_probe_head_normalises_the_features_per_batch():
    model = tiny_classifier(head_norm=True)
    model.set_tuning("linear")
    features = []
    model.head.register_forward_pre_hook(lambda module, args: features.append(args[0]))
    model(torch.randn(8, 1, 32, 48))
    torch.testing.assert_close(features[0].mean(0), torch.zeros(48), atol=1e-5, rtol=0)
    torch.testing.assert_close(features[0].var(0, unbiased=False), torch.ones(48), atol=1e-3, rtol=0)


@pytest.mark.parametrize("blocks", [0, 1, 4])
def test_partial_fine_tuning_trains_the_last_blocks_the_final_norm_and_the_head(blocks):
    model = tiny_classifier()
    trained = model.set_tuning("partial", blocks)
    expected = {f"encoder.blocks.{k}." for k in range(12 - blocks, 12)} | {"encoder.norm.", "head."}
    assert all(name.startswith(tuple(expected)) for name in trained)
    assert all(any(name.startswith(prefix) for name in trained) for prefix in expected)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    one_step(model)
    after = model.state_dict()
    for key in after:
        frozen = not key.startswith(tuple(expected))
        assert torch.equal(before[key], after[key]) == frozen, key
    assert model.encoder.training  # partial fine-tuning keeps drop path in the trained blocks


def test_full_fine_tuning_trains_everything_and_bad_settings_are_refused():
    model = tiny_classifier()
    assert len(model.set_tuning("full")) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="the encoder has 12"):
        model.set_tuning("partial", 13)
    with pytest.raises(ValueError, match="choose one of full, linear, partial"):
        model.set_tuning("frozen")
