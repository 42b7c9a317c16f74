"""``benchmarks/store_format.py`` prints one JSON line per format; blosc2's float32 formats are exact (the
timings themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import BENCHMARKS


def test_store_format_benchmark_prints_one_line_per_format():
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "store_format.py"),
            "--shape",
            "1",
            "24",
            "20",
            "16",
            "--crop",
            "8",
            "--crops",
            "2",
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    lines = {line["format"]: line for line in map(json.loads, result.stdout.splitlines())}
    assert set(lines) == {"blosc2_zstd8_float32", "blosc2_lz4hc9_float32", "blosc2_zstd8_float16", "npz_zlib_float32"}
    assert all(line["mb"] > 0 and line["write_s"] >= 0 and line["crop_ms"] >= 0 for line in lines.values())
    assert lines["blosc2_zstd8_float32"]["max_abs_error"] == 0 == lines["blosc2_lz4hc9_float32"]["max_abs_error"]
    assert 0 < lines["blosc2_zstd8_float16"]["max_abs_error"] < 1e-3
