"""``benchmarks/data_scale.py --tiny``: every measurement is printed, each target with whether it is met
(the timings themselves are not asserted), and memory does not grow with the number of cases."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.helpers import BENCHMARKS


@pytest.mark.slow
def test_the_data_scale_benchmark_prints_each_measurement_against_its_target(tmp_path):
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "data_scale.py"), "--work", str(tmp_path), "--tiny", "--seconds", "0.2"],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    measures = {line["measure"] for line in lines}
    assert {"preprocess_s", "store_mb", "finetune_items_per_s", "pretrain_crops_per_s", "peak_rss_mb"} <= measures
    targets = [line for line in lines if "target" in line]
    assert {line["measure"] for line in targets} == {
        "preprocess_speedup_2_workers",
        "store_vs_float32",
        "finetune_items_per_s_store",
        "pretrain_store_vs_memory",
        "peak_rss_growth",
    }
    assert all(isinstance(line["met"], bool) and line["value"] > 0 for line in targets)
    assert all(line["met"] for line in targets if line["measure"] in ("store_vs_float32", "peak_rss_growth"))
