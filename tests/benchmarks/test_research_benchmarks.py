"""The encoder-efficiency benchmark and the masking figure (their timings are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import encoder_efficiency
import torch

from tests.helpers import BENCHMARKS


def test_both_encoder_modes_are_measured_and_skipping_costs_fewer_flops(capsys):
    records = encoder_efficiency.measure("t", "tiny", (64, 64), 2, torch.device("cpu"), seconds=0.0)
    skip, tokens = records
    assert (skip["encoder_mode"], tokens["encoder_mode"]) == ("skip", "mask_tokens")
    assert (skip["tokens"], skip["encoder_tokens"], tokens["encoder_tokens"]) == (16, 4, 16)
    assert tokens["gflops_per_step"] > skip["gflops_per_step"] > 0 and skip["seconds_per_step"] > 0
    assert [json.loads(line) for line in capsys.readouterr().out.splitlines()] == records
    (line,) = encoder_efficiency.ratios(records)
    assert line["flops_ratio"] == tokens["gflops_per_step"] / skip["gflops_per_step"] > 1


def test_ratios_and_figure_of_recorded_measurements(tmp_path):
    records = [
        {"model": "m", "encoder_mode": "skip", "gflops_per_step": 10.0, "seconds_per_step": 1.0},
        {"model": "m", "encoder_mode": "mask_tokens", "gflops_per_step": 33.0, "seconds_per_step": 2.8},
    ]
    lines = encoder_efficiency.ratios(records)
    assert lines == [{"model": "m", "flops_ratio": 3.3, "speedup": 2.8}]
    encoder_efficiency.save_figure(lines, tmp_path / "ratios.png", "test")
    assert (tmp_path / "ratios.png").stat().st_size > 0


def test_the_masking_figure_is_drawn(tmp_path):
    subprocess.run(
        [sys.executable, str(BENCHMARKS / "masking_figure.py"), "--output", str(tmp_path / "masks.png")],
        check=True,
        capture_output=True,
    )
    assert (tmp_path / "masks.png").stat().st_size > 10_000
