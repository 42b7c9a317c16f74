"""The prediction-mode benchmark: one JSON line per mode, each naming its forward passes (timings are not
asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS


def test_each_mode_gets_a_line_with_its_forward_passes(tmp_path):
    output = tmp_path / "modes.jsonl"
    out = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "prediction_modes.py"),
            "--device",
            "cpu",
            "--cases",
            "1",
            "--output",
            str(output),
        ],
        check=True,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    ).stdout
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert [json.loads(line) for line in output.read_text().splitlines()] == lines
    assert [(line["mode"], line["forward_passes_per_window"]) for line in lines] == [
        ("one model", 1),
        ("ensemble of 5", 5),
        ("mirroring", 4),  # the demo has left and right kidneys: its first axis is never flipped
        ("ensemble of 5, mirrored", 20),
    ]
    assert lines[0]["ratio_to_one_model"] == 1.0 and all(line["seconds_per_case"] > 0 for line in lines)
