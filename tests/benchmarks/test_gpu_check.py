"""The GPU check's dry run on the CPU: its JSON lines (device state around each case, medians and windows,
the summary) and the time budget that skips what is left (the timings themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS


def gpu_check(tmp_path, *args):
    output = tmp_path / "gpu_check.jsonl"
    command = [sys.executable, str(BENCHMARKS / "gpu_check.py"), "--device", "cpu", "--tiny", "--no-compile"]
    command += ["--seconds", "0.1", "--rounds", "2", "--output", str(output), *args]
    result = subprocess.run(command, capture_output=True, encoding="utf-8", errors="replace", check=True)
    printed = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert printed == [json.loads(line) for line in output.read_text().splitlines()]
    return printed


def test_the_dry_run_measures_each_case_between_two_device_states_and_ends_with_the_summary(tmp_path):
    lines = gpu_check(tmp_path, "--cases", "btcv,pretrain2d")
    assert lines[0]["case"] == "setup" and lines[0]["rounds"] == 2 and lines[0]["btcv_batch"] == 8
    states = [(line["case"], line["when"]) for line in lines if "when" in line]
    assert states == [("btcv", "before"), ("btcv", "after"), ("pretrain2d", "before"), ("pretrain2d", "after")]
    rates = [line for line in lines if "rate" in line]
    assert [(r["case"], r["impl"]) for r in rates] == [
        ("btcv", "medmae"),
        ("pretrain2d", "medmae"),
        ("pretrain2d", "monai"),
    ]
    assert all(len(r["window_rates"]) == 2 and min(r["window_rates"]) <= r["rate_median"] for r in rates)
    assert rates[0]["mask_ratio"] == 0.125
    assert lines[-2]["case"] == "summary" and lines[-1]["case"] == "end"


def test_cases_that_would_start_after_the_budget_are_skipped_and_say_so(tmp_path):
    lines = gpu_check(tmp_path, "--cases", "unetr,inference", "--budget", "0")
    skipped = [line for line in lines if "skipped" in line]
    assert [line["case"] for line in skipped] == ["unetr", "inference"]
    assert "budget" in skipped[0]["skipped"] and not any("rate" in line for line in lines)
