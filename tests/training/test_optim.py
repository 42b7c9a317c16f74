"""AdamW groups (what decays, layer-wise rates) and the warm-up + cosine schedule."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from medmae.config import load_config
from medmae.errors import UserError
from medmae.models import create_model
from medmae.training.loop import effective_batch, effective_lr
from medmae.training.optim import (
    build_optimizer,
    encoder_ramp,
    layer_id,
    learning_rate,
    load_optimizer_state,
    param_groups,
    set_learning_rate,
)


def names_by(groups, key):
    return {name: group[key] for group in groups for name in group["names"]}


def test_no_decay_on_norms_biases_position_embedding_and_tokens():
    model = create_model("mae_vit_tiny_patch16_2d", img_size=32, cls_token=True)
    model.encoder.patch_embedding.position_embeddings.requires_grad_(True)  # as when fine-tuning
    decay = names_by(param_groups(model, weight_decay=0.05), "weight_decay")
    assert set(decay) == {n for n, p in model.named_parameters() if p.requires_grad}
    undecayed = {n for n, wd in decay.items() if wd == 0}
    assert "encoder.patch_embedding.position_embeddings" in undecayed
    assert {"encoder.cls_token", "mask_token", "encoder.norm.weight", "encoder.blocks.0.attn.qkv.bias"} <= undecayed
    assert decay["encoder.blocks.0.attn.qkv.weight"] == 0.05 and decay["decoder_pred.weight"] == 0.05
    params = dict(model.named_parameters())
    assert all(params[n].ndim == 1 or n.endswith(("cls_token", "mask_token", "position_embeddings")) for n in undecayed)


def test_layer_decay_scales_each_block():
    model = create_model("unetr_vit_tiny_patch16_3d", img_size=32, out_channels=3)
    scale = names_by(param_groups(model, 0.05, layer_decay=0.5, depth=12), "lr_scale")
    assert scale["vit.patch_embedding.patch_embeddings.weight"] == 0.5**13
    assert scale["vit.blocks.0.mlp.linear1.weight"] == 0.5**12
    assert scale["vit.blocks.11.mlp.linear1.weight"] == 0.5
    assert scale["vit.norm.weight"] == 1 and scale["out.conv.conv.weight"] == 1  # decoder at the full rate
    assert layer_id("encoder.blocks.3.attn.qkv.weight", 12) == 4 and layer_id("head.weight", 12) == 13


def test_optimizer_rates_follow_the_scales():
    model = create_model("vit_tiny_patch16_2d_cls", img_size=32, num_classes=2)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999), layer_decay=0.75)
    assert optimizer.defaults["betas"] == (0.9, 0.999)
    assert {g["lr_scale"] for g in optimizer.param_groups} == {0.75**k for k in range(14)}


def test_warmup_then_cosine():
    rates = [learning_rate(step, total_steps=110, warmup_steps=10, peak=1.0, minimum=0.1) for step in range(110)]
    assert rates[:10] == pytest.approx([(k + 1) / 10 for k in range(10)])
    assert rates[10] == 1.0 and rates[60] == pytest.approx(0.55) and rates[-1] > 0.1
    assert all(a >= b for a, b in itertools.pairwise(rates[10:]))
    assert learning_rate(110, 110, 10, 1.0, 0.1) == pytest.approx(0.1)
    assert learning_rate(0, 10, 0, 2.0) == 2.0  # no warm-up


def test_the_encoder_warm_up_ramps_only_the_pretrained_encoders_rate():
    model = create_model("resenc_tiny_3d", in_channels=1, out_channels=3)
    optimizer = build_optimizer(model, 1e-3, 0.05, (0.9, 0.999), encoder=("encoder.",))
    assert [encoder_ramp(step, 4) for step in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert encoder_ramp(0, 0) == 1.0  # no warm-up
    set_learning_rate(optimizer, 1e-3, encoder_ramp(0, 4))
    rates = {name: group["lr"] for group in optimizer.param_groups for name in group["names"]}
    assert rates["encoder.stem.convs.0.conv.weight"] == pytest.approx(2.5e-4)
    assert rates["decoder.stages.0.convs.0.conv.weight"] == pytest.approx(1e-3)  # the fresh decoder: full rate
    assert all(
        name.startswith("encoder.") == group["encoder"] for group in optimizer.param_groups for name in group["names"]
    )


def test_learning_rate_scales_with_the_effective_batch():
    cfg = load_config("pretrain", "btcv", overrides=["optim.accumulate=2"])
    assert effective_batch(cfg, samples_per_item=4) == 6 * 4 * 2
    assert effective_lr(cfg, 4) == pytest.approx(1.6e-3 * 48 / 256)  # Zhou et al.'s peak 1.5e-4 at 24 crops, x 2
    assert math.isclose(effective_lr(load_config("pretrain", "chestxray14"), 1), 1.5e-4)


def test_without_layer_decay_two_groups_and_a_resume_across_groupings_keeps_the_moments():
    """Layer decay 1: one group that decays and one that does not (two fused kernels, not one per layer);
    the state of an optimiser grouped per layer loads into it by parameter name, moments and all."""
    model = create_model("mae_vit_tiny_patch16_2d", img_size=32)
    two = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95))
    assert sorted(g["weight_decay"] for g in two.param_groups) == [0.0, 0.05]
    per_layer = build_optimizer(model, lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), layer_decay=0.9)
    assert len(per_layer.param_groups) > 2
    model(torch.randn(2, 1, 32, 32))[0].backward()
    per_layer.step()
    load_optimizer_state(two, per_layer.state_dict())
    params = dict(model.named_parameters())
    for name in ("encoder.blocks.1.attn.qkv.weight", "decoder_pred.bias", "mask_token"):
        assert torch.equal(two.state[params[name]]["exp_avg"], per_layer.state[params[name]]["exp_avg"]), name
    saved = per_layer.state_dict()
    saved["param_groups"][0]["names"] = saved["param_groups"][0]["names"][1:]  # a parameter not in the checkpoint
    saved["param_groups"][0]["params"] = saved["param_groups"][0]["params"][1:]
    with pytest.raises(UserError, match="has no parameter"):
        load_optimizer_state(two, saved)
