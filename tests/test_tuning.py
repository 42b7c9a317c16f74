"""Linear probing and partial fine-tuning of the ViT classifier (MAE paper, section 4 and figure 9)."""

import pytest
import torch
from torch import nn

from medmae.checkpoint import model_checkpoint, save_checkpoint
from medmae.config import load_config
from medmae.errors import UserError
from medmae.models import create_model
from medmae.tasks import load_task
from medmae.training.finetune import build_finetune_model
from medmae.training.optim import build_optimizer
from medmae.training.session import with_roi


def tiny_classifier(**kwargs) -> nn.Module:
    return create_model("vit_tiny_patch16_2d_cls", img_size=(32, 48), num_classes=3, drop_path_rate=0.1, **kwargs)


def one_step(model: nn.Module) -> None:
    optimizer = build_optimizer(model, 1e-2, 0.05, (0.9, 0.999))
    model.train()
    x, y = torch.randn(4, 1, 32, 48), torch.randint(0, 2, (4, 3)).float()
    nn.functional.binary_cross_entropy_with_logits(model(x), y).backward()
    optimizer.step()


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


@pytest.mark.parametrize("tuning", ["linear", "partial"])
def test_a_frozen_encoder_reading_an_untrained_cls_token_is_refused(tmp_path, tuning):
    """An MAE without a cls token gives a cls-pooled classifier a fresh token; frozen, it would never learn."""
    mae = create_model("mae_vit_tiny_patch16_2d", img_size=(64, 64), in_channels=1)
    path = save_checkpoint(model_checkpoint(mae, stage="pretrain"), tmp_path / "mae.pt")
    task = with_roi(load_task("chestxray14"), [64, 64])
    cfg = load_config("finetune", "chestxray14", None, [f"model.tuning={tuning}", "model.pool=cls"])
    with pytest.raises(UserError, match="has no cls token"):
        build_finetune_model(cfg, task, str(path))
    cfg = load_config("finetune", "chestxray14", None, [f"model.tuning={tuning}", "model.pool=avg"])
    assert type(build_finetune_model(cfg, task, str(path))).__name__ == "ViTClassifier"
