"""The speed benchmark: its JSON lines, ratios and target summary (the timings themselves are not asserted)."""

from __future__ import annotations

import json
import subprocess
import sys

import speed
import torch

from tests.helpers import BENCHMARKS


def test_every_medmae_variant_gets_a_ratio_over_each_anchor_and_the_summary_names_the_best():
    records = [
        {"case": "pretrain", "impl": "medmae", "rate": 300.0},
        {"case": "pretrain", "impl": "medmae_compiled", "rate": 600.0},
        {"case": "pretrain", "impl": "monai_label_free", "rate": 200.0},
        {"case": "pretrain", "impl": "monai_label_based", "rate": 100.0},
        {"case": "inference", "impl": "medmae_labels_to_host", "rate": 4.0},
        {"case": "inference", "impl": "monai", "rate": 2.0},
    ]
    lines = speed.ratios(records)
    assert lines == [
        {"case": "pretrain", "ratio": "medmae_over_monai_label_free", "value": 1.5},
        {"case": "pretrain", "ratio": "medmae_compiled_over_monai_label_free", "value": 3.0},
        {"case": "pretrain", "ratio": "medmae_over_monai_label_based", "value": 3.0},
        {"case": "pretrain", "ratio": "medmae_compiled_over_monai_label_based", "value": 6.0},
        {"case": "inference", "ratio": "medmae_labels_to_host_over_monai", "value": 2.0},
    ]
    gpu = speed.summary(records, lines, torch.device("cuda"))["checks"]
    assert gpu["pretrain medmae crops/s"] == {
        "variant": "medmae_compiled",
        "value": 600.0,
        "target": 6000,
        "met": False,
    }
    assert gpu["inference labels to host seconds (at most)"] == {
        "variant": "medmae_labels_to_host",
        "value": 0.25,
        "target": 0.4,
        "met": True,
    }
    assert gpu["inference kept on device seconds (at most)"]["met"] is None  # not measured
    assert gpu["unetr medmae over monai"]["met"] is None  # not measured
    cpu = speed.summary(records, lines, torch.device("cpu"))["checks"]
    assert cpu == {
        "pretrain medmae over monai_label_free": {
            "variant": "medmae_compiled",
            "value": 3.0,
            "target": 3.0,
            "met": True,
        }
    }


def test_tiny_cpu_run_prints_every_variant_its_ratio_and_the_summary(tmp_path):
    output = tmp_path / "speed.jsonl"
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "speed.py"),
            "--device",
            "cpu",
            "--tiny",
            "--cases",
            "model,pretrain2d",
            "--seconds",
            "0.6",
            "--output",
            str(output),
            "--figure",
            str(tmp_path / "speed.png"),
        ],
        capture_output=True,
        encoding="utf-8",
        errors="replace",
        check=True,
    )
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines[0]["case"] == "setup" and lines[0]["mode"] == "tiny" and lines[-1]["case"] == "summary"
    rates = [(line["case"], line["impl"]) for line in lines if "rate" in line]
    assert rates == [
        ("model", "medmae"),
        ("model", "monai"),
        ("model", "lean_reference"),
        ("pretrain2d", "medmae"),
        ("pretrain2d", "monai"),
    ]
    model = next(line for line in lines if line.get("impl") == "medmae" and "share_of_matmul_peak" in line)
    assert model["gflop_per_crop"] > 0 and 0 < model["share_of_matmul_peak"] < 1
    ratios = [line["ratio"] for line in lines if "ratio" in line]
    assert ratios == ["medmae_over_monai", "medmae_over_lean_reference", "medmae_over_monai"]
    assert all(line["rate"] > 0 and line["peak_memory_mb"] > 0 for line in lines if "rate" in line)
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [(w["case"], w["impl"]) for w in written if "rate" in w] == rates
    assert written[0] == lines[0] and written[-1] == lines[-1]
    assert (tmp_path / "speed.png").stat().st_size > 10_000


def test_unknown_cases_are_refused():
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "speed.py"), "--cases", "pretrain,warp"],
        check=False,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 2 and "unknown cases ['warp']" in result.stderr


def test_pretrain_case_names_a_data_folder_without_dataset_json(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            str(BENCHMARKS / "speed.py"),
            "--device",
            "cpu",
            "--tiny",
            "--cases",
            "pretrain",
            "--data-root",
            str(tmp_path),
        ],
        check=False,
        capture_output=True,
        encoding="utf-8",
        errors="replace",
    )
    assert result.returncode == 2 and "no dataset.json" in result.stderr
