"""``benchmarks/crop_sampler.py`` prints both rates (the timings themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS, shared


def test_crop_benchmark_prints_both_rates():
    root = shared("msd_hippocampus")
    script = BENCHMARKS / "crop_sampler.py"
    result = subprocess.run(
        [sys.executable, str(script), "--data-root", str(root), "--seconds", "0.2"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["case"] for line in lines] == ["monai_chain", "medmae_crop_sampler", "ratio"]
    assert all(line["crops_per_s"] > 0 for line in lines[:2]) and lines[2]["medmae_over_monai"] > 0
