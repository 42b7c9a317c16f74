"""The backbone step benchmark: one JSON line per backbone and stage, with the models it names (timings are
not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS


def test_each_backbone_gets_a_pretraining_and_a_fine_tuning_line(tmp_path):
    output = tmp_path / "steps.jsonl"
    args = ["--device", "cpu", "--size", "tiny", "--seconds", "0", "--backbones", "light_p8,dynunet,unet"]
    out = subprocess.run(
        [sys.executable, str(BENCHMARKS / "backbones.py"), *args, "--output", str(output)],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    ).stdout
    lines = [json.loads(line) for line in out.splitlines()]
    assert [json.loads(line) for line in output.read_text().splitlines()] == lines
    assert [(line["backbone"], line["stage"], line["model"]) for line in lines] == [
        ("light_p8", "pretrain", "mae_vit_tiny_patch8_3d"),
        ("light_p8", "finetune", "light_vit_tiny_patch8_3d"),
        ("dynunet", "pretrain", "mae_dynunet_tiny_3d"),
        ("dynunet", "finetune", "dynunet_tiny_3d"),
        ("unet", "finetune", "unet_3d"),
    ]
    assert all(line["seconds_per_step"] > 0 and line["steps_timed"] >= 3 for line in lines)
    assert all(line["roi"] == [48, 64, 48] and line["params_M"] > 0 for line in lines)
    refused = subprocess.run(
        [sys.executable, str(BENCHMARKS / "backbones.py"), "--device", "cpu", "--backbones", "unet,segformer"],
        check=False,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert refused.returncode == 2 and "unknown 'segformer'" in refused.stderr and refused.stdout == ""
